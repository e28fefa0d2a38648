"""FIAT's inference (Algorithm 2): β's rationale, then τ's answer from Iτ + input + rationale.

    fiat-t5x fiat-infer --gin_file=gin/fiat/demo.gin --gin.MODEL_DIR="'/tmp/fiat_demo'"
    fiat-t5x fiat-infer --gin_file=gin/fiat/demo.gin --gin.MODEL_DIR="'/tmp/fiat_demo'" \\
        --gin.fiat_infer.input_jsonl="'questions.jsonl'"

Stage 1 reads β's rationale for every example from the rationale store (RATIONALE_STORE);
missing ones are generated with the configured β provider (`fiat_infer.beta`, gin BETA) and
stored, like training-time rationales. A τ is only run on rationales of the β it was trained
on: the store identity recorded in MODEL_DIR at training start (`run_checks`) must match
the store and BETA, or the command stops naming both βs. Stage 2 renders τ's input exactly as the `<task>_fiat` SeqIO task does and decodes
greedily with the trained τ of MODEL_DIR. Predictions go to `<MODEL_DIR>/fiat_infer/<split>.jsonl`
(id, inputs, rationale, prediction, target) and, when the examples carry labels, are scored
with the task's metrics, printed and appended to MODEL_DIR/metrics.jsonl as `infer/<task>/...`.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from fiat_t5x import storage
from fiat_t5x.inference.beta_outputs import beta_texts
from fiat_t5x.inference.scoring import resolve_path, score_predictions, write_jsonl, write_metrics
from fiat_t5x.inference.tau import Tau, load_tuned_params
from fiat_t5x.rationales.examples import read_examples
from fiat_t5x.rationales.generate import Example
from fiat_t5x.rationales.injection import rationale_store
from fiat_t5x.rationales.prompts import PromptSpec, load_prompt
from fiat_t5x.rationales.providers.base import Provider
from fiat_t5x.rationales.run_checks import check_trained_identity
from fiat_t5x.rationales.tuning_prompt import TuningPrompt, load_tuning_prompt
from fiat_t5x.training import eval_records
from fiat_t5x.training.partitioning import Partitioner

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FiatPrediction:
    """One example through both stages."""

    example_id: str
    inputs: str
    rationale: str
    prediction: str
    target: str | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def has_label(prompt: TuningPrompt, fields: Mapping[str, Any]) -> bool:
    try:
        prompt.target(fields)
    except ValueError:
        return False
    return True


def two_stage_predict(
    examples: Sequence[Example],
    *,
    tuning_prompt: TuningPrompt,
    tau: Tau,
    rationales: Mapping[str, str],
) -> list[FiatPrediction]:
    """Stage 2 for examples whose β rationales (`id -> text`) are known."""
    inputs = [tuning_prompt.fiat_inputs(e.fields, rationales[e.example_id]) for e in examples]
    answers = tau.predict(inputs)
    return [
        FiatPrediction(
            example_id=e.example_id,
            inputs=text,
            rationale=rationales[e.example_id],
            prediction=answer,
            target=tuning_prompt.target(e.fields) if has_label(tuning_prompt, e.fields) else None,
        )
        for e, text, answer in zip(examples, inputs, answers, strict=True)
    ]


def run_two_stage(
    examples: Sequence[Example],
    *,
    tuning_prompt: TuningPrompt,
    tau: Tau,
    store_dir: str,
    store_task: str,
    split: str,
    beta_prompt: PromptSpec | None = None,
    beta: Provider | None = None,
) -> list[FiatPrediction]:
    """Algorithm 2: β's rationales (stored, or generated with `beta` + `beta_prompt` and
    stored), then τ's answers."""
    rationales = beta_texts(
        examples,
        store_dir=store_dir,
        task=store_task,
        split=split,
        prompt=beta_prompt,
        provider=beta,
    )
    return two_stage_predict(examples, tuning_prompt=tuning_prompt, tau=tau, rationales=rationales)


def score_fiat_predictions(
    metrics_task: str,
    examples: Sequence[Example],
    predictions: Sequence[FiatPrediction],
    **records: Any,
) -> dict[str, float]:
    """The task's predict metrics over the labelled predictions ({} when none has a label);
    `records` (records_dir=, split=) are passed to `score_predictions`."""
    labelled = [(e, p) for e, p in zip(examples, predictions, strict=True) if p.target is not None]
    if not labelled:
        return {}
    return score_predictions(
        metrics_task,
        [e.fields for e, _ in labelled],
        [p.target for _, p in labelled],
        [p.prediction for _, p in labelled],
        ids=[e.example_id for e, _ in labelled],
        **records,
    )


