"""The train step: LoRA-only updates over a real T5X base, sharding invariance, microbatching."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fiat_t5x.models import presets
from fiat_t5x.models.checkpoints import load_t5x_params
from fiat_t5x.models.lora import LoraConfig
from fiat_t5x.models.model import EncoderDecoderModel
from fiat_t5x.training import optimizers, partitioning
from fiat_t5x.training.initial_params import initial_params
from fiat_t5x.training.trainer import Trainer
from tests.training.training_helpers import make_batch, tiny_model, tree_equal


def _trainer(model, devices=None, num_partitions=1, microbatches=1, selector=None, opt=optax.adamw):
    part = partitioning.Partitioner(num_partitions=num_partitions, devices=devices)
    schedule = optimizers.constant_schedule(1e-2)
    return Trainer(model, part, opt(schedule), schedule, selector, num_microbatches=microbatches)


def _steps(trainer, state, frozen, batch, steps):
    losses = []
    for _ in range(steps):
        state, metrics = trainer.train_step(
            state, frozen, trainer.partitioner.host_batch_to_global(batch)
        )
        losses.append(float(metrics["loss"]))
    return state, losses


def _run(trainer, params, batch, steps):
    state, frozen = trainer.create_state(params)
    state, losses = _steps(trainer, state, frozen, batch, steps)
    return state, frozen, losses


@pytest.fixture(scope="module")
def lora_run(fixture_checkpoint):
    """Three LoRA steps on top of the real T5X fixture checkpoint, on one device."""
    model = tiny_model()
    trainer = _trainer(model, devices=jax.devices()[:1])
    state, frozen = trainer.initial_state(fixture_checkpoint, seed=0)
    before = jax.device_get(state.params)
    state, losses = _steps(trainer, state, frozen, make_batch(), 3)
    return model, before, trainer, state, frozen, losses


def test_frozen_weights_equal_the_initial_checkpoint_bit_for_bit(lora_run, fixture_checkpoint):
    _, _, _, state, frozen, _ = lora_run
    base = optimizers.flatten_params(load_t5x_params(fixture_checkpoint))
    flat_frozen = optimizers.flatten_params(jax.device_get(frozen))
    assert sorted(flat_frozen) == sorted(base)  # every base weight is frozen, none trained
    for path, value in base.items():
        assert np.asarray(flat_frozen[path]).tobytes() == np.asarray(value).tobytes(), path


def test_only_lora_parameters_changed_and_only_they_have_optimizer_state(lora_run):
    _, params, _, state, _, _ = lora_run
    before = optimizers.flatten_params(params)
    after = optimizers.flatten_params(jax.device_get(state.params))
    assert after and all(p.endswith(("/lora_a", "/lora_b")) for p in after)
    assert set(after) == {p for p in before if p.endswith(("/lora_a", "/lora_b"))}
    assert all(not np.array_equal(after[p], before[p]) for p in after if p.endswith("lora_b"))
    # Adam keeps mu and nu per trainable leaf (+ scalar counts): nothing for the frozen weights.
    arrays = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert len(arrays) == 2 * len(after)
    assert sum(x.size for x in arrays) == 2 * sum(v.size for v in after.values())
    assert int(state.step) == 3


def test_first_loss_is_the_base_model_loss(lora_run, fixture_checkpoint):
    # lora_b starts at zero, so step 0 sees exactly the pretrained model.
    _, _, _, _, _, losses = lora_run
    base_model = tiny_model(lora=False)
    loss, _ = jax.jit(base_model.loss)(load_t5x_params(fixture_checkpoint), make_batch())
    assert losses[0] == pytest.approx(float(loss), rel=1e-5)
    assert losses[-1] < losses[0]


def test_frozen_weights_held_in_bf16_train_and_stay_bf16_and_unchanged(fixture_checkpoint):
    model = tiny_model()
    selector = optimizers.TrainableSelector(frozen_dtype="bfloat16")
    trainer = _trainer(model, devices=jax.devices()[:1], selector=selector)
    state, frozen = trainer.initial_state(fixture_checkpoint, seed=0)
    initial_lora = optimizers.flatten_params(jax.device_get(state.params))
    state, losses = _steps(trainer, state, frozen, make_batch(), 3)
    base = optimizers.flatten_params(load_t5x_params(fixture_checkpoint))
    flat_frozen = optimizers.flatten_params(jax.device_get(frozen))
    assert flat_frozen and set(flat_frozen) == set(base)
    held = {p for p in flat_frozen if optimizers.held_in_compute_dtype(p)}
    assert {p.rsplit("/", 1)[-1] for p in held} == {"kernel", "embedding"}
    for path, value in flat_frozen.items():
        # Kernels and the embedding as the bf16 copy of the base, untouched; norm scales and
        # the position-bias table, read in fp32, as they are.
        dtype = jnp.bfloat16 if path in held else np.float32
        assert value.dtype == dtype, path
        assert value.tobytes() == np.asarray(base[path]).astype(dtype).tobytes(), path
    trained = optimizers.flatten_params(jax.device_get(state.params))
    assert all(v.dtype == np.float32 for v in trained.values())
    assert set(trained) == set(initial_lora)
    assert all(
        not np.array_equal(trained[p], initial_lora[p]) for p in trained if p.endswith("lora_b")
    )
    # Step 0 computes with the bf16-rounded base (lora_b = 0), i.e. the fp32 model's loss on
    # weights rounded to bf16; and training lowers it.
    rounded = {
        p: np.asarray(v).astype(jnp.bfloat16 if p in held else np.float32).astype(np.float32)
        for p, v in base.items()
    }
    rounded.update(initial_lora)
    loss, _ = jax.jit(model.loss)(optimizers.unflatten_params(rounded), make_batch())
    assert losses[0] == pytest.approx(float(loss), rel=1e-5)
    assert losses[-1] < losses[0]


def test_a_bf16_run_holds_its_frozen_kernels_in_bf16_and_computes_the_same(fixture_checkpoint):
    """The default selector holds the frozen kernels in the compute dtype: a bf16 run rounds its
    base once at start-up instead of in every step, and every value is what it was with the
    base in fp32 (the network rounds those weights to bf16 before any use)."""
    model = EncoderDecoderModel(presets.tiny(dtype="bfloat16"), LoraConfig())
    runs = {}
    fp32_base = optimizers.TrainableSelector(frozen_dtype="float32")
    for name, selector in (("default", None), ("fp32 base", fp32_base)):
        trainer = _trainer(model, devices=jax.devices()[:1], selector=selector)
        state, frozen = trainer.initial_state(fixture_checkpoint, seed=0)
        state, losses = _steps(trainer, state, frozen, make_batch(), 2)
        runs[name] = (frozen, jax.device_get(state.params), losses)
    frozen = optimizers.flatten_params(runs["default"][0])
    fp32 = optimizers.flatten_params(runs["fp32 base"][0])
    assert frozen["decoder/layers_0/mlp/wo/kernel"].dtype == jnp.bfloat16
    assert frozen["token_embedder/embedding"].dtype == jnp.bfloat16
    assert frozen["decoder/decoder_norm/scale"].dtype == np.float32
    assert fp32["decoder/layers_0/mlp/wo/kernel"].dtype == np.float32
    assert sum(v.nbytes for v in frozen.values()) < 0.51 * sum(v.nbytes for v in fp32.values())
    assert runs["default"][2] == runs["fp32 base"][2]  # the losses, to the last bit
    assert tree_equal(runs["default"][1], runs["fp32 base"][1])  # the trained LoRA factors


def test_gradients_match_autodiff_of_the_full_tree():
    model = tiny_model()
    params = jax.device_get(model.init_params(jax.random.PRNGKey(1)))
    params = optimizers.flatten_params(params)
    # give lora_b non-zero values so lora_a gets a gradient too
    params = {k: (v + 0.01 if k.endswith("lora_b") else v) for k, v in params.items()}
    params = optimizers.unflatten_params(params)
    batch = make_batch(seed=3)
    trainer = _trainer(model, devices=jax.devices()[:1])
    trainable, frozen = trainer.selector.split(params)
    _, _, grads = jax.jit(trainer._loss_and_grads)(trainable, frozen, batch, None)
    full = jax.jit(jax.grad(lambda p: model.loss(p, batch)[0]))(params)
    flat_full = optimizers.flatten_params(full)
    for path, g in optimizers.flatten_params(grads).items():
        np.testing.assert_allclose(g, flat_full[path], rtol=2e-4, atol=1e-6, err_msg=path)


def test_same_losses_on_one_device_and_on_a_4x2_mesh():
    model = tiny_model()
    params = jax.device_get(model.init_params(jax.random.PRNGKey(2)))
    batch = make_batch(seed=5)
    one = _trainer(model, devices=jax.devices()[:1])
    mesh = _trainer(model, num_partitions=2)
    assert dict(mesh.partitioner.mesh.shape) == {"data": 4, "model": 2}
    s1, _, l1 = _run(one, params, batch, 3)
    s8, _, l8 = _run(mesh, params, batch, 3)
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves(jax.device_get(s1.params)),
        jax.tree.leaves(jax.device_get(s8.params)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "factor,num_partitions,microbatches",
    [(None, None, 4), ("NUM_REAL_TARGET_TOKENS", 2, 2)],  # one device; a data 4 x model 2 mesh
)
def test_microbatching_gives_the_full_batch_update(factor, num_partitions, microbatches):
    model = tiny_model(loss_normalizing_factor=factor)
    params = jax.device_get(model.init_params(jax.random.PRNGKey(4)))
    batch = make_batch(rows=8, seed=7)
    # SGD: the update is the gradient itself, so this compares accumulated gradients.
    one = jax.devices()[:1]
    full_state, _, full_loss = _run(_trainer(model, devices=one, opt=optax.sgd), params, batch, 1)
    where = dict(devices=one) if num_partitions is None else dict(num_partitions=num_partitions)
    micro = _trainer(model, microbatches=microbatches, opt=optax.sgd, **where)
    micro_state, _, micro_loss = _run(micro, params, batch, 1)
    assert micro_loss[0] == pytest.approx(full_loss[0], rel=1e-5)
    full_p = optimizers.flatten_params(jax.device_get(full_state.params))
    micro_p = optimizers.flatten_params(jax.device_get(micro_state.params))
    for path in full_p:
        np.testing.assert_allclose(micro_p[path], full_p[path], rtol=1e-5, atol=1e-7, err_msg=path)
    assert not tree_equal(
        full_p, optimizers.flatten_params(optimizers.TrainableSelector().split(params)[0])
    )


def test_initial_params_reject_a_checkpoint_of_another_shape(fixture_checkpoint):
    from fiat_t5x.models.lora import LoraConfig
    from fiat_t5x.models.model import EncoderDecoderModel

    wrong = EncoderDecoderModel(presets.tiny(mlp_dim=128), LoraConfig())
    with pytest.raises(ValueError, match="does not fit the model config"):
        initial_params(
            wrong, partitioning.Partitioner(devices=jax.devices()[:1]), fixture_checkpoint
        )


def test_lora_dropout_applies_in_training_without_network_dropout_and_not_in_eval():
    """LoRA's dropout is used although DROPOUT_RATE is 0: the step always gets a per-step key
    (the model decides what uses it); evaluation never drops anything."""
    from fiat_t5x.models.lora import LoraConfig
    from fiat_t5x.models.model import EncoderDecoderModel

    def model(dropout: float) -> EncoderDecoderModel:
        return EncoderDecoderModel(presets.micro(dropout_rate=0.0), LoraConfig(dropout=dropout))

    params = optimizers.flatten_params(
        jax.device_get(model(0.0).init_params(jax.random.PRNGKey(6)))
    )
    params = {k: (v + 0.05 if k.endswith("lora_b") else v) for k, v in params.items()}
    params = optimizers.unflatten_params(params)
    batch = make_batch(seed=9)
    one = jax.devices()[:1]
    plain, plain_frozen, plain_losses = _run(_trainer(model(0.0), devices=one), params, batch, 2)
    dropped_trainer = _trainer(model(0.9), devices=one)
    dropped, dropped_frozen, dropped_losses = _run(dropped_trainer, params, batch, 2)
    assert plain_losses[0] != dropped_losses[0]
    assert not tree_equal(jax.device_get(plain.params), jax.device_get(dropped.params))
    # Evaluation of the same parameters: no dropout, so both models give the same loss.
    global_batch = dropped_trainer.partitioner.host_batch_to_global(batch)
    eval_dropped = dropped_trainer.eval_step(dropped, dropped_frozen, global_batch)
    again = dropped_trainer.eval_step(dropped, dropped_frozen, global_batch)
    reference, _ = jax.jit(model(0.0).loss)(
        optimizers.merge_params(jax.device_get(dropped.params), jax.device_get(dropped_frozen)),
        batch,
    )
    assert float(eval_dropped["loss"]) == float(again["loss"])
    assert float(eval_dropped["loss"]) == pytest.approx(float(reference), rel=1e-5)
