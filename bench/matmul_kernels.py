"""One projection at a time: XLA:CPU's kernels (what our compiled step calls) against PyTorch's.

The train steps of bench/model_step.py spend ~75% of their time in matmuls of a handful of
shapes; this times exactly those shapes alone, both libraries on one pinned CPU in this process,
so that a step-level ratio can be split into "kernel rate" and "everything else". Per
shape: GFLOP/s of JAX (one jitted call; XLA:CPU's YNNPACK kernels) against torch (MKL in fp32,
oneDNN in bf16), best of `--repeats` runs each, and their ratio. fp32: a frozen projection's two
products in a LoRA step, x @ W and g @ W^T. bf16: x @ W only (bf16 operands, fp32 sums, as
`models.cpu_ops` does): alone, XLA:CPU rewrites a bf16 g @ W^T to an fp32 dot, while inside the
compiled step the same product runs on bf16 kernels, so the step is measured by
bench/model_step.py --precisions bfloat16.

    .venv/bin/python bench/matmul_kernels.py                   # the medium config's shapes
    .venv/bin/python bench/matmul_kernels.py --repeats 5 --cpu 1
    .venv/bin/python bench/matmul_kernels.py --forms --cpu 1   # which bf16 dot forms stay bf16

`--forms` times JAX alone on one batched bf16 product (attention's shape in the medium config,
b*h = 96) in each operand form (`FORMS`), and says whether XLA:CPU kept it a bf16 dot or rewrote it to
fp32 on converted copies: why `models.cpu_ops` writes attention's products and the kernel
gradient in the forms it does.
"""

from __future__ import annotations

import argparse
import os
import re
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


# out[n, m, j] = sum_k a . b with the contracted axis minor or major in each operand; the last
# one is the kernel gradient's and attention's d_k / d_v shape (contracting 256 tokens).
FORMS = (
    ("NN  [M,K].[K,N]", "nmk,nkj->nmj", (96, 256, 64), (96, 64, 256)),
    ("NT  [M,K].[N,K]", "nmk,njk->nmj", (96, 256, 64), (96, 256, 64)),
    ("TN  [K,M].[K,N]", "nkm,nkj->nmj", (96, 64, 256), (96, 64, 256)),
    ("TN, K = tokens", "nkm,nkj->nmj", (96, 256, 64), (96, 256, 256)),
    ("NN, K = tokens", "nmk,nkj->nmj", (96, 64, 256), (96, 256, 256)),
)
_UPCAST = re.compile(r"= f32\[[0-9,]*\]\{[0-9,]*\} convert\(")


def dot_forms(repeats: int) -> None:
    """JAX alone: each form's time and whether XLA:CPU kept the bf16 dot (no fp32 copies)."""
    import jax
    import jax.numpy as jnp

    print("| form | einsum | ms | GFLOP/s | kept bf16 |")
    print("|---|---|---:|---:|---|")
    rng = np.random.default_rng(0)
    for label, spec, lhs_shape, rhs_shape in FORMS:
        lhs, rhs = (
            jnp.asarray(rng.standard_normal(s), jnp.bfloat16) for s in (lhs_shape, rhs_shape)
        )
        product = jax.jit(
            lambda a, b, spec=spec: jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
        )
        upcast = bool(_UPCAST.search(product.lower(lhs, rhs).compile().as_text()))
        out = product(lhs, rhs)
        contracted = lhs.size // (out.shape[0] * out.shape[1])
        seconds = best_seconds(
            lambda a, b, f=product: jax.block_until_ready(f(a, b)), (lhs, rhs), repeats
        )
        gflop = 2 * out.size * contracted / 1e9
        print(
            f"| {label} | `{spec}` | {1e3 * seconds:.2f} | {gflop / seconds:.0f} | "
            f"{'no: fp32 copies' if upcast else 'yes'} |",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cpu", type=int, default=0, help="the one CPU both libraries run on")
    parser.add_argument("--forms", action="store_true", help="bf16 dot forms, JAX alone")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.forms:
        dot_forms(args.repeats)
        return 0
    import jax
    import jax.numpy as jnp
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()}; jax {jax.__version__}, torch {torch.__version__}")
    print("| dtype | products | tokens x in x out | JAX GFLOP/s | torch GFLOP/s | JAX / torch |")
    print("|---|---|---|---:|---:|---:|")

    @jax.jit
    def ours_fp32(x, g, w):
        """A frozen projection's two products in a LoRA step: y = x W, input gradient g W^T."""
        return x @ w, g @ w.T

    @jax.jit
    def ours_bf16(x, g, w):
        """x W alone, bf16 operands summed in fp32 (as `models.cpu_ops`); g unused."""
        return jnp.matmul(x, w, preferred_element_type=jnp.float32).astype(x.dtype)

    cases = (
        ("float32", "x W, g W^T", ours_fp32, lambda x, g, w: (x @ w, g @ w.T), 2),
        ("bfloat16", "x W", ours_bf16, lambda x, g, w: x @ w, 1),
    )
    for dtype, products, ours, theirs, count in cases:
        for tokens, fan_in, fan_out in MEDIUM_SHAPES:
            x, w, g = (
                rng.standard_normal(shape, np.float32)
                for shape in ((tokens, fan_in), (fan_in, fan_out), (tokens, fan_out))
            )
            gflop = count * 2 * tokens * fan_in * fan_out / 1e9
            rate = gflop / best_seconds(
                lambda *a, ours=ours: jax.block_until_ready(ours(*a)),
                tuple(jnp.asarray(a, dtype) for a in (x, g, w)),
                args.repeats,
            )
            peer = gflop / best_seconds(
                theirs,
                tuple(torch.from_numpy(a).to(getattr(torch, dtype)) for a in (x, g, w)),
                args.repeats,
            )
            print(
                f"| {dtype} | {products} | {tokens} x {fan_in} x {fan_out} | {rate:.0f} | "
                f"{peer:.0f} | {rate / peer:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
