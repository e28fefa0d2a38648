"""Parameter trees as flat `{"encoder/layers_0/attention/query/kernel": array}` maps, and the
errors raised when a checkpoint does not fit the model.

Every reader in this package produces the nested dict of the model contract; converting between
formats is easiest on the flat view, where a parameter is named by its '/'-joined path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit; the message says where and what to do."""


class CheckpointMismatchError(CheckpointError):
    """Parameters are missing, unexpected, or have the wrong shape."""


def flatten(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """Nested dict -> {'a/b/c': leaf}; empty sub-dicts disappear."""
    flat: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{sep}{key}" if prefix else str(key)
            if isinstance(value, Mapping):
                walk(value, path)
            else:
                flat[path] = value

    walk(tree, "")
    return flat


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """{'a/b/c': leaf} -> nested dict; raises if a path is both a leaf and a prefix."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(sep)
        node = tree
        for i, key in enumerate(parents):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise CheckpointError(
                    f"parameter path {path!r} runs through the leaf {sep.join(parents[: i + 1])!r}"
                )
        if leaf in node:
            raise CheckpointError(f"parameter path {path!r} occurs twice")
        node[leaf] = value
    return tree


def shape_of(x: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in np.shape(x))


def check_shapes(
    params: Mapping[str, Any],
    expected: Mapping[str, tuple[int, ...]],
    *,
    source: str,
    allow_missing: tuple[str, ...] = (),
) -> None:
    """Raises CheckpointMismatchError listing every missing, unexpected and mis-shaped parameter.

    Args:
      params: nested or flat params read from `source`.
      expected: flat path -> shape the model needs (e.g. from `layout.param_shapes`).
      source: the file or directory the params came from (named in the message).
      allow_missing: path suffixes that may be absent (e.g. `lora_a` when loading a base model).
    """
    flat = flatten(params) if any(isinstance(v, Mapping) for v in params.values()) else params
    missing = [
        p for p in expected if p not in flat and not any(p.endswith(s) for s in allow_missing)
    ]
    unexpected = [p for p in flat if p not in expected]
    wrong = [
        f"  {p}: checkpoint has {shape_of(flat[p])}, the model needs {tuple(expected[p])}"
        for p in flat
        if p in expected and shape_of(flat[p]) != tuple(expected[p])
    ]
    if not (missing or unexpected or wrong):
        return
    lines = [f"parameters in {source} do not fit the model config:"]
    if missing:
        lines.append(f" missing ({len(missing)}): " + ", ".join(sorted(missing)[:20]))
    if unexpected:
        lines.append(f" unexpected ({len(unexpected)}): " + ", ".join(sorted(unexpected)[:20]))
    if wrong:
        lines.append(f" wrong shapes ({len(wrong)}):")
        lines.extend(sorted(wrong)[:20])
    lines.append(
        " Check that the config (vocab_size, emb_dim, num_heads, head_dim, mlp_dim, layer counts,"
        " mlp_activations, logits_via_embedding, per_layer_relpos_bias) matches the checkpoint."
    )
    raise CheckpointMismatchError("\n".join(lines))


def cast_tree(params: Mapping[str, Any], dtype: Any | None) -> dict[str, Any]:
    """Casts every floating leaf to `dtype` (None keeps the stored dtypes)."""
    if dtype is None:
        return dict(params)
    return unflatten({k: cast_floating(v, dtype) for k, v in flatten(params).items()})


def cast_floating(value: Any, dtype: Any | None) -> Any:
    """`value` in `dtype` if it is a floating array (integers and dtype None: unchanged)."""
    if dtype is None or not is_floating(np.asarray(value).dtype):
        return value
    return np.asarray(value).astype(dtype, copy=False)


def is_floating(dtype: Any) -> bool:
    """numpy floats and the ml_dtypes ones (bfloat16, float8_*), which numpy files under kind 'V'."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or dtype.name.startswith(("bfloat", "float"))
