"""Checkpoints: exact round trip, keep K, damaged checkpoints skipped (never loaded)."""

import logging
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fiat_t5x.training import partitioning
from fiat_t5x.training.checkpointing import CheckpointManager, CheckpointMismatch, checksums
from fiat_t5x.training.train_state import TrainState


def _state(seed: int, step: int) -> TrainState:
    rng = np.random.default_rng(seed)
    params = {
        "q": {"lora_a": jnp.asarray(rng.normal(size=(8, 2)), jnp.float32)},
        "v": {"lora_b": jnp.asarray(rng.normal(size=(2, 8)), jnp.float32)},
    }
    state = TrainState.create(params, optax.adam(1e-3))
    return state.replace(step=jnp.asarray(step, jnp.int32))


def _leaves_equal(a, b):
    return all(
        np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_round_trip_is_exact_and_keeps_the_data_position(tmp_path):
    manager = CheckpointManager(str(tmp_path), period=10, keep=3)
    state = _state(0, 10)
    assert manager.save(state, data_position=123)
    restored, position = manager.restore_latest(_state(1, 0))
    assert position == 123
    assert int(restored.step) == 10
    assert _leaves_equal(restored.as_dict(), state.as_dict())
    assert type(restored.opt_state) is type(state.opt_state)


def test_period_and_keep(tmp_path):
    manager = CheckpointManager(str(tmp_path), period=2, keep=2)
    saved = [manager.save(_state(s, s), s) for s in range(1, 7)]
    assert saved == [False, True, False, True, False, True]
    assert manager.save(_state(7, 7), 7, force=True)
    assert manager.all_steps() == [6, 7]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_6", "checkpoint_7"]


def _data_files(step_dir: pathlib.Path):
    return [
        p
        for p in (step_dir / "state").rglob("*")
        if p.is_file() and p.stat().st_size > 0 and "/d/" in str(p)
    ]


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_damaged_latest_checkpoint_is_skipped_with_a_warning(tmp_path, caplog, damage):
    manager = CheckpointManager(str(tmp_path), period=1, keep=5)
    good, bad = _state(0, 1), _state(1, 2)
    manager.save(good, 11)
    manager.save(bad, 22)
    step_dir = tmp_path / "checkpoint_2"
    if damage == "truncate":
        files = _data_files(step_dir)
        assert files
        for f in files:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:  # bytes that still decode but are not what was saved: checksums catch it
        meta = step_dir / "meta" / "metadata"
        text = meta.read_text()
        meta.write_text(text.replace('"checksums": [[', '"checksums": [[1'))
    with caplog.at_level(logging.WARNING):
        restored, position = CheckpointManager(str(tmp_path)).restore_latest(_state(9, 0))
    assert position == 11 and int(restored.step) == 1
    assert _leaves_equal(restored.params, good.params)
    assert any(
        "skipping damaged checkpoint" in r.message and "checkpoint_2" in r.message
        for r in caplog.records
    )


def test_no_checkpoint_means_none(tmp_path):
    assert CheckpointManager(str(tmp_path)).restore_latest(_state(0, 0)) is None


def test_checksums_do_not_depend_on_sharding():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)), jnp.float32)
    mesh = partitioning.create_mesh(2)
    sharded = jax.device_put(x, NamedSharding(mesh, P("data", "model")))
    assert np.array_equal(checksums(x), checksums(sharded))
    assert not np.array_equal(checksums(x), checksums(x.at[0, 0].add(1e-6)))


