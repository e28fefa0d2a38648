"""Differentiable matmuls and softmax with hand-written backward passes, for XLA:CPU.

Why these exist (measured in bench/RESULTS.md, "Where the time goes" and "bf16 on the CPU"):
- XLA:CPU runs a dot on its fast library kernels only in some operand layouts and dtypes. A
  bf16 x bf16 -> bf16 dot is rewritten to an fp32 dot (no AMX/AVX512-BF16), and a batched dot
  whose left operand contracts a non-minor axis runs as a slower generic loop. Autodiff emits
  both kinds; here every dot accumulates in fp32 from its operands' own dtype (the values a bf16
  dot has on an accelerator: exact products, fp32 sums, one rounding), and the backward dots of
  the attention products are written in the layouts the library takes (in bf16, forms of their
  own: `_narrow`).
- Autodiff of a softmax makes several passes over the [b, h, q, k] scores; its backward here is
  one fusion.

Values equal autodiff of the plain ops (`jnp.matmul`, `jnp.einsum`, `jax.nn.softmax`) up to
summation order (tests/models/test_cpu_ops.py, test_speed_numerics*.py). `T5Config.matmul_backward`
selects them ("auto": the CPU backend only); accelerators differentiate the plain ops well.
"""

from __future__ import annotations

import functools

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


