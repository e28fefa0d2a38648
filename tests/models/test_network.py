"""The network: parameter names/axes per family, packing, position buckets, losses and scores."""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import gin
from fiat_t5x.models import presets
from fiat_t5x.models.layers import RelativePositionBias, relative_position_bucket
from fiat_t5x.models.losses import (
    compute_weighted_cross_entropy,
    loss_normalizing_factor_and_weights,
)
from fiat_t5x.models.model import EncoderDecoderModel

from .conftest import make_batch

AXIS_NAMES = {"embed", "mlp", "joined_kv", "heads", "kv", "vocab", "relpos_buckets", "lora_rank"}


def _flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def test_gated_param_tree_matches_contract(tiny_model):
    shapes = {k: v.shape for k, v in _flat(tiny_model.param_shapes()).items()}
    assert shapes["token_embedder/embedding"] == (384, 64)
    assert shapes["encoder/relpos_bias/rel_embedding"] == (4, 32)
    assert shapes["encoder/layers_1/attention/query/kernel"] == (64, 64)
    assert shapes["encoder/layers_0/mlp/wi_1/kernel"] == (64, 256)
    assert shapes["encoder/layers_0/mlp/wo/kernel"] == (256, 64)
    assert shapes["decoder/layers_1/encoder_decoder_attention/out/kernel"] == (64, 64)
    assert shapes["decoder/layers_0/pre_cross_attention_layer_norm/scale"] == (64,)
    assert shapes["decoder/logits_dense/kernel"] == (64, 384)
    # 52 arrays, 345,088 parameters: the T5X fixture's tree (its README).
    assert len(shapes) == 52
    assert sum(int(np.prod(s)) for s in shapes.values()) == 345_088


def test_relu_tied_and_per_layer_relpos_variants():
    config = presets.tiny(
        mlp_activations=("relu",), logits_via_embedding=True, per_layer_relpos_bias=True
    )
    keys = set(_flat(EncoderDecoderModel(config).param_shapes()))
    assert "encoder/layers_0/mlp/wi/kernel" in keys
    assert "encoder/layers_0/mlp/wi_0/kernel" not in keys
    assert "decoder/logits_dense/kernel" not in keys
    assert "decoder/layers_1/relpos_bias/rel_embedding" in keys
    assert "encoder/relpos_bias/rel_embedding" not in keys


def test_logical_axes_cover_every_param(tiny_lora_model):
    shapes = _flat(tiny_lora_model.param_shapes())
    axes = _flat(tiny_lora_model.logical_axes())
    assert set(axes) == set(shapes)
    for path, names in axes.items():
        assert len(names) == len(shapes[path].shape), path
        assert set(names) <= AXIS_NAMES, path
    assert axes["encoder/layers_0/attention/query/kernel"] == ("embed", "joined_kv")
    assert axes["encoder/layers_0/attention/query/lora_a"] == ("embed", "lora_rank")
    assert axes["decoder/layers_0/mlp/wo/lora_b"] == ("lora_rank", "embed")
    assert axes["decoder/relpos_bias/rel_embedding"] == ("heads", "relpos_buckets")
    assert axes["token_embedder/embedding"] == ("vocab", "embed")


