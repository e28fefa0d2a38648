"""Logical axis names of activations, and the sharding constraint that applies them.

Activations get their own logical names (MaxText's), distinct from the parameters' (`embed`,
`mlp`, ...), so a rule table can shard them differently from the weights: e.g. `activation_batch`
over `data` while weights are replicated over `data`, or `activation_length` over `model`
(sequence sharding) while `embed` kernels are not. `fiat_t5x.training.partitioning` holds the
default rules. `constrain` acts only under both `nn.logical_axis_rules(rules)` and
`jax.set_mesh(mesh)` (an abstract mesh in context, as flax requires); elsewhere it does nothing.
"""

from __future__ import annotations

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec

BATCH = "activation_batch"
LENGTH = "activation_length"
EMBED = "activation_embed"
MLP = "activation_mlp"
HEADS = "activation_heads"
KV = "activation_kv"
VOCAB = "activation_vocab"

ACTIVATION_AXES = (BATCH, LENGTH, EMBED, MLP, HEADS, KV, VOCAB)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """`nn.with_logical_constraint(x, axes)`, replicating a dimension its mesh axis does not divide.

    A decode batch of 1, or a length-1 decoder step, cannot be split 4 ways; like the parameter
    shardings (`partitioning.logical_to_spec`), such a dimension stays whole instead of failing.
    """
    rules = nn.get_logical_axis_rules()
    if not rules:
        return x
    spec = nn.logical_to_mesh_axes(axes, rules)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    sizes = dict(mesh.shape)
    fitted = []
    for dim, mesh_axis in zip(x.shape, spec, strict=True):
        names = (mesh_axis,) if isinstance(mesh_axis, str) else tuple(mesh_axis or ())
        ways = 1
        for name in names:
            ways *= sizes.get(name, 1)
        fitted.append(mesh_axis if dim % ways == 0 else None)
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*fitted))