def dense_matmul(x: Array, kernel: Array, float32_sums: bool = False) -> Array:
    """`x @ kernel` for x [..., in], kernel [in, out].

    The kernel gradient is one dot over the flattened leading axes, straight into the kernel's
    [in, out] layout: autodiff's batched form made XLA:CPU add a transposing elementwise fusion
    that made the backward several times slower than the forward pass, and forming it as
    (g^T x)^T left a transposing copy per kernel for the optimizer (bench/RESULTS.md).

    `float32_sums` returns the fp32 sums unrounded, for a caller whose next elementwise work
    (the MLP's activation, LoRA's addition) then reads them and rounds once: XLA:CPU cannot
    fold the rounding into the library dot, so rounding here costs a pass of its own, and bf16
    elementwise arithmetic on the CPU rounds after every operation.

    An `x` wider than the kernel (a norm's or the MLP activation's fp32 output, bf16 kernels) is
    rounded to the kernel's dtype here, and its gradient leaves as the backward product's fp32
    sums, unrounded, for the same reason the other way round: the norm's or the activation's
    backward reads them, where a bf16 gradient cost a rounding pass over the library dot's
    output (and the several projections of one input added their gradients in bf16).
    """
    return _dense_matmul(x, kernel, float32_sums, jnp.dtype(x.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dense_matmul(x: Array, kernel: Array, float32_sums: bool, x_dtype: jnp.dtype) -> Array:
    return _dense_matmul_fwd(x, kernel, float32_sums, x_dtype)[0]


def _dense_matmul_fwd(
    x: Array, kernel: Array, float32_sums: bool, x_dtype: jnp.dtype
) -> tuple[Array, tuple[Array, Array]]:
    del x_dtype  # the backward's: the dtype of the input gradient
    if wider(x.dtype, kernel.dtype):
        x = x.astype(kernel.dtype)
    out = _dot("...i,io->...o", x, kernel, jnp.float32 if float32_sums else None)
    return out, (x, kernel)


def _dense_matmul_bwd(
    float32_sums: bool, x_dtype: jnp.dtype, residuals: tuple[Array, Array], g: Array
) -> tuple[Array, Array]:
    del float32_sums  # the cotangent is rounded to the operands' dtype either way
    x, kernel = residuals
    g = g.astype(x.dtype)
    g2 = g.reshape(-1, g.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    if not (_narrow(x) and x.ndim >= 3):
        d_kernel = _dot("ni,no->io", x2, g2, kernel.dtype)
    elif _cheaper_to_transpose_the_cotangent(*x2.shape, g2.shape[-1]):
        # A narrow kernel (LoRA's A: out = rank): transpose the small cotangent instead.
        d_kernel_t = _pinned(_dot("on,ni->oi", _features_first(g), x2))
        d_kernel = d_kernel_t.T.astype(kernel.dtype)
    else:
        d_kernel = _dot("in,no->io", _features_first(x), g2, kernel.dtype)
    d_x = _dot("...o,io->...i", g, kernel, x_dtype)
    return d_x, d_kernel


def wider(dtype: jnp.dtype, than: jnp.dtype) -> bool:
    """Whether `dtype` has more bits than `than` (fp32 against bf16)."""
    return jnp.dtype(dtype).itemsize > jnp.dtype(than).itemsize


def _cheaper_to_transpose_the_cotangent(tokens: int, features_in: int, features_out: int) -> bool:
    """Whether the bf16 kernel gradient should take a transposed copy of the cotangent
    ([out, n], then the [out, in] result transposed: fp32, twice the elements' bytes) rather
    than of the input ([in, n]): for LoRA's A factor (out = rank 8) the input's copy is ~100
    times bigger; for the model's own kernels it is the input's."""
    return tokens * features_out + 2 * features_in * features_out < tokens * features_in


def _features_first(x: Array) -> Array:
    """[b, l, in] -> [in, b*l], a transposed copy: the kernel gradient's product sums over the
    tokens, which in bf16 the library takes only as [M, K] . [K, N] (`_narrow`). The reshape
    after the transpose keeps XLA from folding the transpose back into the dot."""
    return jnp.moveaxis(x, -1, 0).reshape(x.shape[-1], -1)


_dense_matmul.defvjp(_dense_matmul_fwd, _dense_matmul_bwd)


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


def attention_scores(q: Array, k: Array) -> Array:
    """q [b, q, h, d], k [b, k, h, d] -> fp32 scores [b, h, q, k] (no 1/sqrt(d): T5's scale)."""
    return (_scores_flat if _narrow(q) else _scores_head_major)(q, k)


def attention_context(weights: Array, v: Array) -> Array:
    """weights [b, h, q, k], v [b, k, h, d] -> context [b, q, h, d] in v's dtype.

    Weights wider than v (the softmax's fp32 probabilities, bf16 values) are rounded to v's
    dtype here, and their gradient leaves the product in their own dtype: the softmax's
    backward then reads the fp32 sums, not a bf16 rounding of them.
    """
    if _narrow(v):
        return _context_flat(weights, v, jnp.dtype(weights.dtype))
    return _context_head_major(weights, v)


def _narrow(x: Array) -> bool:
    """bf16 (or fp16) operands: the attention products take the flat forms below, and the
    kernel gradient a transposed copy of the input (`_features_first`).

    XLA:CPU runs a bf16 dot on its library kernels only with row-major operands in the forms
    [M, K] . [K, N] or [M, K] . [N, K]; any other dot it computes in fp32 on fp32 copies (a
    third of the rate). The head-major forms leave XLA free to fold the head transposes into
    the dot, and two backward products contract the tokens axis of both operands, so in bf16
    every attention product ran in fp32. The flat forms batch over b*h: the reshape makes the
    transposes real copies, and those two products take a transposed copy ([d, l]) of one
    operand. In fp32 the library takes the head-major forms at full rate and the extra
    copies cost more than they save (bench/RESULTS.md, "Fifth pass").
    """
    return jnp.dtype(x.dtype).itemsize < 4


def _head_major(x: Array) -> Array:
    """[b, l, h, d] -> [b, h, l, d]: the score and context dots then batch over leading axes."""
    return jnp.swapaxes(x, 1, 2)


@jax.custom_vjp
def _scores_head_major(q: Array, k: Array) -> Array:
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


_scores_head_major.defvjp(_attention_scores_fwd, _attention_scores_bwd)


@jax.custom_vjp
def _context_head_major(weights: Array, v: Array) -> Array:
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


_context_head_major.defvjp(_attention_context_fwd, _attention_context_bwd)


def _rows(x: Array) -> Array:
    """[b, l, h, d] -> [b*h, l, d]."""
    b, length, h, d = x.shape
    return jnp.transpose(x, (0, 2, 1, 3)).reshape(b * h, length, d)


def _columns(x: Array) -> Array:
    """[b, l, h, d] -> [b*h, d, l]: the operand of a product that sums over the tokens axis."""
    b, length, h, d = x.shape
    return jnp.transpose(x, (0, 2, 3, 1)).reshape(b * h, d, length)


def _from_rows(x: Array, b: int) -> Array:
    """[b*h, l, d] -> [b, l, h, d]."""
    n, length, d = x.shape
    return jnp.transpose(x.reshape(b, n // b, length, d), (0, 2, 1, 3))


def _from_columns(x: Array, b: int) -> Array:
    """[b*h, d, l] -> [b, l, h, d]."""
    n, d, length = x.shape
    return jnp.transpose(x.reshape(b, n // b, d, length), (0, 3, 1, 2))


@jax.custom_vjp
def _scores_flat(q: Array, k: Array) -> Array:
    return _scores_flat_fwd(q, k)[0]


def _scores_flat_fwd(q: Array, k: Array) -> tuple[Array, tuple[Array, Array]]:
    b, length_q, h, _ = q.shape
    k_rows = _rows(k)
    scores = _dot("nqd,nkd->nqk", _rows(q), k_rows, jnp.float32)
    return scores.reshape(b, h, length_q, k.shape[1]), (q, k_rows)


def _scores_flat_bwd(residuals: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    q, k_rows = residuals
    b, length_q, h, _ = q.shape
    g = g.astype(q.dtype).reshape(b * h, length_q, -1)
    d_q = _dot("nqk,nkd->nqd", g, k_rows)
    d_k = _dot("ndq,nqk->ndk", _columns(q), g)
    return _from_rows(d_q, b), _from_columns(d_k, b)


_scores_flat.defvjp(_scores_flat_fwd, _scores_flat_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _context_flat(weights: Array, v: Array, weights_dtype: jnp.dtype) -> Array:
    return _context_flat_fwd(weights, v, weights_dtype)[0]


def _context_flat_fwd(
    weights: Array, v: Array, weights_dtype: jnp.dtype
) -> tuple[Array, tuple[Array, Array]]:
    del weights_dtype  # the backward's: its weights residual is already rounded to v's dtype
    b, h, length_q, length_k = weights.shape
    narrow = weights.reshape(b * h, length_q, length_k).astype(v.dtype)
    v_rows = _rows(v)
    context = _from_rows(_dot("nqk,nkd->nqd", narrow, v_rows, v.dtype), b)
    return context, (narrow, v_rows)


def _context_flat_bwd(
    weights_dtype: jnp.dtype, residuals: tuple[Array, Array], g: Array
) -> tuple[Array, Array]:
    weights, v_rows = residuals
    b = g.shape[0]
    n, length_q, length_k = weights.shape
    g = g.astype(v_rows.dtype)
    d_weights = _dot("nqd,nkd->nqk", _rows(g), v_rows, weights_dtype)
    d_v = _dot("ndq,nqk->ndk", _columns(g), weights)
    return d_weights.reshape(b, n // b, length_q, length_k), _from_columns(d_v, b)


_context_flat.defvjp(_context_flat_fwd, _context_flat_bwd)
