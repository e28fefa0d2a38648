"""The few-shot CoT ICL baseline: β alone, prompted with Iβ; the answer is parsed from its text.

    fiat-t5x icl --gin_file=gin/fiat/demo.gin --gin_file=gin/baselines/icl.gin \\
        --gin.MODEL_DIR="'/tmp/icl'"
    python -m fiat_t5x.inference.icl ...     (the same; what sweeps run)

β's text for an example with Iβ is exactly what the rationale store holds, so stored texts are
reused and missing ones are generated with the configured provider (and stored). The answer is
the text after the last "the answer is" (`fiat_t5x.data.cot.extract_answer`); a text without
one counts as an empty (wrong) answer. Scored with the task's predict metrics only: β gives
no label scores, so no AUC-PR. Writes `<MODEL_DIR>/icl/<split>.jsonl` and appends
`eval/<metrics_task>/<metric>` to MODEL_DIR/metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from fiat_t5x import storage
from fiat_t5x.data.cot import extract_answer
from fiat_t5x.inference.beta_outputs import beta_texts
from fiat_t5x.inference.scoring import resolve_path, score_predictions, write_jsonl, write_metrics
from fiat_t5x.rationales.examples import read_examples
from fiat_t5x.rationales.generate import Example
from fiat_t5x.rationales.injection import rationale_store
from fiat_t5x.rationales.prompts import load_prompt
from fiat_t5x.rationales.providers.base import Provider
from fiat_t5x.rationales.tuning_prompt import load_tuning_prompt
from fiat_t5x.training import eval_records

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class IclPrediction:
    example_id: str
    beta_text: str
    prediction: str
    answer_found: bool
    target: str


def icl_predictions(
    examples: Sequence[Example], texts: Mapping[str, str], targets: Sequence[str]
) -> list[IclPrediction]:
    """β's texts turned into answers (empty when β gave no final answer)."""
    out = []
    for example, target in zip(examples, targets, strict=True):
        text = texts[example.example_id]
        answer = extract_answer(text)
        out.append(
            IclPrediction(example.example_id, text, answer or "", answer is not None, target)
        )
    return out


def icl_baseline(
    *,
    task: str,
    model_dir: str,
    itau_file: str,
    metrics_task: str,
    split: str = "validation",
    input_jsonl: str | None = None,
    id_field: str = "id",
    store_task: str | None = None,
    store_dir: str | None = None,
    ibeta_file: str | None = None,
    ibeta_task: str | None = None,
    beta: Provider | None = None,
    import_modules: Sequence[str] = (),
    limit: int | None = None,
) -> dict[str, float]:
    """Scores β's few-shot CoT answers on a split (labels read with Iτ's target template)."""
    for name in import_modules:
        importlib.import_module(name)
    store_dir = store_dir or rationale_store()
    examples = read_examples(
        task=task, split=split, input_jsonl=input_jsonl, id_field=id_field, limit=limit
    )
    split_name = os.path.splitext(os.path.basename(input_jsonl))[0] if input_jsonl else split
    texts = beta_texts(
        examples,
        store_dir=store_dir,
        task=store_task or task,
        split=split_name,
        prompt=load_prompt(resolve_path(ibeta_file), ibeta_task or task) if ibeta_file else None,
        provider=beta,
    )
    label = load_tuning_prompt(resolve_path(itau_file), task)
    targets = [label.target(e.fields) for e in examples]
    predictions = icl_predictions(examples, texts, targets)
    write_jsonl(
        storage.join(model_dir, "icl", f"{split_name}.jsonl"),
        (dataclasses.asdict(p) for p in predictions),
    )
    metrics = score_predictions(
        metrics_task,
        [e.fields for e in examples],
        targets,
        [p.prediction for p in predictions],
        records_dir=eval_records.records_dir(model_dir, "eval"),
        split=split_name,
        ids=[e.example_id for e in examples],
    )
    metrics["answer_found_rate"] = (
        100.0 * sum(p.answer_found for p in predictions) / max(len(predictions), 1)
    )
    write_metrics(model_dir, f"eval/{metrics_task}", metrics, writer="icl")
    return metrics


USAGE = "usage: fiat-t5x icl --gin_file=gin/fiat/demo.gin --gin_file=gin/baselines/icl.gin --gin.MODEL_DIR=\"'DIR'\"\n"


def main(argv: Sequence[str] | None = None) -> int:
    from fiat_t5x.training import gin_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    return gin_cli.run_metrics_main(argv, "fiat_t5x.inference.icl", "icl_baseline", USAGE)


if __name__ == "__main__":
    sys.exit(main())
