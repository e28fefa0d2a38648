"""Scanned layers, rematerialisation, activation sharding and the precision knobs (tiny config).

The references are the unrolled, non-rematerialised network: a scanned stack must give the same
loss, gradients, logits and decodes once its parameters are stacked (`stack_layers`), and every
remat policy the same loss and gradients as none.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fiat_t5x.models import presets
from fiat_t5x.models.checkpoints import load_t5x_params
from fiat_t5x.models.checkpoints.scanned import stack_layers, unstack_layers
from fiat_t5x.models.checkpoints.tree import CheckpointError
from fiat_t5x.models.lora import LoraConfig, split_lora
from fiat_t5x.models.model import EncoderDecoderModel
from fiat_t5x.training.partitioning import STANDARD_LOGICAL_AXIS_RULES

from .conftest import make_batch

LORA = LoraConfig(rank=4, alpha=8.0, targets=("query", "value", "wo"))  # conftest's tiny_lora


def _flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def _unflat(flat):
    return traverse_util.unflatten_dict(flat, sep="/")


def _packed_batch(
    rng: np.random.Generator, rows: int = 2, encoder_length: int = 6
) -> dict[str, jnp.ndarray]:
    """Two short examples per row (segment ids, per-example positions), as SeqIO packs them:
    `[rows, 2 * encoder_length]` inputs, `[rows, 8]` targets."""
    single = make_batch(rng, batch_size=2 * rows, encoder_length=encoder_length, decoder_length=4)
    packed = {}
    for key in ("encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens"):
        packed[key] = jnp.concatenate([single[key][0::2], single[key][1::2]], axis=1)
    for prefix, key, length in (
        ("encoder", "encoder_input_tokens", encoder_length),
        ("decoder", "decoder_target_tokens", 4),
    ):
        real = np.asarray(single[key] > 0)
        segments = np.concatenate([real[0::2] * 1, real[1::2] * 2], axis=1)
        positions = np.tile(np.arange(length), 2)[None].repeat(rows, 0) * (segments > 0)
        packed[f"{prefix}_segment_ids"] = jnp.asarray(segments, jnp.int32)
        packed[f"{prefix}_positions"] = jnp.asarray(positions, jnp.int32)
    packed["decoder_loss_weights"] = (packed["decoder_target_tokens"] > 0).astype(jnp.int32)
    return packed


@pytest.fixture(scope="module")
def lora_params(tiny_lora_params) -> dict:
    """Unrolled tiny LoRA parameters with non-zero `lora_b`, so the adapters change the output."""
    params = _flat(tiny_lora_params)
    rng = np.random.default_rng(3)
    for path, value in params.items():
        if path.endswith("lora_b"):
            params[path] = jnp.asarray(rng.normal(0, 0.1, value.shape), value.dtype)
    return _unflat(params)


@pytest.fixture(scope="module")
def packed_batch() -> dict[str, jnp.ndarray]:
    """[4, 48] inputs: long enough that saved activations outweigh the tiny model's weights (the
    remat memory test reads the temporaries of the same compiles as the equality tests)."""
    return _packed_batch(np.random.default_rng(7), rows=4, encoder_length=24)


def _adapter_loss_and_grads(model: EncoderDecoderModel, params: dict, batch: dict):
    """Loss and gradient with respect to the LoRA factors (frozen base), as LoRA trains, and the
    compiled step's temporaries in bytes. Gradients of a scanned model come back unstacked."""
    adapters, frozen = split_lora(params)

    def loss(adapters, frozen, batch):
        return model.loss(_unflat({**_flat(frozen), **_flat(adapters)}), batch)[0]

    compiled = jax.jit(jax.value_and_grad(loss)).lower(adapters, frozen, batch).compile()
    loss_value, grads = compiled(adapters, frozen, batch)
    if model.config.scan_layers:
        grads = unstack_layers(grads)
    return loss_value, grads, compiled.memory_analysis().temp_size_in_bytes


@pytest.fixture(scope="module")
def adapter_step(lora_params, packed_batch):
    """`adapter_step(**knobs)`: `_adapter_loss_and_grads` of the tiny LoRA model with those
    `presets.tiny` knobs on `packed_batch`, compiled once per set of knobs in this module."""
    done = {}

    def run(**knobs):
        key = tuple(sorted(knobs.items()))
        if key not in done:
            model = EncoderDecoderModel(presets.tiny(**knobs), LORA)
            params = stack_layers(lora_params) if knobs.get("scan_layers") else lora_params
            done[key] = _adapter_loss_and_grads(model, params, packed_batch)
        return done[key]

    return run


@pytest.fixture(scope="module")
def unrolled_reference(adapter_step):
    """(loss, gradients) of the unrolled network without remat: what every variant must equal."""
    return adapter_step()[:2]


