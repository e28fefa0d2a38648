"""Microbatching lowers the memory per device and keeps data parallelism (8 fake devices, the
tiny config, compiled ahead of time with abstract shapes: no step runs)."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from fiat_t5x.training import optimizers
from fiat_t5x.training.partitioning import Partitioner
from fiat_t5x.training.trainer import Trainer
from tests.training.training_helpers import tiny_model

ROWS, ENCODER, DECODER = 64, 64, 32


def _compiled_step(num_microbatches: int):
    partitioner = Partitioner(num_partitions=1)  # data 8
    schedule = optimizers.constant_schedule(1e-3)
    trainer = Trainer(
        tiny_model(), partitioner, optax.adamw(schedule), schedule, None, num_microbatches
    )
    sharding = partitioner.batch_sharding()
    batch = {
        name: jax.ShapeDtypeStruct((ROWS, length), np.int32, sharding=sharding)
        for name, length in (
            ("encoder_input_tokens", ENCODER),
            ("decoder_input_tokens", DECODER),
            ("decoder_target_tokens", DECODER),
            ("decoder_loss_weights", DECODER),
        )
    }
    return trainer.compile_train_step(trainer.abstract_state(), trainer.frozen_shapes, batch)


@pytest.fixture(scope="module")
def steps():
    return {m: _compiled_step(m) for m in (1, 4)}


def test_microbatches_lower_the_temporaries_per_device(steps):
    full = steps[1].memory_analysis().temp_size_in_bytes
    micro = steps[4].memory_analysis().temp_size_in_bytes
    assert micro < 0.5 * full, (micro, full)


def test_each_microbatch_stays_split_over_data(steps):
    """Rows never move between devices: no all-gather (only the gradient all-reduce)."""
    text = steps[4].as_text()
    assert "all-gather" not in text and "all-to-all" not in text
    assert "all-reduce" in text