def _np_bucket(rel: int, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128):
    """Hand-written reference of T5's bucketing for one scalar offset."""
    n, base = -rel, 0
    if bidirectional:
        num_buckets //= 2
        base = num_buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return base + n
    large = max_exact + int(
        np.log(n / max_exact) / np.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return base + min(large, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bucket(bidirectional):
    rel = np.arange(-300, 301)
    got = relative_position_bucket(
        jnp.asarray(rel), bidirectional=bidirectional, num_buckets=32, max_distance=128
    )
    want = [_np_bucket(int(r), bidirectional) for r in rel]
    np.testing.assert_array_equal(np.asarray(got), want)
    # Hand-worked anchors: key one step back / ahead, far away.
    if bidirectional:
        assert [_np_bucket(r, True) for r in (0, -1, 1, -500, 500)] == [0, 1, 17, 15, 31]
    else:
        assert [_np_bucket(r, False) for r in (0, -1, 5, -500)] == [0, 1, 0, 31]


def test_packed_examples_match_separate_examples(tiny_logits_fn, tiny_params):
    rng = np.random.default_rng(1)
    a = make_batch(rng, batch_size=1, encoder_length=6, decoder_length=5)
    b = make_batch(rng, batch_size=1, encoder_length=6, decoder_length=5)

    def real(x, key):
        return np.asarray(x[key][0])[np.asarray(x[key][0]) > 0]

    enc_a, enc_b = real(a, "encoder_input_tokens"), real(b, "encoder_input_tokens")
    tgt_a, tgt_b = real(a, "decoder_target_tokens"), real(b, "decoder_target_tokens")

    def pack(parts, length):
        tokens = np.zeros(length, np.int32)
        segments, positions = np.zeros(length, np.int32), np.zeros(length, np.int32)
        start = 0
        for seg, part in enumerate(parts, 1):
            tokens[start : start + len(part)] = part
            segments[start : start + len(part)] = seg
            positions[start : start + len(part)] = np.arange(len(part))
            start += len(part)
        return tokens, segments, positions

    enc, enc_seg, enc_pos = pack([enc_a, enc_b], 16)
    tgt, dec_seg, dec_pos = pack([tgt_a, tgt_b], 12)
    dec_in = np.concatenate([[0], tgt[:-1]])
    dec_in[dec_pos == 0] = 0  # each packed target starts from BOS
    packed = {
        "encoder_input_tokens": enc[None],
        "decoder_input_tokens": dec_in[None],
        "decoder_target_tokens": tgt[None],
        "encoder_segment_ids": enc_seg[None],
        "decoder_segment_ids": dec_seg[None],
        "encoder_positions": enc_pos[None],
        "decoder_positions": dec_pos[None],
    }
    packed = {k: jnp.asarray(v) for k, v in packed.items()}
    packed_logits = np.asarray(tiny_logits_fn(tiny_params, packed))[0]
    for seg, single in ((1, a), (2, b)):
        alone = np.asarray(tiny_logits_fn(tiny_params, single))[0]
        rows = dec_seg == seg
        n = int(rows.sum())
        np.testing.assert_allclose(packed_logits[rows], alone[:n], atol=2e-5, rtol=1e-5)


def _np_weighted_ce(logits, targets, weights, label_smoothing, z_loss):
    """Independent float64 reference: explicit smoothed one-hot and log-softmax."""
    logits = logits.astype(np.float64)
    vocab = logits.shape[-1]
    on, off = 1 - label_smoothing, label_smoothing / (vocab - 1)
    q = np.full(logits.shape, off)
    np.put_along_axis(q, targets[..., None], on, axis=-1)
    m = logits.max(-1, keepdims=True)
    log_z = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    log_p = logits - log_z[..., None]
    entropy = -np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0), axis=-1)
    per_token = -(q * log_p).sum(-1) - entropy + z_loss * log_z**2
    return (per_token * weights).sum(), (z_loss * log_z**2 * weights).sum()


@pytest.mark.parametrize("label_smoothing,z_loss", [(0.0, 0.0), (0.1, 1e-4), (0.3, 1e-2)])
def test_weighted_cross_entropy_matches_numpy(label_smoothing, z_loss):
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(3, 5))
    weights = rng.uniform(size=(3, 5)).astype(np.float32) * (rng.uniform(size=(3, 5)) > 0.3)
    loss, z, weight_sum = compute_weighted_cross_entropy(
        jnp.asarray(logits),
        jnp.asarray(targets),
        jnp.asarray(weights),
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        loss_normalizing_factor=4.0,
    )
    want_loss, want_z = _np_weighted_ce(logits, targets, weights, label_smoothing, z_loss)
    np.testing.assert_allclose(float(loss), want_loss / 4.0, rtol=1e-5)
    np.testing.assert_allclose(float(z), want_z / 4.0, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(float(weight_sum), weights.sum(), rtol=1e-6)


def test_special_loss_normalizing_factors():
    targets = np.array([[5, 6, 1, 0], [7, 1, 8, 1]])
    weights = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.float32)
    batch = {"decoder_target_tokens": jnp.asarray(targets)}
    factor, _ = loss_normalizing_factor_and_weights("NUM_REAL_TARGET_TOKENS", batch)
    assert float(factor) == 7.0  # non-padding targets when no weights are given
    factor, _ = loss_normalizing_factor_and_weights("num_total_target_tokens", batch)
    assert float(factor) == 8.0
    # Row 1 packs two sequences (2 and 2 tokens): each token weighs 1/len(sequence).
    packed = {
        "decoder_target_tokens": jnp.asarray(targets),
        "decoder_loss_weights": jnp.asarray(weights),
        "decoder_segment_ids": jnp.asarray([[1, 1, 1, 0], [1, 1, 2, 2]]),
    }
    factor, w = loss_normalizing_factor_and_weights("AVERAGE_PER_SEQUENCE", packed)
    np.testing.assert_allclose(np.asarray(w), [[1 / 3, 1 / 3, 1 / 3, 0], [0.5, 0.5, 0.5, 0.5]])
    np.testing.assert_allclose(float(factor), 3.0, rtol=1e-6)
    with pytest.raises(ValueError, match="loss_normalizing_factor"):
        loss_normalizing_factor_and_weights("PER_BANANA", batch)


