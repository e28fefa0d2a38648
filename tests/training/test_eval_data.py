"""Evaluation data you can trust: seeded (a Flan task formats the same way every time),
label rows only for teacher forcing (no wrong-label rank rows), per-example weights carried
through the feature converter in one pass, and a start-up warning for examples that
TASK_FEATURE_LENGTHS cuts."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import seqio
import tensorflow as tf

from fiat_t5x.data.flan_variants import FlanTaskSpec, register_flan_variants
from fiat_t5x.data.metrics import expand_rank_candidates
from fiat_t5x.data.templates import Template
from fiat_t5x.training import data as data_lib
from fiat_t5x.training import truncation
from fiat_t5x.training.example_weights import WeightedEncDecFeatureConverter

VOCAB = seqio.ByteVocabulary()
FEATURES = {
    "inputs": seqio.Feature(VOCAB, add_eos=True),
    "targets": seqio.Feature(VOCAB, add_eos=True),
}
LENGTHS = {"inputs": 64, "targets": 8}
PREFIX = "trust_eval_data"


def _source(rows: dict[str, list[dict]]) -> seqio.FunctionDataSource:
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        columns = {k: [r[k] for r in rows[split]] for k in rows[split][0]}
        return tf.data.Dataset.from_tensor_slices(columns)

    return seqio.FunctionDataSource(dataset_fn, splits=tuple(rows))


@pytest.fixture(scope="module")
def flan_task():
    rows = [{"id": f"q{i}", "question": f"is {i} even", "answer": "yes" if i % 2 == 0 else "no"}
            for i in range(16)]  # fmt: skip
    templates = tuple(
        Template(f"{prefix} {{question}}?", "{answer}")
        for prefix in ("Q:", "Question:", "Tell me:", "Answer this:", "Say:", "Check:")
    )
    spec = FlanTaskSpec(
        name=PREFIX,
        source=_source({"train": rows, "validation": rows}),
        fields=("id", "question", "answer"),
        templates=templates,
        options_field=None,
    )
    names = register_flan_variants(spec, overwrite=True)
    yield names["zsnoopt"]
    for name in names.values():
        seqio.TaskRegistry.remove(name)


def _inputs(ds: tf.data.Dataset) -> list[bytes]:
    return [row["encoder_input_tokens"].tobytes() for row in ds.as_numpy_iterator()]


def test_eval_datasets_of_a_flan_task_are_the_same_on_every_build(flan_task):
    first = _inputs(data_lib.eval_dataset(flan_task, LENGTHS, "validation"))
    again = _inputs(data_lib.eval_dataset(flan_task, LENGTHS, "validation"))
    assert len(first) == 16 and first == again
    other_seed = _inputs(data_lib.eval_dataset(flan_task, LENGTHS, "validation", seed=7))
    assert other_seed != first  # the seed really draws the templates


@pytest.fixture(scope="module")
def ranked_mixture():
    """A yes/no task, its rank-classification twin (each example once per candidate label)
    and their evaluation mixture, as `rationales.injection` registers for XOR-AttriQA."""
    rows = [{"inputs": f"claim {i}", "targets": "yes" if i % 3 else "no"} for i in range(6)]
    tokenize = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
    names = (f"{PREFIX}_label", f"{PREFIX}_label_rank", f"{PREFIX}_label_eval")
    seqio.TaskRegistry.add(
        names[0], _source({"validation": rows}), preprocessors=tokenize, output_features=FEATURES
    )
    seqio.TaskRegistry.add(
        names[1],
        _source({"validation": rows}),
        preprocessors=[lambda ds: expand_rank_candidates(ds, ("yes", "no")), *tokenize],
        output_features=FEATURES,
    )
    seqio.MixtureRegistry.add(names[2], [names[0], names[1]], default_rate=1.0)
    yield names[2], rows
    seqio.MixtureRegistry.remove(names[2])
    seqio.TaskRegistry.remove(names[1])
    seqio.TaskRegistry.remove(names[0])


def test_teacher_forced_rows_of_a_rank_mixture_are_its_label_rows(ranked_mixture):
    mixture, rows = ranked_mixture
    ds = data_lib.eval_dataset(mixture, LENGTHS, "validation")
    got = [
        (VOCAB.decode([t for t in r["encoder_input_tokens"] if t > 1]),
         VOCAB.decode([t for t in r["decoder_target_tokens"] if t > 1]))
        for r in ds.as_numpy_iterator()
    ]  # fmt: skip
    gold = [(r["inputs"], r["targets"]) for r in rows]
    # Each example once from the task, once from its rank twin (the gold row): no wrong labels.
    assert sorted(got) == sorted(gold + gold)


def test_weights_travel_with_their_rows_in_one_pass():
    """A source that yields its rows in a new order on every read (as a seed=None pipeline
    may): each row must keep its own weight, and the input must be read once."""
    reads = []

    def rows():
        reads.append(1)
        order = np.random.default_rng(len(reads)).permutation(8)
        for i in order:
            # The target's first token encodes which row this is; its weight is i / 10.
            yield {"inputs": [5, 6, 1], "targets": [10 + int(i), 1], "loss_weight": i / 10}

    signature = {
        "inputs": tf.TensorSpec([None], tf.int32),
        "targets": tf.TensorSpec([None], tf.int32),
        "loss_weight": tf.TensorSpec([], tf.float32),
    }
    ds = tf.data.Dataset.from_generator(rows, output_signature=signature)
    converted = WeightedEncDecFeatureConverter(pack=False)(ds, {"inputs": 4, "targets": 4})
    out = list(converted.as_numpy_iterator())
    assert len(reads) == 1
    for row in out:
        i = row["decoder_target_tokens"][0] - 10
        np.testing.assert_allclose(row["decoder_loss_weights"], [i / 10, i / 10, 0, 0], rtol=1e-6)


def test_targets_longer_than_their_length_are_counted_and_shown(caplog):
    rows = [{"inputs": "a", "targets": t} for t in ("positive", "negative", "no", "yes")]
    name = f"{PREFIX}_long_targets"
    seqio.TaskRegistry.add(
        name,
        _source({"train": rows}),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=FEATURES,
    )
    try:
        with caplog.at_level(logging.WARNING):
            found = truncation.warn_if_truncated(name, {"inputs": 8, "targets": 4}, "train")
    finally:
        seqio.TaskRegistry.remove(name)
    (targets,) = found  # 'positive'/'negative' + EOS = 9 tokens; 'yes' + EOS fits
    assert (targets.feature, targets.truncated, targets.checked, targets.longest) == (
        "targets",
        2,
        4,
        9,
    )
    (message,) = [r.getMessage() for r in caplog.records]
    assert "2 of 4 examples" in message and "'positive'" in message
    assert "TASK_FEATURE_LENGTHS['targets'] to at least 9" in message