def fiat_infer(
    *,
    model: Any,
    model_dir: str,
    initial_checkpoint_path: str | None,
    task: str,
    itau_file: str,
    task_feature_lengths: Mapping[str, int],
    split: str = "test",
    input_jsonl: str | None = None,
    id_field: str = "id",
    store_task: str | None = None,
    store_dir: str | None = None,
    ibeta_file: str | None = None,
    ibeta_task: str | None = None,
    beta: Provider | None = None,
    metrics_task: str | None = None,
    import_modules: Sequence[str] = (),
    batch_size: int = 32,
    random_seed: int = 0,
    limit: int | None = None,
    output: str | None = None,
    partitioner: Any = None,
) -> dict[str, float]:
    """Runs Algorithm 2 over a task split (or a JSONL file) with the τ trained in `model_dir`.

    Args:
      model: the gin MODEL (same files as training).
      task: the base task: its raw examples, the Iτ entry and (by default) the store key.
      itau_file / ibeta_file: Iτ; Iβ (needed only to generate missing rationales with `beta`).
      task_feature_lengths: TASK_FEATURE_LENGTHS of training (input trim, decode length).
      store_dir: the rationale store (default: `rationale_store()` from gin / env).
      metrics_task: the task whose metrics score the predictions (default `<task>_fiat`).
      random_seed: the trainer's RANDOM_SEED (the base of a randomly initialised τ).
      partitioner: the mesh τ decodes on (default: training's, every device data-parallel).
    """
    for name in import_modules:
        importlib.import_module(name)
    import seqio

    store_dir = store_dir or rationale_store()
    store_task = store_task or task
    prompt = load_tuning_prompt(resolve_path(itau_file), task)
    beta_prompt = load_prompt(resolve_path(ibeta_file), ibeta_task or task) if ibeta_file else None
    check_trained_identity(model_dir, store_dir, prompt=beta_prompt, beta=beta)
    examples = read_examples(
        task=task, split=split, input_jsonl=input_jsonl, id_field=id_field, limit=limit
    )
    vocabulary = (
        seqio.get_mixture_or_task(metrics_task or f"{task}_fiat")
        .output_features["inputs"]
        .vocabulary
    )
    # τ on the training mesh (every device, data-parallel, unless gin binds another partitioner).
    partitioner = partitioner or Partitioner()
    tau = Tau(
        model=model,
        params=load_tuned_params(
            model, model_dir, initial_checkpoint_path, random_seed, partitioner=partitioner
        ),
        vocabulary=vocabulary,
        max_input_length=int(task_feature_lengths["inputs"]),
        max_decode_length=int(task_feature_lengths["targets"]),
        batch_size=batch_size,
        partitioner=partitioner,
    )
    split_name = os.path.splitext(os.path.basename(input_jsonl))[0] if input_jsonl else split
    predictions = run_two_stage(
        examples,
        tuning_prompt=prompt,
        tau=tau,
        store_dir=store_dir,
        store_task=store_task,
        split=split_name,
        beta_prompt=beta_prompt,
        beta=beta,
    )
    output = output or storage.join(model_dir, "fiat_infer", f"{split_name}.jsonl")
    write_jsonl(output, (p.to_json() for p in predictions))
    metrics = score_fiat_predictions(
        metrics_task or f"{task}_fiat",
        examples,
        predictions,
        records_dir=eval_records.records_dir(model_dir, "infer"),
        split=split_name,
    )
    if metrics:
        write_metrics(
            model_dir, f"infer/{metrics_task or f'{task}_fiat'}", metrics, writer="fiat_infer"
        )
    logger.info("wrote %d predictions to %s; metrics %s", len(predictions), output, metrics)
    return metrics


USAGE = "usage: fiat-t5x fiat-infer --gin_file=gin/fiat/demo.gin --gin.MODEL_DIR=\"'DIR'\" [--gin.NAME=VALUE ...]\n"


def main(argv: Sequence[str] | None = None) -> int:
    from fiat_t5x.training import gin_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    return gin_cli.run_metrics_main(argv, "fiat_t5x.inference.two_stage", "fiat_infer", USAGE)


if __name__ == "__main__":
    sys.exit(main())
