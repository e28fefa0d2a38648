"""Scoring text predictions with a SeqIO task's own postprocessor and predict metrics.

The same path as `seqio.Evaluator` (targets and predictions go through the task's
`postprocess_fn` with the raw example, then every predict metric function), so inference and
baselines report numbers comparable with training-time evaluation. Score metrics (AUC-PR from
label likelihoods) need a model's scores and are not computed here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import seqio

from fiat_t5x import storage
from fiat_t5x.rationales.prompt_files import resolve_path  # noqa: F401 - re-exported
from fiat_t5x.training import eval_records
from fiat_t5x.training.metrics_writer import append_row


def score_predictions(
    task_name: str,
    examples: Sequence[Mapping[str, Any]],
    targets: Sequence[str],
    predictions: Sequence[str],
    *,
    records_dir: str | os.PathLike | None = None,
    split: str | None = None,
    step: int = 0,
    ids: Sequence[str] | None = None,
) -> dict[str, float]:
    """{metric: value} of `predictions` against `targets` (texts) for the raw `examples`.

    With `records_dir` (e.g. `eval_records.records_dir(MODEL_DIR, "eval")`), the per-example
    records (id, postprocessed target and prediction, the text) are written there too, as
    training-time evaluation writes them, so sweep reports can bootstrap these metrics.
    """
    if not len(examples) == len(targets) == len(predictions):
        raise ValueError(
            f"score_predictions: {len(examples)} examples, {len(targets)} targets, "
            f"{len(predictions)} predictions; they must line up"
        )
    task = seqio.get_mixture_or_task(task_name)
    post = task.postprocessor

    def apply(text: str, example: Mapping[str, Any], is_target: bool) -> Any:
        return text if post is None else post(text, example=dict(example), is_target=is_target)

    gold = [apply(t, e, True) for t, e in zip(targets, examples, strict=True)]
    guessed = [apply(p, e, False) for p, e in zip(predictions, examples, strict=True)]
    if records_dir is not None:
        rows = [
            eval_records.Record(
                index=i,
                id=None if ids is None else str(ids[i]),
                target=gold[i],
                prediction=guessed[i],
                output=predictions[i],
            )
            for i in range(len(gold))
        ]
        eval_records.write_records(records_dir, task=task_name, split=split, step=step, rows=rows)
    results: dict[str, float] = {}
    for metric_fn in task.predict_metric_fns:
        for name, value in metric_fn(gold, guessed).items():
            results[name] = float(getattr(value, "value", value))
    return results


def write_jsonl(path: str, records: Iterable[Mapping[str, Any]]) -> None:
    """Writes JSON lines whole or not at all (local or in a bucket: `storage.write_text`)."""
    lines = (json.dumps(record, ensure_ascii=False, default=str) + "\n" for record in records)
    storage.write_text(path, "".join(lines))


def write_metrics(
    model_dir: str,
    prefix: str,
    metrics: Mapping[str, float],
    step: int = 0,
    writer: str = "inference",
) -> str:
    """Appends one `{"step": N, "run": ..., "writer": writer, "<prefix>/<metric>": v}` row to
    MODEL_DIR/metrics.jsonl (the trainer's format, which sweep reports read)."""
    values = {f"{prefix}/{k}": float(v) for k, v in metrics.items()}
    return append_row(model_dir, step, values, writer)
