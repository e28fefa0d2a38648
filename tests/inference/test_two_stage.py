"""Algorithm 2 on the demo task equals running its two stages by hand; the ICL baseline parses
β's answers and scores them with the task's metrics."""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest
import seqio

from fiat_t5x.inference.beta_outputs import beta_texts
from fiat_t5x.inference.icl import icl_baseline
from fiat_t5x.inference.tau import Tau, decode_outputs
from fiat_t5x.inference.two_stage import run_two_stage, score_fiat_predictions
from fiat_t5x.models import presets
from fiat_t5x.models.model import EncoderDecoderModel
from fiat_t5x.rationales import job as job_lib
from fiat_t5x.rationales.generate import Example
from fiat_t5x.rationales.injection import MissingRationaleError
from fiat_t5x.rationales.store import RationaleStore
from fiat_tasks import demo, demo_beta, demo_vocab, fiat_demo_variants

N = 12
LENGTHS = {"inputs": 128, "targets": 8}  # the demo's FIAT length


@pytest.fixture(scope="module")
def tiny_tau():
    vocabulary = demo_vocab.vocabulary()  # what the demo's FIAT tasks tokenize with
    model = EncoderDecoderModel(presets.micro(vocab_size=vocabulary.vocab_size))
    params = model.init_params(jax.random.PRNGKey(3))
    return Tau(model, params, vocabulary, LENGTHS["inputs"], LENGTHS["targets"], batch_size=8)


def demo_examples(split: str, n: int = N) -> list[Example]:
    return [Example(e.id, e.to_dict()) for e in demo.generate_split(split)[:n]]


def test_two_stage_equals_the_stages_by_hand(tiny_tau, tmp_path, monkeypatch):
    store_dir = str(tmp_path / "store")
    examples = demo_examples("test")
    prompt = fiat_demo_variants.demo_prompt()
    tuning = fiat_demo_variants.TASKS.prompt
    # Stage 1 generates into an empty store through the provider.
    predictions = run_two_stage(
        examples,
        tuning_prompt=tuning,
        tau=tiny_tau,
        store_dir=store_dir,
        store_task="fiat_demo",
        split="test",
        beta_prompt=prompt,
        beta=demo_beta.ScriptedDemoBeta(),
    )
    stored = RationaleStore.open_readonly(store_dir).texts("fiat_demo", "test")
    assert sorted(stored) == sorted(e.example_id for e in examples)

    # By hand: β on its rendered Iβ prompt; τ's inputs from the SeqIO task `fiat_demo_fiat`
    # (tf.data rendering and tokenization), decoded with the model directly. The task reads
    # the whole split from the store, so the demo's β step fills in the rest first.
    job_lib.run_job(
        job_lib.RationaleJob(
            store_dir=store_dir,
            task="fiat_demo",
            ibeta_file=str(fiat_demo_variants.IBETA_FILE),
            beta=demo_beta.ScriptedDemoBeta(),
            splits=("test",),
            progress=False,
        )
    )
    monkeypatch.setenv("FIAT_RATIONALE_STORE", store_dir)
    task = seqio.get_mixture_or_task("fiat_demo_fiat")
    rows = {
        r["id"].decode(): r
        for r in task.get_dataset(LENGTHS, split="test", shuffle=False).as_numpy_iterator()
    }
    by_hand = []
    for example in examples:
        rationale = demo_beta.beta_from_prompt(prompt.render(example.fields))
        row = rows[example.example_id]
        assert row["rationale"].decode() == rationale
        tokens = np.zeros((1, LENGTHS["inputs"]), np.int32)
        tokens[0, : len(row["inputs"])] = row["inputs"]
        out = tiny_tau.model.predict_batch(
            tiny_tau.params, {"encoder_input_tokens": tokens}, max_decode_length=LENGTHS["targets"]
        )
        by_hand.append(
            (
                rationale,
                row["inputs_pretokenized"].decode(),
                decode_outputs(out, tiny_tau.vocabulary)[0],
            )
        )
    assert [(p.rationale, p.inputs, p.prediction) for p in predictions] == by_hand
    assert [p.target for p in predictions] == [e.fields["answer"] for e in examples]

    # Second run: everything is in the store, no β needed.
    again = run_two_stage(
        examples,
        tuning_prompt=tuning,
        tau=tiny_tau,
        store_dir=store_dir,
        store_task="fiat_demo",
        split="test",
    )
    assert again == predictions
    # The same store read from a bucket (file:// takes the kvstore path gs:// does), no β.
    local = beta_texts(examples, store_dir=store_dir, task="fiat_demo", split="test")
    assert beta_texts(
        examples, store_dir=f"file://{store_dir}", task="fiat_demo", split="test"
    ) == (local)
    metrics = score_fiat_predictions("fiat_demo_fiat", examples, predictions)
    hits = [p.prediction.strip() == p.target for p in predictions]
    assert metrics["accuracy"] == pytest.approx(100.0 * np.mean(hits))


def test_missing_rationale_without_beta_names_ids(tmp_path):
    examples = demo_examples("validation", 3)
    with pytest.raises(MissingRationaleError, match="3 of 3") as err:
        beta_texts(
            examples, store_dir=str(tmp_path / "empty"), task="fiat_demo", split="validation"
        )
    assert err.value.missing_ids == [e.example_id for e in examples]


def test_icl_baseline_parses_and_scores(tmp_path):
    store_dir = str(tmp_path / "store")
    metrics = icl_baseline(
        task="fiat_demo",
        model_dir=str(tmp_path / "icl"),
        itau_file=str(fiat_demo_variants.ITAU_FILE),
        metrics_task="fiat_demo_fiat",
        split="validation",
        store_dir=store_dir,
        ibeta_file=str(fiat_demo_variants.IBETA_FILE),
        beta=demo_beta.ScriptedDemoBeta(),
        limit=40,
    )
    examples = demo.generate_split("validation")[:40]

    # Reference: the final answer written at the end of β's text, compared with the gold
    # answer, per language.
    def written_answer(question: str) -> str:
        rationale = demo_beta.scripted_rationale(question)
        return re.search(r"so the answer is (yes|no)\.$", rationale).group(1)

    answers = [written_answer(e.question) for e in examples]
    correct = [a == e.answer for a, e in zip(answers, examples, strict=True)]
    assert not all(correct)  # the scripted β makes mistakes
    assert metrics["accuracy"] == pytest.approx(100.0 * np.mean(correct))
    for lang in demo.LANGUAGES:
        lang_hits = [c for c, e in zip(correct, examples, strict=True) if e.language == lang]
        assert metrics[f"accuracy/{lang}"] == pytest.approx(100.0 * np.mean(lang_hits))
    assert metrics["answer_found_rate"] == 100.0
    lines = (tmp_path / "icl" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["eval/fiat_demo_fiat/accuracy"] == pytest.approx(
        metrics["accuracy"]
    )
