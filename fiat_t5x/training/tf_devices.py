"""TensorFlow only feeds data here: keep it off the accelerators, and quiet its device probe.

TensorFlow reserves most of a GPU's memory when it first sees one, which JAX then lacks (T5X
hides GPUs from it for the same reason). Listing devices also makes a CUDA build of
TensorFlow on a machine without a GPU driver print `E0000 ... failed call to cuInit ...
UNKNOWN ERROR (303)` at level ERROR, although nothing is wrong; that one probe runs with the
process's stderr sent to /dev/null. Python errors are unaffected.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    """Redirect file descriptor 2 (where C++ logging writes) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@functools.cache
def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up lines (oneDNN, "could not find cuda drivers",
    absl's pre-init warning) kept off stderr: they bury a command's one-line message, and its
    TF_CPP_MIN_LOG_LEVEL no longer hides them. A failed import still raises as usual."""
    with _stderr_to_devnull():
        import tensorflow  # noqa: F401


@functools.cache
def keep_tensorflow_on_cpu() -> None:
    """Hide GPUs from TensorFlow (once per process, before it creates its devices)."""
    import tensorflow as tf

    with _stderr_to_devnull():
        gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TensorFlow already initialised its devices; nothing to undo
            pass
