"""`models.cpu_ops` (the CPU path's matmuls and attention products) equal autodiff of the plain ops.

fp32: values and every gradient agree with `jnp.matmul` / `jnp.einsum` to summation order. bf16:
each dot takes its bf16 operands to an fp32 sum and rounds once, which is exactly the plain op on
fp32 copies of the operands, rounded; the compiled CPU step keeps those dots in bf16 (XLA:CPU
rewrites a bf16 -> bf16 dot to an fp32 dot, and that was the whole bf16 slowdown on the CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fiat_t5x.models import cpu_ops

B, L, K, H, D = 2, 5, 7, 3, 4  # batch, query length, key length, heads, head dim


def _normal(seed: int, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32).astype(dtype)


def _plain_scores(q, k):
    return jnp.einsum("bqhd,bkhd->bhqk", q, k)


def _plain_context(weights, v):
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _value_and_vjp(fn, args, cotangent):
    out, vjp = jax.vjp(fn, *args)
    return out, vjp(cotangent.astype(out.dtype))


CASES = {
    "dense_matmul": (cpu_ops.dense_matmul, jnp.matmul, ((B, L, 6), (6, 4))),
    "attention_scores": (cpu_ops.attention_scores, _plain_scores, ((B, L, H, D), (B, K, H, D))),
    "attention_context": (
        cpu_ops.attention_context,
        _plain_context,
        ((B, H, L, K), (B, K, H, D)),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fp32_value_and_gradients_equal_autodiff_of_the_plain_op(name):
    ours_fn, plain_fn, shapes = CASES[name]
    args = [_normal(i, shape) for i, shape in enumerate(shapes)]
    cotangent = _normal(9, plain_fn(*args).shape)
    ours, ours_grads = _value_and_vjp(ours_fn, args, cotangent)
    plain, plain_grads = _value_and_vjp(plain_fn, args, cotangent)
    assert ours.shape == plain.shape and ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, plain, rtol=1e-5, atol=1e-5)
    for got, want in zip(ours_grads, plain_grads, strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bf16_is_the_fp32_sum_of_bf16_operands_rounded_once(name):
    ours_fn, plain_fn, shapes = CASES[name]
    args = [_normal(i, shape, jnp.bfloat16) for i, shape in enumerate(shapes)]
    cotangent = _normal(9, plain_fn(*args).shape, jnp.bfloat16)
    ours, ours_grads = _value_and_vjp(ours_fn, args, cotangent)
    wide = [a.astype(jnp.float32) for a in args]
    plain, plain_grads = _value_and_vjp(plain_fn, wide, cotangent.astype(jnp.float32))
    # Scores are fp32 (the softmax's input); everything else keeps the operands' bf16.
    want_dtype = jnp.float32 if name == "attention_scores" else jnp.bfloat16
    assert ours.dtype == want_dtype
    np.testing.assert_allclose(
        ours.astype(jnp.float32), plain.astype(want_dtype).astype(jnp.float32), rtol=1e-2
    )
    for got, want, arg in zip(ours_grads, plain_grads, args, strict=True):
        assert got.dtype == arg.dtype
        # One bf16 rounding of the fp32 sum: within half a bf16 ulp (2^-8 relative) of it.
        np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=2**-8, atol=1e-6)


def _dot_operand_dtypes(fn, *args) -> list[str]:
    """Element types of every dot's operands in the compiled (optimised) HLO of fn."""
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    shapes = {}
    for line in hlo.splitlines():
        name, _, rest = line.strip().removeprefix("ROOT ").partition(" = ")
        if rest:
            shapes[name] = rest.split("[", 1)[0]
    dtypes = []
    for line in hlo.splitlines():
        if " dot(" in line:
            operands = line.split(" dot(", 1)[1].split(")", 1)[0].split(", ")
            dtypes += [shapes[op] for op in operands]
    return dtypes


def _cpu_has_bf16_units() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@pytest.mark.skipif(
    jax.default_backend() != "cpu" or not _cpu_has_bf16_units(),
    reason="XLA:CPU's bf16 dots, on a CPU with bf16 units (AVX512-BF16 or AMX)",
)
def test_bf16_dense_matmul_and_its_input_gradient_run_bf16_dots_on_the_cpu():
    """The LoRA step's frozen projections: forward and input gradient. (The kernel gradient's
    dot contracts the tokens axis of both operands, which XLA:CPU still runs in fp32.)"""
    x = _normal(0, (16, 32), jnp.bfloat16)
    w = _normal(1, (32, 24), jnp.bfloat16)

    def input_grad(matmul):
        return jax.grad(lambda x, w: jnp.sum(jnp.sin(matmul(x, w).astype(jnp.float32))))

    ours = _dot_operand_dtypes(input_grad(cpu_ops.dense_matmul), x, w)
    plain = _dot_operand_dtypes(input_grad(jnp.matmul), x, w)
    assert len(ours) == 4 and set(ours) == {"bf16"}, ours  # two dots, two operands each
    assert "f32" in plain, plain