def _assert_trees_close(actual: dict, expected: dict, atol: float = 1e-5) -> None:
    actual, expected = _flat(actual), _flat(expected)
    assert actual.keys() == expected.keys()
    for path in expected:
        np.testing.assert_allclose(actual[path], expected[path], atol=atol, rtol=1e-4, err_msg=path)


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("axis", [1, 0])
def test_scanned_parameter_layout_and_logical_axes(axis):
    """Stacked params under `{stack}/layers/<same sub-path>`, a `layers` axis at param_scan_axis;
    umT5's per-layer bias and LoRA factors are stacked too (no compile: eval_shape)."""
    config = presets.tiny(scan_layers=True, param_scan_axis=axis, per_layer_relpos_bias=True)
    model = EncoderDecoderModel(config, LORA)
    shapes = {k: v.shape for k, v in _flat(model.param_shapes()).items()}
    axes = _flat(model.logical_axes())

    def stacked(shape):
        return shape[:axis] + (2,) + shape[axis:]

    expected = {
        "encoder/layers/attention/query/kernel": ((64, 64), ("embed", "joined_kv")),
        "encoder/layers/attention/query/lora_a": ((64, 4), ("embed", "lora_rank")),
        "decoder/layers/mlp/wo/lora_b": ((4, 64), ("lora_rank", "embed")),
        "decoder/layers/mlp/wi_0/kernel": ((64, 256), ("embed", "mlp")),
        "encoder/layers/pre_attention_layer_norm/scale": ((64,), ("embed",)),
        "decoder/layers/relpos_bias/rel_embedding": ((4, 32), ("heads", "relpos_buckets")),
    }
    for path, (shape, names) in expected.items():
        assert shapes[path] == stacked(shape), path
        assert axes[path] == names[:axis] + ("layers",) + names[axis:], path
    assert not any("layers_" in path for path in shapes)
    assert shapes["token_embedder/embedding"] == (384, 64)
    unrolled = EncoderDecoderModel(presets.tiny(per_layer_relpos_bias=True), LORA)
    unstacked = jax.eval_shape(lambda p: unstack_layers(p, axis), model.param_shapes())
    assert _flat(unstacked) == _flat(unrolled.param_shapes())


def test_stack_unstack_round_trip_numpy_jax_and_abstract(lora_params):
    stacked = stack_layers(lora_params)
    assert stacked["encoder"]["layers"]["mlp"]["wi_0"]["kernel"].shape == (64, 2, 256)
    _assert_trees_close(unstack_layers(stacked), lora_params, atol=0)
    as_numpy = jax.tree.map(np.asarray, lora_params)
    assert isinstance(
        stack_layers(as_numpy)["decoder"]["layers"]["mlp"]["wo"]["kernel"], np.ndarray
    )
    abstract = jax.eval_shape(lambda p: unstack_layers(stack_layers(p, 0), 0), lora_params)
    assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(jnp.shape, lora_params)


def test_stack_layers_rejects_layers_that_differ(lora_params):
    flat = _flat(lora_params)
    del flat["encoder/layers_1/attention/query/lora_a"]
    with pytest.raises(CheckpointError, match="layers_1 and encoder/layers_0 hold different"):
        stack_layers(_unflat(flat))
    flat = _flat(lora_params)
    flat = {k.replace("decoder/layers_1/", "decoder/layers_2/"): v for k, v in flat.items()}
    with pytest.raises(CheckpointError, match=r"layers are \[0, 2\]"):
        stack_layers(_unflat(flat))


def test_exports_of_a_scanned_run_name_each_layer(lora_params, tmp_path):
    """PEFT and HF exports unstack a scanned tree: the files equal the unscanned export's."""
    from safetensors.numpy import load_file

    from fiat_t5x.models.checkpoints import save_hf_t5, save_peft_adapter

    config = presets.tiny()
    stacked = stack_layers(lora_params)
    for name, tree in (("unscanned", lora_params), ("scanned", stacked)):
        save_peft_adapter(tree, config, LORA, str(tmp_path / name / "peft"))
        save_hf_t5(tree, config, str(tmp_path / name / "hf"), lora=LORA)
    for kind, file in (("peft", "adapter_model.safetensors"), ("hf", "model.safetensors")):
        expected = load_file(tmp_path / "unscanned" / kind / file)
        actual = load_file(tmp_path / "scanned" / kind / file)
        assert actual.keys() == expected.keys()
        for key in expected:
            np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


def test_lora_on_some_layers_of_a_scanned_stack_is_an_error():
    lora = LoraConfig(targets=(r"encoder/layers_0/attention/query",))
    model = EncoderDecoderModel(presets.tiny(scan_layers=True), lora)
    with pytest.raises(ValueError, match=r"in layers \[0\] only.*scan_layers=False"):
        model.param_shapes()


