"""Host settings that make XLA:CPU train steps fast; nothing here applies on accelerator hosts.

Why: XLA:CPU allocates each execution's temporaries (hundreds of MB for a train step, one
block) with `malloc` on a worker thread and frees them afterwards. glibc serves a block that
large with `mmap` and returns it with `munmap`, so every step page-faults all of its scratch
memory in again: a `perf` profile of the small bench config's LoRA step put ~14% of its CPU
time in the kernel (page faults, page zeroing, memory-cgroup accounting), against ~1% for
transformers on PyTorch, which allocates tensor by tensor from glibc's heap (bench/RESULTS.md,
"Where the time goes"). `keep_freed_memory_for_reuse` makes glibc serve large blocks from one
heap and keep what is freed, so the next step reuses it; the process then holds on to its peak
heap instead of returning it to the OS, as training processes do anyway.

glibc binds a thread to its allocation arena at the thread's first `malloc`, so the settings
must be in place before JAX's CPU client starts its threads: `prepare_process` runs when
`fiat_t5x` is imported and applies them only when the default backend will be the CPU (JAX
backends already started, `JAX_PLATFORMS`, or no accelerator plugin installed).

Compiler options for the train and eval steps (`xla_compiler_options`) are passed per compile,
never through `XLA_FLAGS`, so a user's own `XLA_FLAGS` always win.

Disable both with the environment variable `FIAT_T5X_CPU_TUNING=0`; the compiler options also
with gin: `xla_compiler_options.enabled = False` (registered when gin is installed; hosts
without gin, such as the GPU bench machine, simply have no knob).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import sys
from typing import Any


def _gin_configurable(fn):
    """`fn` as a gin configurable where gin can take one; gin is optional here
    (`fiat_t5x.models` and the GPU bench run without it)."""
    try:
        import gin

        return gin.configurable(fn, module="fiat_t5x.cpu_tuning")
    # Without gin-config, a checkout's `gin/` folder on sys.path imports as an empty namespace
    # package (no `configurable`): the GPU bench runs from the repository root like that. A
    # program that parsed and locked its gin config before importing fiat_t5x (RuntimeError)
    # cannot have bound this function, so it stays a plain one there.
    except (ImportError, AttributeError, RuntimeError):  # pragma: no cover - host dependent
        return fn


ENV_SWITCH = "FIAT_T5X_CPU_TUNING"

# glibc mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

# Per-compile XLA:CPU options of the train/eval steps. Copy insertion with region analysis
# drops most of the copies of donated parameters that the update otherwise makes every step.
_XLA_CPU_COMPILER_OPTIONS: dict[str, Any] = {
    "xla_cpu_copy_insertion_use_region_analysis": True,
}

_host_tuning: dict[str, bool] = {}


def enabled_by_environment() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def default_backend_is_cpu() -> bool:
    """Whether JAX's default backend is (or, before it starts, will be) the CPU, without
    starting a backend: started backends, then JAX_PLATFORMS, then installed plugins."""
    if "jax" in sys.modules:
        from jax._src import xla_bridge

        if getattr(xla_bridge, "_backends", None):
            import jax

            return jax.default_backend() == "cpu"
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    plugins = [e.name for e in importlib.metadata.entry_points(group="jax_plugins")]
    accelerator_modules = (
        "jax_plugins",
        "libtpu",
        "jax_cuda12_plugin",
        "jax_cuda13_plugin",
        "jax_rocm60_plugin",
    )
    return not plugins and not any(importlib.util.find_spec(m) for m in accelerator_modules)


def keep_freed_memory_for_reuse() -> bool:
    """glibc: large blocks from the heap, freed memory kept, one arena for all threads.

    Returns whether the settings were applied (False off glibc, e.g. macOS or musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    results = (
        mallopt(_M_ARENA_MAX, 1),
        mallopt(_M_MMAP_MAX, 0),
        mallopt(_M_TRIM_THRESHOLD, 2**31 - 1),
    )
    return all(r == 1 for r in results)


def prepare_process() -> dict[str, bool]:
    """Apply the host (allocator) settings once, if enabled and the backend will be the CPU."""
    if not _host_tuning and enabled_by_environment() and default_backend_is_cpu():
        _host_tuning["keep_freed_memory"] = keep_freed_memory_for_reuse()
    return dict(_host_tuning)


@_gin_configurable
def xla_compiler_options(enabled: bool = True) -> dict[str, Any]:
    """Compiler options for the train/eval steps on the CPU backend ({} elsewhere or when
    disabled); an option that the user's XLA_FLAGS already sets is left to the user."""
    if not (enabled and enabled_by_environment()):
        return {}
    import jax

    if jax.default_backend() != "cpu":
        return {}
    user_flags = os.environ.get("XLA_FLAGS", "")
    return {k: v for k, v in _XLA_CPU_COMPILER_OPTIONS.items() if f"--{k}" not in user_flags}


def applied() -> dict[str, Any]:
    """What this process uses (for logs and benchmark records)."""
    return {"host": dict(_host_tuning), "compiler_options": xla_compiler_options()}
