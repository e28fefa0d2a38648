"""Write a whole output directory or nothing: build it in a temp dir beside it, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from fiat_t5x import storage
from fiat_t5x.models.checkpoints.tree import CheckpointError


@contextlib.contextmanager
def atomic_directory(path: str, *, overwrite: bool = False) -> Iterator[str]:
    """Yields a temp directory that becomes `path` when the block finishes without error.

    A crash or exception leaves `path` untouched (and no half-written files behind).
    """
    if storage.is_url(path):
        raise CheckpointError(
            f"output {path}: exported checkpoints are written to a local directory (built "
            "beside it and renamed when complete); write locally, then copy it to the bucket"
        )
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise CheckpointError(f"output {path} already exists; remove it or pass overwrite")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        yield tmp
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rename(path, os.path.join(old, "x"))
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
