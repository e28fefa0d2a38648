"""Reads the model parameters of a classic T5X checkpoint (msgpack `checkpoint` + TensorStore zarr).

This is the format of the public T5X checkpoints (`gs://t5-data/pretrained_models/t5x/...`):
`checkpoint` is a msgpack map `{'version', 'optimizer': {'target': params, 'state': ...}}` whose
large leaves are TensorStore spec dicts pointing at zarr v2 arrays beside it (paths relative to
the checkpoint directory) and whose small leaves are inline flax ExtType arrays. Only `target` is
read; the optimizer state's arrays are never opened.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import msgpack
import numpy as np
import tensorstore as ts

from fiat_t5x import storage
from fiat_t5x.models.checkpoints.lazy_arrays import InMemoryArray, LazyArray, TensorStoreArray
from fiat_t5x.models.checkpoints.tree import CheckpointError

# flax.serialization's msgpack extension codes.
_EXT_NDARRAY = 1
_EXT_COMPLEX = 2
_EXT_NPSCALAR = 3
_CHUNKED_MARKER = "__msgpack_chunked_array__"


def _np_dtype(name: str) -> np.dtype:
    """numpy dtype from its name, including ml_dtypes' bfloat16 / float8 names."""
    if hasattr(ml_dtypes, name):
        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_NDARRAY:
        shape, dtype_name, buffer = msgpack.unpackb(data, raw=False)
        return np.frombuffer(buffer, dtype=_np_dtype(dtype_name)).reshape(shape).copy()
    if code == _EXT_NPSCALAR:
        *_, dtype_name, buffer = msgpack.unpackb(data, raw=False)
        return np.frombuffer(buffer, dtype=_np_dtype(dtype_name))[0]
    if code == _EXT_COMPLEX:
        real, imag = msgpack.unpackb(data, raw=False)
        return complex(real, imag)
    return msgpack.ExtType(code, data)


def _unchunk(node: Any) -> Any:
    """flax splits arrays above its msgpack chunk size into `{marker, shape, chunks}` maps."""
    if isinstance(node, dict):
        if node.get(_CHUNKED_MARKER):
            chunks = [node["chunks"][str(i)] for i in range(len(node["chunks"]))]
            flat = np.concatenate([np.asarray(c).reshape(-1) for c in chunks])
            return flat.reshape(node["shape"])
        return {k: _unchunk(v) for k, v in node.items()}
    return node


def _is_tensorstore_spec(node: Any) -> bool:
    return isinstance(node, dict) and "driver" in node and "kvstore" in node


def _absolute_kvstore(kvstore: Any, checkpoint_dir: str) -> Any:
    """Spec paths are relative to the checkpoint directory; make them absolute (a local
    directory or a bucket URL, see `storage`)."""
    if isinstance(kvstore, str):
        return kvstore
    path = kvstore.get("path", "")
    if os.path.isabs(path) or "://" in path:
        return kvstore
    if storage.is_url(checkpoint_dir):
        return storage.join(checkpoint_dir, path).rstrip("/") + "/"
    return {"driver": "file", "path": os.path.join(os.path.abspath(checkpoint_dir), path)}


def read_msgpack(checkpoint_file: str) -> dict[str, Any]:
    """The decoded msgpack tree (inline arrays as numpy, TensorStore leaves as spec dicts)."""
    try:
        raw = storage.read_bytes(checkpoint_file)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the T5X checkpoint file {checkpoint_file}: {e}") from e
    try:
        tree = msgpack.unpackb(raw, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError) as e:
        raise CheckpointError(
            f"{checkpoint_file} is not a T5X msgpack checkpoint ({e}); pass the checkpoint_N "
            "directory of a classic T5X checkpoint"
        ) from e
    return _unchunk(tree)


def _target_subtree(tree: Mapping[str, Any], checkpoint_file: str) -> Mapping[str, Any]:
    if "optimizer" in tree and "target" in tree["optimizer"]:
        return tree["optimizer"]["target"]
    if "target" in tree:
        return tree["target"]
    raise CheckpointError(
        f"{checkpoint_file} has no 'optimizer/target' (or 'target') subtree; top-level keys are "
        f"{sorted(tree)}. Is it a T5X training checkpoint?"
    )


def open_legacy_params(checkpoint_dir: str) -> dict[str, LazyArray]:
    """The `target` params of a classic T5X checkpoint directory, flat and unread.

    TensorStore leaves are opened (metadata only) and read later by index; inline leaves are
    small and already decoded. Multi-chunk arrays and bf16 zarr dtypes keep their stored dtype.
    """
    checkpoint_file = storage.join(checkpoint_dir, "checkpoint")
    target = _target_subtree(read_msgpack(checkpoint_file), checkpoint_file)
    pending: dict[str, Any] = {}
    params: dict[str, LazyArray] = {}
    for path, value in _leaves(target):
        if not _is_tensorstore_spec(value):
            params[path] = InMemoryArray(value)
            continue
        spec = {
            "driver": value["driver"],
            "kvstore": _absolute_kvstore(value["kvstore"], checkpoint_dir),
        }
        try:
            pending[path] = (ts.open(spec, open=True, read=True), spec)
        except ValueError as e:
            raise CheckpointError(
                f"{checkpoint_file}: cannot open the array of parameter {path!r} at "
                f"{spec['kvstore']}: {e}"
            ) from e
    for path, (future, spec) in pending.items():
        try:
            params[path] = TensorStoreArray(future.result(), path)
        except ValueError as e:
            raise CheckpointError(
                f"{checkpoint_file}: cannot open the array of parameter {path!r} at "
                f"{spec['kvstore']}: {e}"
            ) from e
    logging.info("opened %d T5X arrays in %s", len(pending), checkpoint_dir)
    return params


def _leaves(node: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(path, leaf) pairs of the msgpack tree; a TensorStore spec dict is a leaf."""
    out = []
    for key, value in node.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping) and not _is_tensorstore_spec(value):
            out.extend(_leaves(value, path))
        else:
            out.append((path, value))
    return out
