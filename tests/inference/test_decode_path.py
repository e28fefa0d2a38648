"""One decode path: evaluation, `fiat-t5x infer`, τ and the local-T5 β give the same tokens for
the same inputs, on the same 4x2 mesh, through one compiled decode function, with the
parameters placed once (no host-to-device copy of them per batch)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import fiat_tasks.demo  # noqa: F401  (registers fiat_demo_plain)
from fiat_t5x import infer as infer_script
from fiat_t5x.inference.tau import Tau
from fiat_t5x.models import presets
from fiat_t5x.models.decoding import until_eos
from fiat_t5x.models.lora import LoraConfig
from fiat_t5x.models.model import EncoderDecoderModel
from fiat_t5x.rationales.providers.local_t5 import LocalDecoding, LocalT5Provider
from fiat_t5x.training import data as data_lib
from fiat_t5x.training.evaluation import Evaluation
from fiat_t5x.training.partitioning import Partitioner
from fiat_t5x.training.trainer import inference_trainer

TASK = "fiat_demo_plain"
LENGTHS = {"inputs": 96, "targets": 8}
EXAMPLES = 12
BATCH = 8


@pytest.fixture(scope="module")
def setup():
    model = EncoderDecoderModel(presets.micro(), LoraConfig())
    params = jax.device_get(model.init_params(jax.random.PRNGKey(0)))
    partitioner = Partitioner(num_partitions=2)
    examples = list(
        data_lib.get_task_or_fail(TASK)
        .get_dataset(LENGTHS, split="validation", shuffle=False, seed=data_lib.EVAL_SEED)
        .take(EXAMPLES)
        .as_numpy_iterator()
    )
    texts = [ex["inputs_pretokenized"].decode() for ex in examples]
    return model, params, partitioner, examples, texts


def test_the_four_callers_decode_the_same_tokens(setup, tmp_path, monkeypatch):
    model, params, partitioner, examples, texts = setup
    vocab = fiat_tasks.demo.VOCABULARY
    assert dict(partitioner.mesh.shape) == {"data": 4, "model": 2}

    # fiat-t5x infer (MODEL_DIR without a checkpoint: the RANDOM_SEED base, as `params`).
    (path,) = infer_script.infer(
        model=model,
        model_dir=str(tmp_path),
        mixture_or_task_name=TASK,
        task_feature_lengths=LENGTHS,
        initial_checkpoint_path=None,
        split="validation",
        batch_size=BATCH,
        num_examples=EXAMPLES,
        partitioner=partitioner,
    )
    by_infer = [json.loads(line)["prediction"] for line in open(path)]

    # τ of two-stage inference: parameters placed on the mesh once, then handed to every
    # batch's decode as they are (no host copy to transfer again).
    tau = Tau(model, params, vocab, LENGTHS["inputs"], LENGTHS["targets"], BATCH, partitioner)
    placed = jax.tree.leaves(tau.params)
    assert all(isinstance(x, jax.Array) and x.sharding.mesh == partitioner.mesh for x in placed)
    handed = []
    decode = model.predict_batch
    monkeypatch.setattr(
        model, "predict_batch", lambda p, *a, **k: handed.append(p) or decode(p, *a, **k)
    )
    by_tau = tau.predict(texts)
    monkeypatch.undo()
    assert len(handed) == 2 and all(p is tau.params for p in handed)  # 12 texts, batches of 8

    # The local-T5 β.
    beta = LocalT5Provider(
        model,
        params,
        vocab,
        model_name="tiny",
        decoding=LocalDecoding(BATCH, LENGTHS["inputs"], LENGTHS["targets"]),
        partitioner=partitioner,
    )
    by_beta = [g.text for _, g in sorted(beta.generate(enumerate(texts)))]

    # SeqIO predict metrics during training / fiat-t5x eval.
    trainer = inference_trainer(model, partitioner)
    state, frozen = trainer.create_state(params)
    evaluation = Evaluation(trainer, TASK, LENGTHS, batch_size=BATCH, num_examples=EXAMPLES)
    dataset = data_lib.eval_dataset(TASK, LENGTHS, "validation", num_examples=EXAMPLES)
    predicted = dict(evaluation.predict_fn(state, frozen)(dataset.enumerate()))
    eval_tokens = np.stack([predicted[i] for i in range(EXAMPLES)])
    by_eval = [vocab.decode(until_eos(row)[0]) for row in eval_tokens]

    assert model._predict._cache_size() == 1  # one compiled decode served all four
    assert by_infer == by_tau == by_beta == by_eval
    assert len(set(by_eval)) > 1  # the rows really are different decodes

    # And they are the model's greedy decode: one direct call on the default device.
    rows = np.zeros((EXAMPLES, LENGTHS["inputs"]), np.int32)
    for row, ex in enumerate(examples):
        rows[row, : len(ex["inputs"])] = ex["inputs"]
    direct = np.asarray(
        model.predict_batch(params, {"encoder_input_tokens": rows}, max_decode_length=8)
    )
    np.testing.assert_array_equal(eval_tokens, direct)
