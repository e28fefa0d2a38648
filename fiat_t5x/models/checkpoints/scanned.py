"""Scanned and unscanned layer layouts, and T5X's scalable_t5 / umT5 layouts, as pure transforms.

Our network (`T5Config.scan_layers`) and T5X's scalable_t5 (`t5x/examples/scalable_t5/network.py`)
keep a scanned stack's layers under one `layers` module whose every parameter gains a layer axis at
`param_scan_axis` (default 1): `encoder/layers/mlp/wi_0/kernel` is [embed, layers, mlp] where the
unscanned `encoder/layers_{i}/mlp/wi_0/kernel` is [embed, mlp], and a norm scale is [embed, layers].
`stack_layers` and `unstack_layers` convert between the two; the sub-paths stay the same.

scalable_t5 also differs from the contract in two ways that `to_contract_layout` undoes:
* attention kernels are 3-D: query/key/value [embed, heads, kv] and out [heads, kv, embed] (ours are
  2-D with head-major joined_kv);
* umT5's per-layer relative attention bias is called `relative_posemb` (ours: `relpos_bias`).

The transforms move, stack, split and reshape arrays and nothing else, on numpy arrays or on
`jax.Array`s alike (also under `jax.eval_shape` / `jax.jit`), so a reader may apply them to whole
trees or to one host's shards of them (a shard of a stacked parameter must hold whole layers when
unstacking, and every layer's shard of the same index range when stacking).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fiat_t5x.models.checkpoints.tree import CheckpointError, flatten, unflatten

STACKS = ("encoder", "decoder")
_ATTENTION_INPUT_PROJECTIONS = ("query", "key", "value")
_SCALABLE_RELPOS = "relative_posemb"
_LAYER_MODULE = re.compile(r"layers_(\d+)")


def _xp(value: Any) -> Any:
    """The array module of `value`: jax.numpy for jax arrays (and tracers), numpy otherwise."""
    return jnp if isinstance(value, jax.Array) else np


def is_scanned(params: Mapping[str, Any]) -> bool:
    """Whether any stack keeps its layers stacked under a single `layers` module."""
    return any(
        isinstance(params.get(stack), Mapping) and "layers" in params[stack] for stack in STACKS
    )


def unstack_layers(params: Mapping[str, Any], param_scan_axis: int = 1) -> dict[str, Any]:
    """`{stack}/layers/<p>` with a layer axis at `param_scan_axis` -> `{stack}/layers_{i}/<p>`."""
    flat = flatten(params)
    out: dict[str, Any] = {}
    depth: dict[str, int] = {}
    for path, value in flat.items():
        stack, _, rest = path.partition("/")
        module, _, leaf_path = rest.partition("/")
        if module != "layers":
            out[path] = value
            continue
        if np.ndim(value) <= param_scan_axis:
            raise CheckpointError(
                f"scanned parameter {path!r} has shape {np.shape(value)}: no layer axis at "
                f"param_scan_axis={param_scan_axis}; pass the axis the checkpoint was scanned on"
            )
        n = np.shape(value)[param_scan_axis]
        if depth.setdefault(stack, n) != n:
            raise CheckpointError(
                f"scanned parameter {path!r} stacks {n} layers on axis {param_scan_axis}, other "
                f"{stack} parameters stack {depth[stack]}; is param_scan_axis right?"
            )
        xp = _xp(value)
        if xp is np:
            value = np.asarray(value)
        for i in range(n):
            out[f"{stack}/layers_{i}/{leaf_path}"] = xp.take(value, i, axis=param_scan_axis)
    logging.info("unstacked scanned layers: %s", depth)
    return unflatten(out)


def stack_layers(params: Mapping[str, Any], param_scan_axis: int = 1) -> dict[str, Any]:
    """`{stack}/layers_{i}/<p>` for i = 0..n-1 -> `{stack}/layers/<p>`, layers on `param_scan_axis`.

    The inverse of `unstack_layers`. Every layer of a stack must hold the same parameters with the
    same shapes (a scanned stack runs one layer body): e.g. LoRA on only some layers cannot stack.
    """
    flat = flatten(params)
    out: dict[str, Any] = {}
    per_layer: dict[str, dict[int, dict[str, Any]]] = {}
    for path, value in flat.items():
        parts = path.split("/")
        match = _LAYER_MODULE.fullmatch(parts[1]) if len(parts) > 2 else None
        if parts[0] not in STACKS or match is None:
            out[path] = value
            continue
        layers = per_layer.setdefault(parts[0], {})
        layers.setdefault(int(match.group(1)), {})["/".join(parts[2:])] = value
    for stack, layers in per_layer.items():
        if any(path.startswith(f"{stack}/layers/") for path in out):
            raise CheckpointError(
                f"{stack} holds both a stacked `layers` module and `layers_i` modules; "
                "stack_layers expects one unscanned layout"
            )
        depth = len(layers)
        if sorted(layers) != list(range(depth)):
            raise CheckpointError(
                f"{stack} layers are {sorted(layers)}: stack_layers needs layers_0..layers_"
                f"{depth - 1} with none missing"
            )
        leaves = layers[0]
        for i in range(1, depth):
            if layers[i].keys() != leaves.keys():
                diff = sorted(layers[i].keys() ^ leaves.keys())
                raise CheckpointError(
                    f"{stack}/layers_{i} and {stack}/layers_0 hold different parameters "
                    f"(e.g. {diff[0]!r}); a scanned stack needs the same parameters in every layer"
                )
        for leaf_path, first in leaves.items():
            values = [layers[i][leaf_path] for i in range(depth)]
            shapes = {tuple(np.shape(v)) for v in values}
            if len(shapes) != 1:
                raise CheckpointError(
                    f"{stack}/layers_*/{leaf_path} has shapes {sorted(shapes)} across layers; "
                    "they must be equal to stack"
                )
            if np.ndim(first) < param_scan_axis:
                raise CheckpointError(
                    f"{stack}/layers_0/{leaf_path} has shape {np.shape(first)}: cannot insert a "
                    f"layer axis at param_scan_axis={param_scan_axis}"
                )
            xp = _xp(first)
            out[f"{stack}/layers/{leaf_path}"] = xp.stack(values, axis=param_scan_axis)
    logging.info("stacked layers: %s", {stack: len(layers) for stack, layers in per_layer.items()})
    return unflatten(out)


def _join_heads(path: str, value: Any, layer_axis: int | None) -> Any:
    """3-D attention kernels -> the contract's 2-D [in, out] (head-major joined_kv).

    With `layer_axis` the kernel is stacked (4-D) and keeps its layer axis where it was.
    """
    parts = path.split("/")
    expected_ndim = 3 if layer_axis is None else 4
    if np.ndim(value) != expected_ndim or parts[-1] != "kernel" or len(parts) < 2:
        return value
    projection = parts[-2]
    if projection not in (*_ATTENTION_INPUT_PROJECTIONS, "out"):
        return value
    xp = _xp(value)
    if layer_axis is not None:
        value = xp.moveaxis(value, layer_axis, 0)
    lead = value.shape[:1] if layer_axis is not None else ()
    body = value.shape[len(lead) :]
    if projection == "out":
        joined = value.reshape(lead + (body[0] * body[1], body[2]))
    else:
        joined = value.reshape(lead + (body[0], body[1] * body[2]))
    return joined if layer_axis is None else xp.moveaxis(joined, 0, layer_axis)


def move_layer_axis(params: Mapping[str, Any], source: int, destination: int) -> dict[str, Any]:
    """A scanned tree with its layer axis moved from `source` to `destination` (e.g. T5X's 1 to a
    run's `param_scan_axis` 0); unstacked parameters are untouched."""
    flat = flatten(params)
    if source == destination:
        return unflatten(flat)
    out = {}
    for path, value in flat.items():
        if path.split("/")[1:2] == ["layers"]:
            value = _xp(value).moveaxis(value, source, destination)
        out[path] = value
    return unflatten(out)


def to_contract_layout(
    params: Mapping[str, Any], param_scan_axis: int = 1, *, scan_axis: int | None = None
) -> dict[str, Any]:
    """Any T5X example / scalable_t5 / umT5 param tree -> the contract's layout.

    `param_scan_axis` is the layer axis of a scanned input. `scan_axis=None` gives the unscanned
    layout (`layers_{i}`); an int gives the scanned layout with the layer axis there (the run's
    `T5Config.param_scan_axis`): an unscanned input is stacked, a scanned one stays stacked (no
    per-layer copies) and its axis moves if the two differ. A no-op on a tree already in the
    wanted layout.
    """
    if is_scanned(params) and scan_axis is None:
        params = unstack_layers(params, param_scan_axis)
    flat = flatten(params)
    out = {}
    for path, value in flat.items():
        if not isinstance(value, jax.Array):
            value = np.asarray(value)
        new_path = path.replace(f"/{_SCALABLE_RELPOS}/", "/relpos_bias/")
        stacked = new_path.split("/")[1:2] == ["layers"]
        out[new_path] = _join_heads(new_path, value, param_scan_axis if stacked else None)
    tree = unflatten(out)
    if scan_axis is None:
        return tree
    return stack_layers(move_layer_axis(tree, param_scan_axis, scan_axis), scan_axis)
