"""Differentiable matmuls and softmax with hand-written backward passes, for XLA:CPU.

Why these exist (measured in bench/RESULTS.md, "Where the time goes" and "bf16 on the CPU"):
- XLA:CPU runs a dot on its fast library kernels only in some operand layouts and dtypes. A
  bf16 x bf16 -> bf16 dot is rewritten to an fp32 dot (no AMX/AVX512-BF16), and a batched dot
  whose left operand contracts a non-minor axis runs as a slower generic loop. Autodiff emits
  both kinds; here every dot accumulates in fp32 from its operands' own dtype (the values a bf16
  dot has on an accelerator: exact products, fp32 sums, one rounding), and the backward dots of
  the attention products are written in the layouts the library takes.
- Autodiff of a softmax makes several passes over the [b, h, q, k] scores; its backward here is
  one fusion.

Values equal autodiff of the plain ops (`jnp.matmul`, `jnp.einsum`, `jax.nn.softmax`) up to
summation order (tests/models/test_cpu_ops.py, test_speed_numerics*.py). `T5Config.matmul_backward`
selects them ("auto": the CPU backend only); accelerators differentiate the plain ops well.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _dot(spec: str, x: Array, y: Array, dtype=None) -> Array:
    """einsum with fp32 accumulation, cast to `dtype` (default: the operands' common dtype)."""
    out = jnp.einsum(spec, x, y, preferred_element_type=jnp.float32)
    return out.astype(dtype or jnp.result_type(x, y))


def _pinned(x: Array) -> Array:
    """Keeps XLA from folding the transpose that follows into this dot's dimension order (which
    would turn a library-friendly dot back into one XLA:CPU runs as a generic loop)."""
    return jax.lax.optimization_barrier(x)


@jax.custom_vjp
def dense_matmul(x: Array, kernel: Array) -> Array:
    """`x @ kernel` for x [..., in], kernel [in, out].

    The kernel gradient is one dot over the flattened leading axes, straight into the kernel's
    [in, out] layout: autodiff's batched form made XLA:CPU add a transposing elementwise fusion
    that made the backward several times slower than the forward pass, and forming it as
    (g^T x)^T left a transposing copy per kernel for the optimizer (bench/RESULTS.md).
    """
    return _dense_matmul_fwd(x, kernel)[0]


def _dense_matmul_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return _dot("...i,io->...o", x, kernel), (x, kernel)


def _dense_matmul_bwd(residuals: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = residuals
    x2 = x.reshape(-1, x.shape[-1])
    g2 = g.reshape(-1, g.shape[-1]).astype(x.dtype)
    d_kernel = _dot("ni,no->io", x2, g2, kernel.dtype)
    d_x = _dot("...o,io->...i", g.astype(x.dtype), kernel, x.dtype)
    return d_x, d_kernel


dense_matmul.defvjp(_dense_matmul_fwd, _dense_matmul_bwd)


@jax.custom_vjp
def softmax_fused_backward(logits: Array) -> Array:
    """Softmax over the last axis [..., k] whose backward is one fusion: `p * (g - sum(p * g))`.

    Autodiff of the max-subtracted exp / sum runs several passes over the [b, h, q, k] scores on
    XLA:CPU; this keeps only the probabilities as the residual.
    """
    return _softmax(logits)


def _softmax(logits: Array) -> Array:
    shifted = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    return shifted / jnp.sum(shifted, axis=-1, keepdims=True)


def _softmax_fwd(logits: Array) -> tuple[Array, Array]:
    probs = _softmax(logits)
    return probs, probs


def _softmax_bwd(probs: Array, g: Array) -> tuple[Array]:
    return (probs * (g - jnp.sum(probs * g, axis=-1, keepdims=True)),)


softmax_fused_backward.defvjp(_softmax_fwd, _softmax_bwd)


def _head_major(x: Array) -> Array:
    """[b, l, h, d] -> [b, h, l, d]: the score and context dots then batch over leading axes."""
    return jnp.swapaxes(x, 1, 2)


@jax.custom_vjp
def attention_scores(q: Array, k: Array) -> Array:
    """q [b, q, h, d], k [b, k, h, d] -> fp32 scores [b, h, q, k] (no 1/sqrt(d): T5's scale)."""
    return _attention_scores_fwd(q, k)[0]


def _attention_scores_fwd(q: Array, k: Array) -> tuple[Array, tuple[Array, Array]]:
    q_h, k_h = _head_major(q), _head_major(k)
    return _dot("bhqd,bhkd->bhqk", q_h, k_h, jnp.float32), (q_h, k_h)


def _attention_scores_bwd(residuals: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    q_h, k_h = residuals
    g = g.astype(q_h.dtype)
    d_q = _pinned(_dot("bhqk,bhkd->bhqd", g, k_h))
    d_k_t = _pinned(_dot("bhqd,bhqk->bhdk", q_h, g))  # [d, k]: contracts q on both sides
    return _head_major(d_q), jnp.transpose(d_k_t, (0, 3, 1, 2))


attention_scores.defvjp(_attention_scores_fwd, _attention_scores_bwd)


@jax.custom_vjp
def attention_context(weights: Array, v: Array) -> Array:
    """weights [b, h, q, k], v [b, k, h, d] -> context [b, q, h, d] in v's dtype."""
    return _attention_context_fwd(weights, v)[0]


def _attention_context_fwd(weights: Array, v: Array) -> tuple[Array, tuple[Array, Array]]:
    v_h = _head_major(v)
    return _head_major(_dot("bhqk,bhkd->bhqd", weights, v_h, v.dtype)), (weights, v_h)


def _attention_context_bwd(residuals: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    weights, v_h = residuals
    g_h = _head_major(g.astype(v_h.dtype))
    d_weights = _dot("bhqd,bhkd->bhqk", g_h, v_h, weights.dtype)
    d_v_t = _pinned(_dot("bhqd,bhqk->bhdk", g_h, weights.astype(v_h.dtype)))
    return d_weights, jnp.transpose(d_v_t, (0, 3, 1, 2))


attention_context.defvjp(_attention_context_fwd, _attention_context_bwd)
