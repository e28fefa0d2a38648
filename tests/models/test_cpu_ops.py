"""`models.cpu_ops` (the CPU path's matmuls and attention products) equal autodiff of the plain ops.

fp32: values and every gradient agree with `jnp.matmul` / `jnp.einsum` to summation order. bf16:
each dot takes its bf16 operands to an fp32 sum and rounds once, which is exactly the plain op on
fp32 copies of the operands, rounded; the compiled CPU step keeps those dots in bf16 (XLA:CPU
rewrites a bf16 -> bf16 dot to an fp32 dot, and that was the whole bf16 slowdown on the CPU).
Where the next elementwise work reads a projection (the MLP's gated activation, LoRA's
addition), the CPU path hands it the fp32 sums and rounds once after that work; the other way
round, a projection takes its input's fp32 values (a norm's, the activation's), rounds them
itself and returns their gradient as fp32 sums. A whole bf16 model's LoRA gradients on the CPU
path are therefore at least as close to fp32 as the accelerator path's.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fiat_t5x.models import cpu_ops, layers, presets
from fiat_t5x.models.checkpoints import flatten, unflatten
from fiat_t5x.models.lora import LoraConfig
from fiat_t5x.models.model import EncoderDecoderModel
from tests.models.conftest import make_batch

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
    # A LoRA A factor's shape: the bf16 kernel gradient transposes the cotangent, not x.
    "dense_matmul_narrow_kernel": (cpu_ops.dense_matmul, jnp.matmul, ((B, L, 16), (16, 2))),
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
@pytest.mark.parametrize("features_out", [24, 8])
def test_bf16_dense_matmul_and_both_its_gradients_run_bf16_dots_on_the_cpu(features_out):
    """A projection's forward, input gradient (the LoRA step's frozen projections) and kernel
    gradient (full fine-tuning; for LoRA's A factor, 8 outputs, formed from the transposed
    cotangent), for a [batch, length, features] input as in the network."""
    x = _normal(0, (4, 16, 32), jnp.bfloat16)
    w = _normal(1, (32, features_out), jnp.bfloat16)

    def grads(matmul):
        return jax.grad(
            lambda x, w: jnp.sum(jnp.sin(matmul(x, w).astype(jnp.float32))), argnums=(0, 1)
        )

    ours = _dot_operand_dtypes(grads(cpu_ops.dense_matmul), x, w)
    plain = _dot_operand_dtypes(grads(jnp.matmul), x, w)
    assert len(ours) == 6 and set(ours) == {"bf16"}, ours  # three dots, two operands each
    assert "f32" in plain, plain


def test_float32_sums_are_the_unrounded_product_and_leave_the_gradients_as_they_were():
    x = _normal(0, (B, L, 6), jnp.bfloat16)
    w = _normal(1, (6, 4), jnp.bfloat16)
    cotangent = _normal(9, (B, L, 4))
    sums, grads = _value_and_vjp(lambda x, w: cpu_ops.dense_matmul(x, w, True), [x, w], cotangent)
    assert sums.dtype == jnp.float32
    wide = jnp.matmul(x.astype(jnp.float32), w.astype(jnp.float32))
    np.testing.assert_allclose(sums, wide, rtol=1e-6, atol=1e-6)
    # The backward rounds the cotangent to the operands' dtype, as for the rounded product.
    _, rounded_grads = _value_and_vjp(cpu_ops.dense_matmul, [x, w], cotangent.astype(jnp.bfloat16))
    for got, want in zip(grads, rounded_grads, strict=True):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(got.astype(jnp.float32), want.astype(jnp.float32))


def test_a_wider_input_is_rounded_inside_and_gets_its_gradient_unrounded():
    """A norm's fp32 output into a bf16 projection: value and kernel gradient are the rounded
    input's; the input gradient is the backward product's fp32 sum, with no rounding."""
    x = _normal(0, (B, L, 6))
    w = _normal(1, (6, 4), jnp.bfloat16)
    cotangent = _normal(9, (B, L, 4), jnp.bfloat16)
    out, (d_x, d_w) = _value_and_vjp(cpu_ops.dense_matmul, [x, w], cotangent)
    narrow = x.astype(jnp.bfloat16)
    want, (rounded_d_x, want_d_w) = _value_and_vjp(cpu_ops.dense_matmul, [narrow, w], cotangent)
    assert out.dtype == jnp.bfloat16 and d_w.dtype == jnp.bfloat16
    np.testing.assert_array_equal(out.astype(jnp.float32), want.astype(jnp.float32))
    np.testing.assert_array_equal(d_w.astype(jnp.float32), want_d_w.astype(jnp.float32))
    assert d_x.dtype == jnp.float32
    wide = jnp.matmul(cotangent.astype(jnp.float32), w.astype(jnp.float32).T)
    np.testing.assert_allclose(d_x, wide, rtol=1e-6, atol=1e-6)
    assert not np.array_equal(np.asarray(d_x), np.asarray(rounded_d_x.astype(jnp.float32)))


LORA_QV = LoraConfig(rank=4, alpha=8.0, targets=("query", "value"))


def _micro_lora_run(matmul_backward: str, dtype: str = "bfloat16"):
    """Loss and LoRA gradients of the micro model in `dtype` (LoRA B non-zero, so both factors get
    gradients), and the dtype each RMSNorm hands on."""
    config = presets.micro(dtype=dtype, matmul_backward=matmul_backward)
    model = EncoderDecoderModel(config, LORA_QV)
    params = model.init_params(jax.random.PRNGKey(0))
    params = {
        path: v + 0.05 * _normal(i, v.shape) if path.endswith("lora_b") else v
        for i, (path, v) in enumerate(flatten(params).items())
    }
    params = unflatten(params)
    batch = make_batch(np.random.default_rng(1), batch_size=4, encoder_length=24)
    loss, grads = jax.jit(jax.value_and_grad(lambda p: model.loss(p, batch)[0]))(params)
    _, state = jax.eval_shape(
        lambda p: model.module.apply(
            {"params": p},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            capture_intermediates=lambda module, _: isinstance(module, layers.RMSNorm),
        ),
        params,
    )
    norm_dtypes = {
        path.removesuffix("/__call__"): str(out[0].dtype)
        for path, out in flatten(state["intermediates"]).items()
    }
    lora_grads = {k: np.asarray(g, np.float32) for k, g in flatten(grads).items() if "lora" in k}
    return float(loss), lora_grads, norm_dtypes


def test_bf16_cpu_path_hands_norms_fp32_to_projections_and_keeps_lora_gradients_close():
    ref_loss, ref, _ = _micro_lora_run("custom", dtype="float32")
    errors, norms = {}, {}
    for backward in ("custom", "autodiff"):
        loss, grads, norms[backward] = _micro_lora_run(backward)
        assert abs(loss - ref_loss) < 1e-3 * ref_loss, backward
        assert sorted(grads) == sorted(ref)
        diff = sum(np.sum((grads[k] - ref[k]) ** 2) for k in ref)
        errors[backward] = float(np.sqrt(diff / sum(np.sum(ref[k] ** 2) for k in ref)))
    # The norms inside the layers feed projections: fp32 on the CPU path; the encoder's output
    # (cached for decoding) stays in the compute dtype, as everything does on accelerators.
    assert set(norms["autodiff"].values()) == {"bfloat16"}
    cpu = norms["custom"]
    assert cpu.pop("encoder/encoder_norm") == "bfloat16"
    assert any("pre_mlp_layer_norm" in k for k in cpu) and set(cpu.values()) == {"float32"}
    # Fewer roundings: the CPU path's bf16 gradients are no further from fp32's.
    assert errors["custom"] < 0.05 and errors["custom"] <= errors["autodiff"], errors


@pytest.mark.skipif(
    jax.default_backend() != "cpu" or not _cpu_has_bf16_units(),
    reason="XLA:CPU's bf16 dots, on a CPU with bf16 units (AVX512-BF16 or AMX)",
)
@pytest.mark.parametrize("name", ["attention_scores", "attention_context"])
def test_bf16_attention_products_and_their_gradients_run_bf16_dots_on_the_cpu(name):
    """All six attention products of a bf16 step (two forward, four backward) stay bf16. (XLA
    computes a dot with odd sizes, as in CASES, in fp32 whatever its form: even sizes here.)"""
    ours_fn, plain_fn, _ = CASES[name]
    b, length, h, d = 2, 16, 2, 8
    heads, weights = (b, length, h, d), (b, h, length, length)
    shapes = (heads, heads) if name == "attention_scores" else (weights, heads)
    args = [_normal(i, shape, jnp.bfloat16) for i, shape in enumerate(shapes)]

    def grads(fn):
        return jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a).astype(jnp.float32))), argnums=(0, 1))

    ours = _dot_operand_dtypes(grads(ours_fn), *args)
    plain = _dot_operand_dtypes(grads(plain_fn), *args)
    assert len(ours) == 6 and set(ours) == {"bf16"}, ours  # three dots, two operands each
    assert "f32" in plain, plain


def test_fp32_weights_are_rounded_inside_the_context_product_and_get_an_fp32_gradient():
    """The CPU path hands the softmax's fp32 probabilities to the bf16 context product: its
    value is the product of the rounded weights, their gradient the unrounded fp32 sum."""
    b, length, h, d = 2, 16, 2, 8
    weights = jax.nn.softmax(_normal(0, (b, h, length, length)))
    v = _normal(1, (b, length, h, d), jnp.bfloat16)
    cotangent = _normal(9, (b, length, h, d), jnp.bfloat16)
    context, (d_weights, d_v) = _value_and_vjp(cpu_ops.attention_context, [weights, v], cotangent)
    narrow = weights.astype(jnp.bfloat16)
    want, (_, want_d_v) = _value_and_vjp(cpu_ops.attention_context, [narrow, v], cotangent)
    np.testing.assert_array_equal(context.astype(jnp.float32), want.astype(jnp.float32))
    np.testing.assert_array_equal(d_v.astype(jnp.float32), want_d_v.astype(jnp.float32))
    assert d_weights.dtype == jnp.float32
    wide = jnp.einsum("bqhd,bkhd->bhqk", cotangent.astype(jnp.float32), v.astype(jnp.float32))
    np.testing.assert_allclose(d_weights, wide, rtol=1e-5, atol=1e-6)


def _wide(tree, *path):
    for key in path:
        tree = tree[key]
    return tree.astype(jnp.bfloat16).astype(jnp.float32)


def _bf16_ulp_close(got, want):
    """Equal up to one bf16 rounding step (summation order can move a value across one)."""
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=2**-7, atol=1e-6)


@pytest.mark.parametrize("custom_backward", [True, False])
def test_bf16_mlp_activation_reads_fp32_sums_on_the_cpu_path_only(custom_backward):
    mlp = layers.MlpBlock(
        mlp_dim=16,
        activations=("gelu", "linear"),
        custom_backward=custom_backward,
        dtype=jnp.bfloat16,
    )
    x = _normal(0, (B, L, 8), jnp.bfloat16)
    variables = nn.meta.unbox(mlp.init(jax.random.PRNGKey(0), x))
    out, state = mlp.apply(variables, x, capture_intermediates=True)
    inner = state["intermediates"]
    # The CPU path hands the activation the projections' fp32 sums; accelerators' path rounds.
    want_dtype = jnp.dtype(jnp.float32 if custom_backward else jnp.bfloat16)
    assert {inner[n]["__call__"][0].dtype for n in ("wi_0", "wi_1")} == {want_dtype}
    if custom_backward:
        p, x32 = variables["params"], x.astype(jnp.float32)
        hidden = jax.nn.gelu(x32 @ _wide(p, "wi_0", "kernel")) * (x32 @ _wide(p, "wi_1", "kernel"))
        hidden = hidden.astype(jnp.bfloat16).astype(jnp.float32)  # one rounding, after the gate
        _bf16_ulp_close(out, hidden @ _wide(p, "wo", "kernel"))


class _Query(nn.Module):
    """A LoRA-targeted projection needs its module path ("query")."""

    lora: LoraConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return layers.DenseProjection(
            features=1,
            axes=("embed", "joined_kv"),
            lora=self.lora,
            custom_backward=True,
            dtype=jnp.bfloat16,
            name="query",
        )(x)


def test_bf16_lora_projection_adds_fp32_sums_and_rounds_once_on_the_cpu_path():
    """x W = 257 lies between the bf16 values 256 and 258 (a tie, rounded to 256); LoRA adds
    0.8984375 (0.9 in bf16). Rounded once, 257.898 is 258; rounding the base product first gives
    256 + 0.898, which rounds to 256. Every value is exact, so summation order cannot matter."""
    lora = LoraConfig(rank=1, alpha=1.0, targets=("query",))
    x = jnp.ones((1, 1, 2), jnp.bfloat16)
    params = {
        "query": {
            "kernel": jnp.array([[128.0], [129.0]]),
            "lora_a": jnp.array([[0.5], [0.5]]),
            "lora_b": jnp.array([[0.9]]),
        }
    }
    out = _Query(lora).apply({"params": params}, x)
    assert out.dtype == jnp.bfloat16
    assert float(out[0, 0, 0]) == 258.0