def test_model_loss_and_score_against_log_softmax(tiny_config, tiny_params, tiny_batch):
    model = EncoderDecoderModel(
        tiny_config,
        z_loss=1e-3,
        label_smoothing=0.1,
        loss_normalizing_factor="NUM_REAL_TARGET_TOKENS",
    )
    logits = np.asarray(jax.jit(model.compute_logits)(tiny_params, tiny_batch))
    targets = np.asarray(tiny_batch["decoder_target_tokens"])
    weights = np.asarray(tiny_batch["decoder_loss_weights"]).astype(np.float64)

    loss, metrics = jax.jit(model.loss)(tiny_params, tiny_batch)
    want_loss, want_z = _np_weighted_ce(logits, targets, weights, 0.1, 1e-3)
    np.testing.assert_allclose(float(loss), want_loss / weights.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["z_loss"]), want_z / weights.sum(), rtol=1e-4)
    np.testing.assert_allclose(
        float(metrics["cross_ent_loss"]), (want_loss - want_z) / weights.sum(), rtol=1e-5
    )
    accuracy = ((logits.argmax(-1) == targets) * weights).sum() / weights.sum()
    np.testing.assert_allclose(float(metrics["accuracy"]), accuracy, rtol=1e-6)
    assert float(metrics["weight_sum"]) == weights.sum()

    scores = np.asarray(jax.jit(model.score_batch)(tiny_params, tiny_batch))
    x = logits.astype(np.float64)
    log_p = (
        x
        - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - x.max(-1, keepdims=True)
    )
    token_lp = np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(scores, (token_lp * weights).sum(-1), rtol=1e-5)


def test_dropout_only_with_rng(tiny_config, tiny_params, tiny_batch):
    model = EncoderDecoderModel(dataclasses.replace(tiny_config, dropout_rate=0.3))
    logits = jax.jit(model.compute_logits)
    plain = np.asarray(logits(tiny_params, tiny_batch))
    again = np.asarray(logits(tiny_params, tiny_batch))
    np.testing.assert_array_equal(plain, again)
    dropped = jax.jit(lambda p, b, r: model.compute_logits(p, b, dropout_rng=r))
    d1 = np.asarray(dropped(tiny_params, tiny_batch, jax.random.PRNGKey(1)))
    d2 = np.asarray(dropped(tiny_params, tiny_batch, jax.random.PRNGKey(2)))
    assert np.abs(d1 - plain).max() > 1e-3
    assert np.abs(d1 - d2).max() > 1e-3


# Parameter counts of the published checkpoints (Hugging Face `num_parameters()` of t5-small,
# t5-base, google/t5-v1_1-small, google/t5-v1_1-base, google/mt5-small, google/byt5-small).
PUBLISHED_PARAMS = {
    "t5/small": 60_506_624,
    "t5/base": 222_903_552,
    "t5_1_1/small": 76_961_152,
    "t5_1_1/base": 247_577_856,
    "flan_t5/small": 76_961_152,
    "mt5/small": 300_176_768,
    "byt5/small": 299_637_760,
}


REPO_GIN = pathlib.Path(__file__).resolve().parents[2] / "gin"


def _gin_model(files: list[str]) -> EncoderDecoderModel:
    gin.clear_config()
    gin.add_config_file_search_path(str(REPO_GIN))
    gin.parse_config_files_and_bindings(files, [])
    try:
        return gin.query_parameter("%MODEL").scoped_configurable_fn()
    finally:
        gin.clear_config()


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_gin_sizes_give_published_parameter_counts(name):
    model = _gin_model([f"models/{name}.gin"])
    shapes = _flat(model.param_shapes())
    assert sum(int(np.prod(v.shape)) for v in shapes.values()) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("family", ["t5", "t5_1_1", "flan_t5", "mt5", "umt5", "byt5"])
def test_every_family_has_every_size(family):
    sizes = {p.stem for p in (REPO_GIN / "models" / family).glob("*.gin")}
    assert {"architecture", "tiny", "small", "base", "large", "xl", "xxl"} <= sizes
    tiny = _gin_model([f"models/{family}/tiny.gin", "peft/lora.gin"])
    assert (tiny.config.vocab_size, tiny.config.emb_dim, tiny.config.num_encoder_layers) == (
        384,
        64,
        2,
    )
    assert tiny.lora is not None and tiny.lora.targets == ("query", "value")
    assert tiny.config.per_layer_relpos_bias == (family == "umt5")
    assert tiny.config.logits_via_embedding == (family == "t5")
    assert _gin_model([f"models/{family}/tiny.gin", "peft/full_finetune.gin"]).lora is None


def test_relative_position_bias_per_example_positions_match_shared():
    module = RelativePositionBias(num_heads=3, num_buckets=32, max_distance=128)
    pos = jnp.arange(10)[None, :]
    variables = module.init(jax.random.PRNGKey(0), pos, pos, bidirectional=True)
    shared = module.apply(variables, pos, pos, bidirectional=True)
    batched = module.apply(
        variables, jnp.tile(pos, (2, 1)), jnp.tile(pos, (2, 1)), bidirectional=True
    )
    assert shared.shape == (1, 3, 10, 10) and batched.shape == (2, 3, 10, 10)
    np.testing.assert_array_equal(np.asarray(batched), np.repeat(np.asarray(shared), 2, axis=0))
    table = np.asarray(variables["params"]["rel_embedding"].unbox())
    assert shared[0, 1, 2, 5] == table[1, 16 + 3]  # key 3 ahead of the query: bucket 16 + 3
