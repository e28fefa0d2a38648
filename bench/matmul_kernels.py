"""One projection at a time: XLA:CPU's kernels (what our compiled step calls) against PyTorch's.

The train steps of bench/model_step.py spend ~75% of their time in matmuls of a handful of
shapes; this times exactly those shapes alone, both libraries on one pinned CPU in this process,
so that a step-level ratio can be split into "kernel rate" and "everything else". Per
shape: GFLOP/s of a frozen projection's two products in a LoRA step, x @ W and g @ W^T, fp32,
JAX (one jitted call; XLA:CPU's YNNPACK kernels) against torch (MKL); best of `--repeats` runs
each, and their ratio.

fp32 only: in bf16, which kernel XLA:CPU picks depends on the graph around the dot (alone, a
bf16 g @ W^T is rewritten to an fp32 dot; inside the compiled step the same product runs on bf16
kernels), so bf16 is measured where it counts, by bench/model_step.py --precisions bfloat16.

    .venv/bin/python bench/matmul_kernels.py                   # the medium config's shapes
    .venv/bin/python bench/matmul_kernels.py --repeats 5 --cpu 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import numpy as np

# [tokens, in] @ [in, out] of the medium config (batch 8 x 256 encoder tokens, 8 x 64 decoder):
# attention projections, MLP in and out, and the vocabulary logits.
MEDIUM_SHAPES = ((2048, 768, 768), (2048, 768, 2048), (2048, 2048, 768), (512, 768, 32128))


def best_seconds(run: Callable[..., object], operands: tuple, repeats: int) -> float:
    run(*operands)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(*operands)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cpu", type=int, default=0, help="the one CPU both libraries run on")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import jax
    import jax.numpy as jnp
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()}; jax {jax.__version__}, torch {torch.__version__}")
    print("| tokens x in x out | JAX GFLOP/s | torch GFLOP/s | JAX / torch |")
    print("|---|---:|---:|---:|")

    @jax.jit
    def ours(x, g, w):
        """A frozen projection's two products in a LoRA step: y = x W, input gradient g W^T."""
        return x @ w, g @ w.T

    def theirs(x, g, w):
        return x @ w, g @ w.T

    for tokens, fan_in, fan_out in MEDIUM_SHAPES:
        x, w, g = (
            rng.standard_normal(shape, np.float32)
            for shape in ((tokens, fan_in), (fan_in, fan_out), (tokens, fan_out))
        )
        gflop = 2 * 2 * tokens * fan_in * fan_out / 1e9
        rate = gflop / best_seconds(
            lambda *a: jax.block_until_ready(ours(*a)),
            tuple(map(jnp.asarray, (x, g, w))),
            args.repeats,
        )
        peer = gflop / best_seconds(theirs, tuple(map(torch.from_numpy, (x, g, w))), args.repeats)
        print(f"| {tokens} x {fan_in} x {fan_out} | {rate:.0f} | {peer:.0f} | {rate / peer:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
