"""Reads the model parameters of a current (Orbax) T5X checkpoint, `checkpoint_N/state/`.

Orbax's PyTree handler lists every leaf in `state/_METADATA` and stores each as a zarr array named
by its '.'-joined key path (`target.encoder.layers_0.attention.query.kernel`), inside one OCDBT
key-value store (or as plain directories when OCDBT is off). We open the `target.*` arrays with
TensorStore directly (lazily, see `lazy_arrays`): no optimizer state is touched.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import tensorstore as ts

from fiat_t5x import storage
from fiat_t5x.models.checkpoints.lazy_arrays import LazyArray, TensorStoreArray
from fiat_t5x.models.checkpoints.tree import CheckpointError

METADATA_FILE = "_METADATA"


def _leaf_keys(entry: dict[str, Any], raw_key: str) -> list[str]:
    if "key_metadata" in entry:
        return [str(k["key"]) for k in entry["key_metadata"]]
    raise CheckpointError(f"{METADATA_FILE}: entry {raw_key!r} has no key_metadata")


def _kvstore(state_dir: str, name: str, use_ocdbt: bool) -> Any:
    base = storage.kvstore(state_dir)
    if use_ocdbt:
        return {"driver": "ocdbt", "base": base, "path": f"{name}/"}
    if isinstance(base, str):
        return storage.join(base, name) + "/"
    return {"driver": "file", "path": os.path.join(base["path"], name) + "/"}


def open_orbax_params(state_dir: str, subtree: str = "target") -> dict[str, LazyArray]:
    """The `subtree` (default `target`: the params) of an Orbax PyTree checkpoint directory,
    flat ('/'-joined paths below `subtree`) and unread.

    Args:
      state_dir: the directory holding `_METADATA` (T5X: `checkpoint_N/state`).
      subtree: the top-level key to read.
    """
    metadata_file = storage.join(state_dir, METADATA_FILE)
    try:
        metadata = json.loads(storage.read_bytes(metadata_file))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the Orbax metadata {metadata_file}: {e}") from e
    use_ocdbt = bool(metadata.get("use_ocdbt", False))
    driver = "zarr3" if metadata.get("use_zarr3", False) else "zarr"
    pending: dict[str, Any] = {}
    top_keys = set()
    for raw_key, entry in metadata.get("tree_metadata", {}).items():
        keys = _leaf_keys(entry, raw_key)
        top_keys.add(keys[0])
        if keys[0] != subtree:
            continue
        value_type = entry.get("value_metadata", {}).get("value_type", "")
        if value_type not in ("jax.Array", "np.ndarray"):
            raise CheckpointError(
                f"{metadata_file}: leaf {raw_key} is stored as {value_type!r}, not an array"
            )
        name = ".".join(keys)
        spec = {"driver": driver, "kvstore": _kvstore(state_dir, name, use_ocdbt)}
        pending["/".join(keys[1:])] = (name, ts.open(spec, open=True, read=True))
    if not pending:
        raise CheckpointError(
            f"{metadata_file} has no {subtree!r} subtree (top-level keys: {sorted(top_keys)}); "
            "pass a T5X checkpoint's state directory"
        )
    params = {}
    for path, (name, future) in pending.items():
        try:
            params[path] = TensorStoreArray(future.result(), path)
        except ValueError as e:
            raise CheckpointError(f"{state_dir}: cannot open array {name!r}: {e}") from e
    logging.info("opened %d Orbax arrays in %s", len(params), state_dir)
    return params
