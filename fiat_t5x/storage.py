"""Where a run's files live: a local directory, or a bucket URL (`gs://bucket/dir`, or any
TensorStore key-value store URL such as `file:///abs/dir`).

A pod reads its base checkpoint straight from the bucket (every host reading only its own
shards) and writes its MODEL_DIR there (T5X's `--gin.MODEL_DIR='gs://...'`): the checkpoint
readers, the trainer's small files (config.gin, metrics.jsonl, evaluation records, the
rationale store record) and inference outputs ask this module, not `os`, so a URL never becomes
a local folder named `gs:`. Local paths go through `os`; URLs through TensorStore's kvstore
drivers (the library that already reads the checkpoints' arrays). Every write is whole or
nothing: a local file is written beside its target and renamed, an object is replaced in one
put.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Any


def is_url(path: str | os.PathLike[str]) -> bool:
    return "://" in os.fspath(path)


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
    import tensorstore as ts  # here: local paths need no TensorStore

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
    import tensorstore as ts

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


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def makedirs(path: str) -> None:
    """Creates a local directory and its parents; a bucket has no directories to create."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


def write_bytes(path: str, data: bytes) -> None:
    """Writes a whole file or nothing: a crash mid-write leaves the old file (or none), never a
    truncated one that looks complete."""
    if is_url(path):
        store, name = _split(path)
        store.write(name, data).result()
        return
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    # open(), not mkstemp: the file gets the umask's permissions, as a plain write would.
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def append_text(path: str, text: str) -> None:
    """Appends to a file. An object in a bucket cannot grow in place, so it is read and put back
    whole (one writer only: the caller's process 0); a local file is appended to."""
    if is_url(path):
        try:
            before = read_bytes(path)
        except FileNotFoundError:
            before = b""
        write_bytes(path, before + text.encode("utf-8"))
        return
    makedirs(os.path.dirname(os.path.abspath(path)))
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def epath_directory(path: str) -> str:
    """The directory as libraries built on etils.epath (orbax, clu's TensorBoard writer) take
    it: a local absolute path for local paths and `file://` URLs, which epath does not know,
    and the URL itself for buckets (`gs://`)."""
    if path.startswith("file://"):
        return os.path.abspath(path[len("file://") :])
    return normalize(path)
