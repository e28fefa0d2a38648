"""`load_t5x_params(path)`: any T5X checkpoint directory -> the contract's nested param dict.

Accepts (on local disk or in a bucket, `gs://...`) a `checkpoint_N` directory in either T5X format (classic msgpack + zarr, or Orbax), an
Orbax `state` directory, or a model directory holding `checkpoint_N` subdirectories (the highest
step is taken). scalable_t5 / umT5 layouts (scanned layers, 3-D attention kernels) are converted.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fiat_t5x import storage
from fiat_t5x.models.checkpoints import model_layout, t5x_legacy, t5x_orbax
from fiat_t5x.models.checkpoints.lazy_arrays import LazyArray, materialize
from fiat_t5x.models.checkpoints.tree import CheckpointError, cast_floating, unflatten

LEGACY = "t5x_legacy"
ORBAX = "t5x_orbax"
_STEP_DIR = re.compile(r"checkpoint_(\d+)$")


def detect_t5x_format(path: str) -> tuple[str, str]:
    """(format, directory to read): LEGACY with the checkpoint dir, or ORBAX with the state dir.

    `path` is a local directory or a bucket URL (`gs://...`; see `storage`)."""
    path = storage.normalize(path)
    if not storage.is_dir(path):
        raise CheckpointError(f"T5X checkpoint directory {path} does not exist")
    if storage.is_file(storage.join(path, "checkpoint")):
        return LEGACY, path
    if storage.is_file(storage.join(path, "state", t5x_orbax.METADATA_FILE)):
        return ORBAX, storage.join(path, "state")
    if storage.is_file(storage.join(path, t5x_orbax.METADATA_FILE)):
        return ORBAX, path
    names = storage.list_dir(path)
    steps = sorted(
        (int(m.group(1)), name)
        for name in names
        if (m := _STEP_DIR.match(name)) and storage.is_dir(storage.join(path, name))
    )
    if steps:
        latest = storage.join(path, steps[-1][1])
        logging.info("using the latest checkpoint %s", latest)
        return detect_t5x_format(latest)
    raise CheckpointError(
        f"{path} is not a T5X checkpoint: expected a `checkpoint` msgpack file (classic format), "
        f"`state/{t5x_orbax.METADATA_FILE}` (Orbax), or checkpoint_N subdirectories; found "
        f"{names[:10]}"
    )


def open_t5x_params(path: str, *, param_scan_axis: int = 1) -> dict[str, LazyArray]:
    """The model params (`target`) of a T5X checkpoint, flat, in the contract's per-layer
    layout, unread (see `lazy_arrays`). Arguments as for `load_t5x_params`."""
    fmt, directory = detect_t5x_format(path)
    if fmt == LEGACY:
        params = t5x_legacy.open_legacy_params(directory)
    else:
        params = t5x_orbax.open_orbax_params(directory)
    return model_layout.to_contract_layout(params, param_scan_axis)


def load_t5x_params(path: str, *, dtype: Any | None = None, param_scan_axis: int = 1) -> dict:
    """The model params (`target`) of a T5X checkpoint in the contract's layout, in memory.

    Args:
      path: checkpoint_N directory, Orbax state directory, or a model dir with checkpoint_N.
      dtype: cast floating params to this dtype (None keeps the stored dtype, e.g. bf16).
      param_scan_axis: layer axis of scanned (scalable_t5 / umT5) checkpoints.
    Returns: nested dict of numpy arrays, e.g. params['encoder']['layers_0']['attention'][...].
    """
    flat = open_t5x_params(path, param_scan_axis=param_scan_axis)
    return unflatten(materialize(flat, lambda v: cast_floating(v, dtype)))
