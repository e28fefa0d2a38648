"""Regression test for the SeqIO evaluation crash fixed in 004492c.

`Evaluation.predict_fn` once handed SeqIO predictions trimmed at EOS; SeqIO stacks them, so as
soon as the model emitted EOS at different positions for different examples the ragged rows
broke the metric computation. Here a scripted model emits EOS at a different position for every
example (and junk after it), and the task's metric must come out with the value worked out by
hand from the script.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from fiat_t5x.models.decoding import EOS_ID
from fiat_t5x.training import optimizers
from fiat_t5x.training.evaluation import Evaluation
from fiat_t5x.training.partitioning import Partitioner
from fiat_t5x.training.train_state import TrainState
from fiat_t5x.training.trainer import Trainer

TASK = "evaluation_regression_ragged_eos"
VOCAB = seqio.ByteVocabulary()
# Targets of lengths 1..7 bytes: the scripted model's EOS lands at a different position in each.
TARGETS = ["a" * n for n in range(1, 8)]
JUNK = VOCAB.encode("z")[0]


def _exact_match(targets: list[str], predictions: list[str]) -> dict[str, float]:
    return {"exact_match": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions, strict=True)]))}  # fmt: skip


@pytest.fixture(scope="module")
def task():
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(
            {"inputs": [f"question {i}" for i in range(len(TARGETS))], "targets": TARGETS}
        )

    features = {
        "inputs": seqio.Feature(vocabulary=VOCAB, add_eos=True),
        "targets": seqio.Feature(vocabulary=VOCAB, add_eos=True),
    }
    seqio.TaskRegistry.add(
        TASK,
        source=seqio.FunctionDataSource(dataset_fn, splits=["validation"]),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=features,
        metric_fns=[_exact_match],
    )
    yield TASK
    seqio.TaskRegistry.remove(TASK)


class ScriptedModel:
    """Answers from the gold target of the question it reads ("question i"): even-length targets
    exactly (EOS right after them), odd ones with one wrong byte then EOS; every position after
    EOS holds junk, as a real decoder's fixed-length output may."""

    config = None

    def logical_axes(self) -> dict:
        return {}

    def predict_batch(self, params, batch, *, max_decode_length: int, **decode_kwargs):
        inputs = np.asarray(batch["encoder_input_tokens"])
        out = np.full((inputs.shape[0], max_decode_length), JUNK, np.int32)
        for row, ids in enumerate(inputs):
            question = VOCAB.decode([int(t) for t in ids if t > EOS_ID])
            if not question:  # a padding row of the last batch
                continue
            target = TARGETS[int(question.split()[-1])]
            answer = VOCAB.encode(target) if len(target) % 2 == 0 else VOCAB.encode("b")
            out[row, : len(answer)] = answer
            out[row, len(answer)] = EOS_ID
        return jnp.asarray(out)

    def score_batch(self, params, batch):
        raise AssertionError("the task has no score metrics")


def test_predictions_with_eos_at_different_positions_give_metrics(task):
    trainer = Trainer(
        ScriptedModel(),
        Partitioner(devices=jax.devices()[:1]),
        optimizers.adamw(optimizers.constant_schedule(0.0)),
        optimizers.constant_schedule(0.0),
    )
    # batch 4 over 7 examples: the second batch is padded, as on a real eval split.
    evaluation = Evaluation(trainer, task, {"inputs": 16, "targets": 12}, batch_size=4)
    state = TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state=())
    results = evaluation.seqio_metrics(state, {}, step=0)
    expected = 100.0 * sum(len(t) % 2 == 0 for t in TARGETS) / len(TARGETS)
    assert results == {f"{TASK}/exact_match": pytest.approx(expected)}
