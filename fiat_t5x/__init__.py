"""fiat-t5x: FIAT (instruction-accelerated tuning) and Flan-style data for T5-family models in JAX."""

from fiat_t5x import cpu_tuning as _cpu_tuning

__version__ = "0.1.0"

# Before JAX starts its CPU threads: allocator settings for XLA:CPU steps (no-op elsewhere).
_cpu_tuning.prepare_process()
