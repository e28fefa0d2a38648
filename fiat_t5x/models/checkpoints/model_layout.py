"""A checkpoint's parameter layout to the model's, as lazy views (nothing is read here).

Checkpoints come in T5X's example-network layout (the contract: `encoder/layers_{i}/...`, 2-D
`[in, out]` kernels) or in scalable_t5 / umT5's (all layers of a stack under `layers` with a
layer axis at `param_scan_axis`, 3-D attention kernels, `relative_posemb`). A run is either
unscanned (the contract) or scanned (`{stack}/layers/...`, 2-D kernels, layer axis at the
model's `param_scan_axis`). `to_contract_layout` brings any checkpoint to the per-layer contract
and `to_model_layout` stacks it for a scanned run; a scanned checkpoint read by a run scanned on
the same axis passes through without unstacking (`lazy_arrays.stack_layers`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from fiat_t5x.models.checkpoints.lazy_arrays import LayerOf, LazyArray, MergedAxes, stack_layers
from fiat_t5x.models.checkpoints.scanned import SCANNED_MODULE, is_scanned_path, layer_depth

_ATTENTION_INPUT_PROJECTIONS = ("query", "key", "value")
_SCALABLE_RELPOS = "relative_posemb"
_LAYER = re.compile(r"^(encoder|decoder)/layers_(\d+)/(.+)$")


def _join_heads(path: str, value: LazyArray) -> LazyArray:
    """3-D attention kernels -> the contract's 2-D [in, out] (head-major joined_kv)."""
    parts = path.split("/")
    if value.ndim != 3 or parts[-1] != "kernel" or len(parts) < 2:
        return value
    if parts[-2] in _ATTENTION_INPUT_PROJECTIONS:
        return MergedAxes(value, 1)  # [embed, heads, kv] -> [embed, heads*kv]
    if parts[-2] == "out":
        return MergedAxes(value, 0)  # [heads, kv, embed] -> [heads*kv, embed]
    return value


def to_contract_layout(
    flat: Mapping[str, LazyArray], param_scan_axis: int = 1
) -> dict[str, LazyArray]:
    """Any T5X example / scalable_t5 / umT5 flat tree -> the contract's per-layer layout."""
    out: dict[str, LazyArray] = {}
    depth: dict[str, int] = {}
    for path, value in flat.items():
        path = path.replace(f"/{_SCALABLE_RELPOS}/", "/relpos_bias/")
        if not is_scanned_path(path):
            out[path] = _join_heads(path, value)
            continue
        stack, _, rest = path.partition("/")
        leaf_path = rest.partition("/")[2]
        n = layer_depth(path, value.shape, param_scan_axis, depth)
        for i in range(n):
            layer_path = f"{stack}/layers_{i}/{leaf_path}"
            out[layer_path] = _join_heads(layer_path, LayerOf(value, i, param_scan_axis))
    if depth:
        logging.info("checkpoint has scanned layers %s (axis %d)", depth, param_scan_axis)
    return out


def to_model_layout(
    contract: Mapping[str, LazyArray],
    model_paths: Mapping[str, tuple[int, ...]],
    param_scan_axis: int = 1,
) -> dict[str, LazyArray]:
    """The contract-layout arrays arranged as the model's parameters.

    `model_paths` maps each model parameter path to its shape. Scanned model parameters
    (`encoder/layers/<p>`) are stacked from `encoder/layers_{i}/<p>` on `param_scan_axis`;
    everything else is taken as is. Paths the model lacks are kept (the caller reports them);
    a stacked parameter whose layers are missing is left out (likewise).
    """
    out: dict[str, LazyArray] = {}
    per_layer: dict[str, dict[int, LazyArray]] = {}
    for path, value in contract.items():
        match = _LAYER.match(path)
        scanned_path = f"{match[1]}/{SCANNED_MODULE}/{match[3]}" if match else None
        if scanned_path is not None and scanned_path in model_paths and path not in model_paths:
            per_layer.setdefault(scanned_path, {})[int(match[2])] = value
        else:
            out[path] = value
    for path, layers in per_layer.items():
        depth = model_paths[path][param_scan_axis]
        if sorted(layers) != list(range(depth)):
            stack = path.split("/")[0]
            for i, value in layers.items():  # leave them to the mismatch report
                out[f"{stack}/layers_{i}/{path.split('/', 2)[2]}"] = value
            continue
        out[path] = stack_layers([layers[i] for i in range(depth)], param_scan_axis)
    return out