def test_restore_latest_params_returns_the_saved_params_without_a_template(tmp_path, caplog):
    manager = CheckpointManager(str(tmp_path), period=1, keep=5)
    older, newer = _state(0, 1), _state(1, 2)
    manager.save(older, 5)
    manager.save(newer, 6)
    params, step = CheckpointManager(str(tmp_path)).restore_latest_params()
    assert step == 2
    assert jax.tree.structure(params) == jax.tree.structure(newer.params)
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))  # host arrays
    assert _leaves_equal(params, newer.params)
    # A damaged newest checkpoint is skipped here too: the older one's params come back.
    for f in _data_files(tmp_path / "checkpoint_2"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        params, step = CheckpointManager(str(tmp_path)).restore_latest_params()
    assert step == 1 and _leaves_equal(params, older.params)
    assert any(
        f"skipping damaged checkpoint {tmp_path}/checkpoint_2:" in r.message for r in caplog.records
    )
    assert (tmp_path / "checkpoint_2").is_dir()  # a reader moves nothing


def test_restore_latest_params_of_an_empty_dir_is_none(tmp_path):
    assert CheckpointManager(str(tmp_path)).restore_latest_params() is None


def _truncate(step_dir: pathlib.Path) -> list[pathlib.Path]:
    files = _data_files(step_dir)
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return files


def test_a_damaged_checkpoint_is_moved_aside_and_its_step_can_be_saved_again(tmp_path, caplog):
    manager = CheckpointManager(str(tmp_path), period=1, keep=5)
    good, bad = _state(0, 1), _state(1, 2)
    manager.save(good, 11)
    manager.save(bad, 22)
    damaged = _truncate(tmp_path / "checkpoint_2")
    manager = CheckpointManager(str(tmp_path), period=1, keep=5)
    with caplog.at_level(logging.WARNING):
        restored, position = manager.restore_latest(_state(9, 0))
    assert int(restored.step) == 1 and position == 11
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("checkpoint_2.damaged-")]
    assert not (tmp_path / "checkpoint_2").exists()
    assert {p.name for p in damaged} <= {p.name for p in aside.rglob("*")}  # kept, not deleted
    (warning,) = [r.message for r in caplog.records if "damaged checkpoint" in r.message]
    # The reason in full: the file that failed, and where the checkpoint went.
    assert any(f.name in warning for f in damaged), warning
    assert str(aside) in warning
    # Retrained, step 2 is saved again (it used to be refused as "already there").
    assert manager.save(_state(3, 2), 22)
    assert manager.all_steps() == [1, 2]
    restored, _ = CheckpointManager(str(tmp_path)).restore_latest(_state(9, 0))
    assert _leaves_equal(restored.params, _state(3, 2).params)


def _lora_state(rank: int, optimizer=None) -> TrainState:
    params = {"q": {"lora_a": jnp.ones((8, rank), jnp.float32)}, "v": {"kernel": jnp.ones((8,))}}
    return TrainState.create(params, optimizer or optax.adam(1e-3))


def test_another_configuration_stops_with_old_and_new_shapes_and_moves_nothing(tmp_path):
    CheckpointManager(str(tmp_path), period=1).save(_lora_state(8).replace(step=jnp.asarray(3)), 7)
    before = sorted(os.listdir(tmp_path))
    manager = CheckpointManager(str(tmp_path))
    with pytest.raises(CheckpointMismatch) as rank:
        manager.restore_latest(_lora_state(4))
    message = str(rank.value)
    assert "params/q/lora_a: checkpoint (8, 8) float32 vs now (8, 4) float32" in message
    assert "optimizer state" in message  # Adam's moments follow the parameter's shape
    assert "new MODEL_DIR" in message and "--gin.START_OVER_ON_MISMATCH=True" in message
    with pytest.raises(CheckpointMismatch, match=r"optimizer state: checkpoint 5 arrays"):
        manager.check_fits(_lora_state(8, optax.sgd(1e-3)).as_dict())
    assert sorted(os.listdir(tmp_path)) == before
    manager.check_fits(_lora_state(8).as_dict())  # the same configuration fits


def test_start_over_on_mismatch_moves_every_checkpoint_aside(tmp_path):
    manager = CheckpointManager(str(tmp_path), period=1)
    for step in (1, 2):
        manager.save(_lora_state(8).replace(step=jnp.asarray(step)), step)
    manager.check_fits(_lora_state(4).as_dict(), start_over_on_mismatch=True)
    assert manager.all_steps() == []
    names = sorted(p.name.split("-")[0] for p in tmp_path.iterdir())
    assert names == ["checkpoint_1.superseded", "checkpoint_2.superseded"]
    assert manager.restore_latest(_lora_state(4)) is None


def test_save_uses_the_step_it_is_given_without_reading_the_state(tmp_path):
    manager = CheckpointManager(str(tmp_path), period=10)
    state = _state(0, 4)
    state.step.delete()  # any read of the step (a host sync) would now raise
    assert not manager.save(state, 4, step=4)


def test_readers_restore_params_onto_a_mesh(tmp_path):
    state = _state(0, 1)
    CheckpointManager(str(tmp_path), period=1).save(state, 0)
    mesh = partitioning.create_mesh(2)  # data 4 x model 2
    asked = {}

    def sharding_for(path, shape):
        asked[path] = shape
        spec = P("data", "model") if shape[0] % 4 == 0 else P("model", "data")
        return NamedSharding(mesh, spec)

    params, step = CheckpointManager(str(tmp_path)).restore_latest_params(sharding_for)
    assert step == 1 and _leaves_equal(params, state.params)
    assert asked == {"q/lora_a": (8, 2), "v/lora_b": (2, 8)}
    assert params["q"]["lora_a"].sharding.spec == P("data", "model")
    assert params["v"]["lora_b"].sharding.spec == P("model", "data")
