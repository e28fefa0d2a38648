"""FLOPs of a step and the peak FLOP/s of a device, for MFU in the training log.

MFU = (FLOPs of one step on one device) × steps/s / peak FLOP/s of that device. The FLOPs are
the matrix multiplications of the traced step (`step_flops`: dead code removed first, as XLA
removes it, rematerialised ones included) split evenly over the devices: XLA's cost analysis
counts the body of a loop once, so it misses all but one layer of a scanned stack. Accelerator
peaks are the vendors' dense bf16 figures; the CPU peak is estimated from the core count, the
vector width and the clock (so CPU MFU is indicative only).
"""

from __future__ import annotations

import logging
import math
import os
import re

import jax
from jax._src.interpreters import partial_eval  # dce_jaxpr has no public equivalent
from jax.extend import core as jax_core

# Dense bf16 peak FLOP/s per device (one chip / one GPU), by a substring of `device_kind`.
_ACCELERATOR_PEAKS: tuple[tuple[str, float], ...] = (
    ("v5p", 459e12),
    ("v5 lite", 197e12),
    ("v5e", 197e12),
    ("v6", 918e12),
    ("v4", 275e12),
    ("v3", 123e12),
    ("v2", 45e12),
    ("h200", 989e12),
    ("h100", 989e12),
    ("a100", 312e12),
    ("l4", 121e12),
)


def _cpu_peak_per_host() -> float:
    """cores × fp32 FLOPs/cycle (2 FMA units × vector lanes × 2) × clock."""
    flags, mhz = "", 0.0
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
        flags = re.search(r"^flags\s*:(.*)$", text, re.M).group(1)
        mhz = float(re.search(r"^(?:cpu MHz|bogomips)\s*:\s*([\d.]+)", text, re.M | re.I).group(1))
    except (OSError, AttributeError, ValueError):
        pass
    if "bogomips" in flags:
        mhz /= 2
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    clock = (mhz * 1e6) if mhz > 100 else 2.5e9
    return (os.cpu_count() or 1) * 2 * lanes * 2 * clock


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
    device = device or jax.local_devices()[0]
    if device.platform == "cpu":
        return _cpu_peak_per_host() / max(1, jax.local_device_count())
    kind = device.device_kind.lower()
    for key, peak in _ACCELERATOR_PEAKS:
        if key in kind:
            return peak
    logging.info("unknown device kind %r: MFU not reported", device.device_kind)
    return None


def step_flops(jaxpr: jax_core.ClosedJaxpr | jax_core.Jaxpr) -> float:
    """`jaxpr_flops` of the program that runs: a traced jaxpr still holds work whose results
    nothing uses (a custom backward's gradient of a frozen kernel, on the CPU path a third of a
    LoRA step's matmuls), which XLA removes and MFU must not count."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    live, _ = partial_eval.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
    return jaxpr_flops(live)


def jaxpr_flops(jaxpr: jax_core.ClosedJaxpr | jax_core.Jaxpr) -> float:
    """Matmul FLOPs of a traced program: 2·(batch)·M·N·K per `dot_general`, a scan's body
    counted `length` times, a cond's costliest branch, every nested program (jit, remat,
    custom derivatives) once; a while loop's body once (its trip count is unknown)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), (batch, _) = eqn.params["dimension_numbers"]
            lhs, rhs = (v.aval.shape for v in eqn.invars)
            k = math.prod(lhs[d] for d in contract)
            out = math.prod(eqn.outvars[0].aval.shape)
            total += 2.0 * out * k
            del rhs, batch
        elif name == "cond":
            total += max(jaxpr_flops(b) for b in eqn.params["branches"])
        else:
            inner = sum(jaxpr_flops(sub) for sub in jax_core.jaxprs_in_params(eqn.params))
            total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total