def test_config_rejects_unknown_knob_values():
    with pytest.raises(ValueError, match="remat_policy must be one of"):
        presets.tiny(remat_policy="some")
    with pytest.raises(ValueError, match="matmul_backward must be one of"):
        presets.tiny(matmul_backward="fast")
    with pytest.raises(ValueError, match="param_scan_axis must be 0 or 1"):
        presets.tiny(param_scan_axis=2)


# ----------------------------------------------------------------------------- equality


def test_scanned_equals_unrolled_loss_and_gradients(adapter_step, unrolled_reference):
    """Packed batch (per-example positions and segments), LoRA on q, v, wo; dropout off."""
    loss, grads, _ = adapter_step(scan_layers=True)
    ref_loss, ref_grads = unrolled_reference
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    _assert_trees_close(grads, ref_grads)


@pytest.mark.parametrize(
    ("policy", "scan"), [("full", True), ("dots_saveable", False), ("minimal", True)]
)
def test_remat_equals_no_remat_loss_and_gradients(policy, scan, adapter_step, unrolled_reference):
    loss, grads, _ = adapter_step(remat_policy=policy, scan_layers=scan)
    ref_loss, ref_grads = unrolled_reference
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    _assert_trees_close(grads, ref_grads)


def test_unscanned_t5x_checkpoint_in_a_scanned_umt5_style_model_gives_the_same_logits(
    shared_dir, tiny_logits_fn, tiny_model
):
    """The T5X fixture (unscanned) stacked into a scanned model reproduces its logits; and a
    umT5-style model (a bias table per layer) is equal scanned and unrolled."""
    params = load_t5x_params(
        str(shared_dir / "fixtures/t5x_tiny_checkpoint/legacy/checkpoint_1000")
    )
    batch = make_batch(np.random.default_rng(1))
    scanned = EncoderDecoderModel(presets.tiny(scan_layers=True, remat_policy="full"))
    np.testing.assert_allclose(
        jax.jit(scanned.compute_logits)(stack_layers(params), batch),
        tiny_logits_fn(params, batch),
        atol=2e-5,
    )
    unrolled_model = EncoderDecoderModel(presets.tiny(per_layer_relpos_bias=True))
    rng = np.random.default_rng(1)  # random weights without compiling an init
    umt5_params = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(0, 0.1, s.shape), s.dtype), unrolled_model.param_shapes()
    )
    scanned_model = EncoderDecoderModel(presets.tiny(per_layer_relpos_bias=True, scan_layers=True))
    packed = _packed_batch(np.random.default_rng(2))
    np.testing.assert_allclose(
        jax.jit(scanned_model.compute_logits)(stack_layers(umt5_params), packed),
        jax.jit(unrolled_model.compute_logits)(umt5_params, packed),
        atol=2e-5,
    )


def test_scanned_decoding_is_identical(lora_params, tiny_lora_model):
    """The scanned cache ([b, layers, ...]) decodes exactly what the unrolled one does. Beam
    search: it also reorders the cache between steps (greedy decoding is the same cache path
    without the reordering)."""
    batch = make_batch(np.random.default_rng(4), batch_size=3)
    scanned = EncoderDecoderModel(presets.tiny(scan_layers=True), LORA)
    kwargs = {"max_decode_length": 6, "method": "beam", "num_beams": 2}
    expected = tiny_lora_model.predict_batch(lora_params, batch, **kwargs)
    actual = scanned.predict_batch(stack_layers(lora_params), batch, **kwargs)
    np.testing.assert_array_equal(actual, expected)


def test_scanned_dropout_draws_a_different_mask_per_layer(tiny_params):
    model = EncoderDecoderModel(presets.tiny(scan_layers=True, dropout_rate=0.5))
    batch = make_batch(np.random.default_rng(5))

    @jax.jit
    def dropout_outputs(params):
        return model.module.apply(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            deterministic=False,
            rngs={"dropout": jax.random.PRNGKey(0)},
            capture_intermediates=lambda mdl, _: isinstance(mdl, nn.Dropout),
            mutable=["intermediates"],
        )[1]

    state = dropout_outputs(stack_layers(tiny_params))
    # The MLP's hidden dropout, stacked [b, layers, l, mlp]: which units each layer zeroed.
    hidden = state["intermediates"]["encoder"]["layers"]["mlp"]["Dropout_0"]["__call__"][0]
    kept = np.asarray(hidden != 0)
    assert kept.shape[1] == 2 and 0.3 < kept.mean() < 0.7
    assert (kept[:, 0] != kept[:, 1]).mean() > 0.3


# ----------------------------------------------------------------------------- memory and sharding


