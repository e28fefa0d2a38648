"""Scanned and unscanned layer layouts of a parameter tree in memory, as pure transforms.

Our network (`T5Config.scan_layers`) and T5X's scalable_t5 (`t5x/examples/scalable_t5/network.py`)
keep a scanned stack's layers under one `layers` module whose every parameter gains a layer axis at
`param_scan_axis` (default 1): `encoder/layers/mlp/wi_0/kernel` is [embed, layers, mlp] where the
unscanned `encoder/layers_{i}/mlp/wi_0/kernel` is [embed, mlp], and a norm scale is [embed, layers].
`stack_layers` and `unstack_layers` convert between the two; the sub-paths stay the same. They
stack and split arrays and nothing else, on numpy arrays or on `jax.Array`s alike (also under
`jax.eval_shape` / `jax.jit`): the exports of a scanned run (HF, PEFT) name each layer through
`unstack_layers`.

Checkpoints are not read through here: a checkpoint's layout (scalable_t5's 3-D attention kernels
and `relative_posemb`, a stack on another axis) becomes the model's as lazy views in
`model_layout.py`, which shares `layer_depth` (the check of a stack's layer axis) with this module.
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
SCANNED_MODULE = "layers"
_LAYER_MODULE = re.compile(r"layers_(\d+)")


def _xp(value: Any) -> Any:
    """The array module of `value`: jax.numpy for jax arrays (and tracers), numpy otherwise."""
    return jnp if isinstance(value, jax.Array) else np


def is_scanned(params: Mapping[str, Any]) -> bool:
    """Whether any stack keeps its layers stacked under a single `layers` module."""
    return any(
        isinstance(params.get(stack), Mapping) and SCANNED_MODULE in params[stack]
        for stack in STACKS
    )


def is_scanned_path(path: str) -> bool:
    """`encoder/layers/...`: a parameter of a whole stack of layers."""
    parts = path.split("/")
    return len(parts) > 2 and parts[1] == SCANNED_MODULE


def layer_depth(
    path: str, shape: tuple[int, ...], param_scan_axis: int, depth: dict[str, int]
) -> int:
    """The number of layers a stacked parameter holds on `param_scan_axis`, checked against the
    other parameters of its stack (`depth`: stack -> layers so far, updated here)."""
    if len(shape) <= param_scan_axis:
        raise CheckpointError(
            f"scanned parameter {path!r} has shape {tuple(shape)}: no layer axis at "
            f"param_scan_axis={param_scan_axis}; pass the axis the checkpoint was scanned on"
        )
    stack, n = path.partition("/")[0], shape[param_scan_axis]
    if depth.setdefault(stack, n) != n:
        raise CheckpointError(
            f"scanned parameter {path!r} stacks {n} layers on axis {param_scan_axis}, other "
            f"{stack} parameters stack {depth[stack]}; is param_scan_axis right?"
        )
    return n


def unstack_layers(params: Mapping[str, Any], param_scan_axis: int = 1) -> dict[str, Any]:
    """`{stack}/layers/<p>` with a layer axis at `param_scan_axis` -> `{stack}/layers_{i}/<p>`."""
    flat = flatten(params)
    out: dict[str, Any] = {}
    depth: dict[str, int] = {}
    for path, value in flat.items():
        if not is_scanned_path(path):
            out[path] = value
            continue
        stack, _, rest = path.partition("/")
        leaf_path = rest.partition("/")[2]
        n = layer_depth(path, np.shape(value), param_scan_axis, depth)
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
        if any(path.startswith(f"{stack}/{SCANNED_MODULE}/") for path in out):
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
            out[f"{stack}/{SCANNED_MODULE}/{leaf_path}"] = xp.stack(values, axis=param_scan_axis)
    logging.info("stacked layers: %s", {stack: len(layers) for stack, layers in per_layer.items()})
    return unflatten(out)
