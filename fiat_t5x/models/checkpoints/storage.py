"""Where checkpoint files live: a local directory, or a bucket URL (`gs://bucket/dir`, or any
TensorStore key-value store URL such as `file:///abs/dir`).

A pod reads its base checkpoint straight from the bucket (every host reading only its own
shards), so the T5X readers ask this module, not `os`, for the small files they parse (msgpack
`checkpoint`, Orbax `_METADATA`) and for the TensorStore key-value store under which the arrays
live. Local paths go through `os`; URLs through TensorStore's kvstore drivers.
"""

from __future__ import annotations

import os
from typing import Any

import tensorstore as ts


def is_url(path: str) -> bool:
    return "://" in path


def join(path: str, *parts: str) -> str:
    if not is_url(path):
        return os.path.join(path, *parts)
    return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts)])


def normalize(path: str) -> str:
    """An absolute local path (user home expanded), or the URL without a trailing '/'."""
    if is_url(path):
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def _split(path: str) -> tuple[Any, str]:
    """(kvstore of the parent directory, the last path component)."""
    parent, _, name = path.rstrip("/").rpartition("/")
    return ts.KvStore.open(parent + "/").result(), name


def read_bytes(path: str) -> bytes:
    """The contents of a file; FileNotFoundError when there is none."""
    if not is_url(path):
        with open(path, "rb") as f:
            return f.read()
    store, name = _split(path)
    result = store.read(name).result()
    if result.state != "value":
        raise FileNotFoundError(path)
    return bytes(result.value)


def is_file(path: str) -> bool:
    if not is_url(path):
        return os.path.isfile(path)
    store, name = _split(path)
    return store.read(name).result().state == "value"


def list_dir(path: str) -> list[str]:
    """The names directly under a directory ([] when it does not exist)."""
    if not is_url(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    store = ts.KvStore.open(path.rstrip("/") + "/").result()
    return sorted({key.decode().split("/")[0] for key in store.list().result()})


def is_dir(path: str) -> bool:
    if not is_url(path):
        return os.path.isdir(path)
    return bool(list_dir(path))


def exists(path: str) -> bool:
    return is_file(path) or is_dir(path)


def kvstore(directory: str) -> Any:
    """The TensorStore kvstore spec of a directory (for array specs and OCDBT bases)."""
    if not is_url(directory):
        return {"driver": "file", "path": os.path.abspath(directory).rstrip("/") + "/"}
    return directory.rstrip("/") + "/"
