"""The CPU attention path (`models.cpu_ops`: head-major score and context products with
hand-written backward passes, one-fusion softmax backward) keeps the numerics.

`T5Config.matmul_backward` "custom" (what "auto" picks on the CPU backend) runs attention through
`attention_scores`, `softmax_fused_backward` and `attention_context`; "autodiff" (what accelerators
run) keeps the [b, l, h, d] einsums and `jax.nn.softmax`. Both must give the same loss and
gradients, with packed segments, per-example positions (the gathered position bias) and attention
dropout; cached decoding (which keeps the [b, l, h, d] cache layout) must give the same step
logits. The parity tests against transformers, PEFT (LoRA) and the T5X fixture, and the scanned /
remat equivalence tests, run the CPU path too: it is the default on this backend.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fiat_t5x.models import cpu_ops, layers
from fiat_t5x.models.checkpoints import flatten
from fiat_t5x.models.model import EncoderDecoderModel
from tests.models.conftest import make_batch


def test_fused_backward_softmax_equals_jax_softmax_with_masked_rows():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, (2, 3, 5, 7)).astype(np.float32)
    logits[0, 0, 1, 4:] = layers.MASK_VALUE  # partly masked row
    logits[1, 2, 3, :] = layers.MASK_VALUE  # fully masked row (a padded query): uniform
    cotangent = jnp.asarray(rng.normal(size=logits.shape), jnp.float32)
    ours, ours_vjp = jax.vjp(cpu_ops.softmax_fused_backward, jnp.asarray(logits))
    ref, ref_vjp = jax.vjp(jax.nn.softmax, jnp.asarray(logits))
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours_vjp(cotangent)[0], ref_vjp(cotangent)[0], rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(ours_vjp(cotangent)[0][0, 0, 1, 4:]).max()) == 0.0


def test_mask_as_an_addend_gives_the_probabilities_a_select_gives():
    """T5X's form (position bias plus 0 / MASK_VALUE, summed first, then added) against masking
    the biased logits with a select: the same fp32 probabilities, bit for bit, with a partly and
    a fully masked row (a padded query), and the bias alone or the mask alone."""
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(0.0, 4.0, (2, 3, 5, 7)), jnp.float32)
    bias = jnp.asarray(rng.normal(0.0, 2.0, (1, 3, 5, 7)), jnp.float32)
    mask = np.ones((2, 1, 5, 7), bool)
    mask[0, 0, 1, 4:] = False
    mask[1, 0, 3, :] = False
    mask = jnp.asarray(mask)
    selected = jnp.where(mask, logits + bias, layers.MASK_VALUE)
    added = logits + layers.attention_addend(mask, bias, jnp.float32)
    np.testing.assert_array_equal(jax.nn.softmax(added), jax.nn.softmax(selected))
    np.testing.assert_allclose(jax.nn.softmax(added)[1, :, 3], 1 / 7, rtol=1e-6)  # uniform
    no_bias = logits + layers.attention_addend(mask, None, jnp.float32)
    np.testing.assert_array_equal(
        jax.nn.softmax(no_bias), jax.nn.softmax(jnp.where(mask, logits, layers.MASK_VALUE))
    )
    np.testing.assert_array_equal(layers.attention_addend(None, bias, jnp.float32), bias)
    assert layers.attention_addend(None, None, jnp.float32) is None


def _packed_batch(rng: np.random.Generator) -> dict[str, jnp.ndarray]:
    """Two rows, each two examples packed (segments 1, 2, then padding), positions restarting."""
    batch = {
        k: np.array(v) for k, v in make_batch(rng, encoder_length=16, decoder_length=10).items()
    }
    for prefix, key, cut in (
        ("encoder", "encoder_input_tokens", 7),
        ("decoder", "decoder_target_tokens", 4),
    ):
        length = batch[key].shape[1]
        segments = np.where(np.arange(length) < cut, 1, 2)[None].repeat(2, 0)
        segments = np.where(batch[key] > 0, segments, 0)
        positions = np.where(segments == 1, np.arange(length), np.arange(length) - cut)
        batch[f"{prefix}_segment_ids"] = segments.astype(np.int32)
        batch[f"{prefix}_positions"] = np.where(segments > 0, positions, 0).astype(np.int32)
    batch["decoder_input_tokens"][:, 4] = 0  # the second target starts from BOS
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _loss_and_grads(config, params, batch, dropout_rng) -> tuple[float, dict, str]:
    """Loss and all gradients of one jitted step, and the forward's jaxpr (which path ran)."""
    model = EncoderDecoderModel(config)

    def loss(p):
        return model.loss(p, batch, dropout_rng=dropout_rng)[0]

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    return float(value), flatten(jax.device_get(grads)), str(jax.make_jaxpr(loss)(params))


def test_cpu_attention_keeps_loss_and_grads_on_packed_batches(tiny_config, tiny_params):
    """Full fine-tuning with attention dropout on a packed batch: every gradient, the position
    bias table's included, equals the accelerator path's. (Scanned and rematerialised stacks run
    the CPU path in tests/models/test_scan_remat.py; LoRA against PEFT in test_speed_numerics.)"""
    cpu = dataclasses.replace(tiny_config, matmul_backward="custom", dropout_rate=0.1)
    plain = dataclasses.replace(cpu, matmul_backward="autodiff")
    batch = _packed_batch(np.random.default_rng(3))
    rng = jax.random.PRNGKey(4)
    loss, grads, jaxpr = _loss_and_grads(cpu, tiny_params, batch, rng)
    plain_loss, plain_grads, plain_jaxpr = _loss_and_grads(plain, tiny_params, batch, rng)
    # The two paths really differ: the CPU ops (their custom backward passes) run only on the first.
    for backward in ("_softmax_bwd", "_attention_scores_bwd", "_attention_context_bwd"):
        assert f"bwd={backward}" in jaxpr and f"bwd={backward}" not in plain_jaxpr, backward
    np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
    assert sorted(grads) == sorted(plain_grads)
    assert any("rel_embedding" in path for path in grads)
    for path, g in grads.items():
        scale = float(np.abs(plain_grads[path]).max())
        assert scale > 0, path
        np.testing.assert_allclose(g, plain_grads[path], rtol=1e-4, atol=1e-5 * scale, err_msg=path)


def test_cached_decoding_equal_on_both_attention_paths(tiny_config, tiny_params, tiny_batch):
    enc = tiny_batch["encoder_input_tokens"]
    tokens = tiny_batch["decoder_input_tokens"]

    def stepped_logits(config):
        model = EncoderDecoderModel(config)

        @jax.jit
        def run(params):
            encoded = model.module.apply({"params": params}, enc, method="encode")
            cache = model.init_decode_cache(params, encoded, enc, tokens.shape[1])

            def step(cache, step_tokens):
                logits, cache = model.decode_step(params, cache, encoded, enc, step_tokens)
                return cache, logits

            return jax.lax.scan(step, cache, tokens.T)[1]

        return np.asarray(run(tiny_params))

    cpu = stepped_logits(dataclasses.replace(tiny_config, matmul_backward="custom"))
    plain = stepped_logits(dataclasses.replace(tiny_config, matmul_backward="autodiff"))
    np.testing.assert_allclose(cpu, plain, rtol=1e-5, atol=1e-5)
