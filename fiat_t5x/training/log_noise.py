"""Filters for third-party log records that mislead on a healthy run.

- gin probes every search path for an included file and, for each miss, logs
  `ERROR:root:Path not found: models/t5_1_1/architecture.gin` (and an INFO line), although the
  next path has the file. A file that is really missing still fails with gin's IOError.
- SeqIO warns "Using an uncached FunctionDataset for training ..." each time a dataset is
  built from a function source (once per task of a mixture, again for every restart of the
  pipeline); the advice is worth reading once per process.
"""

from __future__ import annotations

import logging
import threading

_GIN_PROBE_MESSAGES = ("Path not found: %s", "system_path_file_exists:%s")
_ONCE_PREFIXES = ("Using an uncached FunctionDataset",)


class GinPathProbes(logging.Filter):
    """Drops gin's per-search-path probe records for included files."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.pathname.replace("\\", "/").endswith("gin/resource_reader.py")
            and record.msg in _GIN_PROBE_MESSAGES
        )


class OncePerProcess(logging.Filter):
    """Lets the first record of each of `_ONCE_PREFIXES` through, drops the repeats."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        prefix = next((p for p in _ONCE_PREFIXES if message.startswith(p)), None)
        if prefix is None:
            return True
        with self._lock:
            first = prefix not in self._seen
            self._seen.add(prefix)
        return first


_GIN_FILTER = GinPathProbes()
_ONCE_FILTER = OncePerProcess()


def install() -> None:
    """Attach the filters (idempotent): gin logs on the root logger, SeqIO through absl."""
    root = logging.getLogger()
    if _GIN_FILTER not in root.filters:
        root.addFilter(_GIN_FILTER)
    for name in ("absl", ""):
        logger = logging.getLogger(name)
        if _ONCE_FILTER not in logger.filters:
            logger.addFilter(_ONCE_FILTER)
