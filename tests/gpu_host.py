"""The GPU bench machine's Python: JAX, flax, optax, orbax and torch, no gin, SeqIO or TensorFlow.

`BLOCK_MISSING` is the prelude a test's fresh interpreter runs first, so that anything it then
imports fails on those packages as it would there.
"""

MISSING = ("gin", "seqio", "tensorflow", "tensorflow_datasets")

BLOCK_MISSING = f"import sys\nfor _name in {MISSING!r}:\n    sys.modules[_name] = None\n"