def test_full_remat_compiles_to_fewer_temporaries_than_none(adapter_step):
    """Relative, from XLA's own buffer assignment for the scanned LoRA steps the equality tests
    compiled. (XLA:CPU's scheduler hoists the recomputation of unrolled layers, so only scanned
    stacks show it here.)"""
    none = adapter_step(scan_layers=True)[2]
    full = adapter_step(scan_layers=True, remat_policy="full")[2]
    assert full < 0.6 * none, (full, none)


def test_activation_constraints_shard_the_compiled_program(tiny_params):
    """Under the rules and a 4x2 mesh, with every input replicated, the compiled program splits
    activations: logits come out [data, -, model] and the MLP hidden is [b/4, l, mlp/2] per device.
    Without the rules nothing tells XLA to split them."""
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
    model = EncoderDecoderModel(presets.tiny(scan_layers=True))
    params = stack_layers(tiny_params)
    batch = make_batch(np.random.default_rng(0), batch_size=8)
    replicated = NamedSharding(mesh, P())

    def compile_logits(rules):
        fn = jax.jit(
            lambda p, b: model.compute_logits(p, b),
            in_shardings=(jax.tree.map(lambda _: replicated, params), replicated),
        )
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return fn.lower(params, batch).compile()

    sharded = compile_logits(STANDARD_LOGICAL_AXIS_RULES)
    assert sharded.output_shardings.spec == P("data", None, "model")
    assert "f32[2,12,128]" in sharded.as_text()  # [batch/data, length, mlp/model]
    unconstrained = compile_logits(())
    assert unconstrained.output_shardings.spec == P()
    assert "f32[2,12,128]" not in unconstrained.as_text()


def test_constraint_leaves_a_dimension_the_mesh_axis_does_not_divide_whole():
    """A decode batch of 3 on data=4 stays whole instead of failing; 4 rows are split."""
    from fiat_t5x.models import activation_axes as act

    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("data", "model"))

    def output_spec(rows):
        fn = jax.jit(lambda x: act.constrain(x * 2, (act.BATCH, act.MLP)))
        with jax.set_mesh(mesh), nn.logical_axis_rules(STANDARD_LOGICAL_AXIS_RULES):
            return fn.lower(jnp.ones((rows, 6))).compile().output_shardings.spec

    assert output_spec(4) == P("data", "model")
    assert output_spec(3) == P(None, "model")


# ----------------------------------------------------------------------------- precision, kernels


def test_bf16_frozen_weights_train_fp32_lora_factors(lora_params, packed_batch, unrolled_reference):
    model = EncoderDecoderModel(presets.tiny(dtype="bfloat16", scan_layers=True), LORA)
    adapters, frozen = split_lora(stack_layers(lora_params))
    frozen = jax.tree.map(lambda x: x.astype(jnp.bfloat16), frozen)
    params = _unflat({**_flat(frozen), **_flat(adapters)})
    loss, grads, _ = _adapter_loss_and_grads(model, params, packed_batch)
    ref_loss, ref_grads = unrolled_reference
    assert loss.dtype == jnp.float32
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-2)
    ref = np.concatenate([np.ravel(g) for g in jax.tree.leaves(_flat(ref_grads))])
    got = np.concatenate([np.ravel(g) for g in jax.tree.leaves(_flat(grads))])
    assert np.corrcoef(ref, got)[0, 1] > 0.99


def test_matmul_backward_knob_picks_the_custom_vjp_only_where_asked(tiny_batch):
    def custom_calls(matmul_backward):
        model = EncoderDecoderModel(presets.tiny(matmul_backward=matmul_backward))
        jaxpr = jax.make_jaxpr(lambda p: model.loss(p, tiny_batch)[0])(model.param_shapes())
        return str(jaxpr).count("custom_vjp_call")

    assert custom_calls("autodiff") == 0
    assert custom_calls("custom") > 0
    assert custom_calls("auto") == (custom_calls("custom") if jax.default_backend() == "cpu" else 0)


def test_fused_attention_matches_einsum_attention(lora_params, packed_batch, tiny_lora_model):
    fused = EncoderDecoderModel(presets.tiny(fused_attention=True), LORA)
    np.testing.assert_allclose(
        jax.jit(fused.compute_logits)(lora_params, packed_batch),
        jax.jit(tiny_lora_model.compute_logits)(lora_params, packed_batch),
        atol=2e-5,
    )
    dropout = EncoderDecoderModel(presets.tiny(fused_attention=True, dropout_rate=0.1))
    with pytest.raises(ValueError, match="fused_attention has no dropout"):
        jax.eval_shape(
            lambda p: dropout.compute_logits(p, packed_batch, dropout_rng=jax.random.PRNGKey(0)),
            dropout.param_shapes(),
        )
