"""`fiat-t5x score --metric attribution|xtreme_up_qa PREDICTIONS.jsonl`: score any system's output.

One JSON object a line, the same for every system (ours, the ICL baseline, another framework):

  xtreme_up_qa:  {"language": "bn", "target": "Dhaka", "prediction": "dhaka", "id": "..."}
  attribution:   {"language": "bn", "label": true, "prediction": "yes",
                  "scores": {"yes": -0.2, "no": -1.9}, "id": "..."}

What `fiat-t5x infer` writes scores as it is: its gold answer is `targets` (used when a line
has no `target` / `label`) and its `language` is the example's own field. Other field names are
flags (`--language_field`, `--target_field`, `--prediction_field`).

For attribution, the gold label (`label`, else `targets`) is true/false or "yes"/"no";
`prediction` (generated text) gives accuracy; per-label log-likelihoods `scores` (or an
attributable-class `score`) give AUC-PR; either may be omitted. Prints per-language Markdown;
`--json` writes the flat metric dict. Broken lines are reported by file and line;
`--skip_malformed` counts and skips them instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from fiat_t5x import errors
from fiat_t5x.data import metrics, sources

METRICS = ("attribution", "xtreme_up_qa")
# The gold field when none is named: the usual name, else what `fiat-t5x infer` writes.
INFER_GOLD_FIELD = "targets"


@dataclasses.dataclass(frozen=True)
class Fields:
    """Which JSON field holds what. `gold=None`: `label`/`target`, else infer's `targets`."""

    language: str = "language"
    gold: str | None = None
    prediction: str = "prediction"


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    skip_malformed: bool = False
    report: sources.SkipReport | None = None


def _gold(record: sources.Record, fields: Fields, default: str) -> tuple[str, Any]:
    """(field name, value) of the gold answer of `record`."""
    name = fields.gold or (default if default in record.fields else INFER_GOLD_FIELD)
    if name not in record.fields:
        present = ", ".join(sorted(record.fields))
        wanted = repr(name) if fields.gold else f"{default!r} (or {INFER_GOLD_FIELD!r})"
        raise record.error(
            f"missing field {wanted} (present: {present}); name the gold field with --target_field"
        )
    return name, record[name]


def _read(path: str, fields: Fields, options: ReadOptions, transform) -> list[dict[str, Any]]:
    records = sources.read_jsonl(
        path,
        required=(fields.language,),
        transform=transform,
        skip_malformed=options.skip_malformed,
        report=options.report,
    )
    if not records:
        raise errors.UsageError(f"{path}: no predictions")
    return [dict(r.fields) for r in records]


def score_attribution(
    path: str, fields: Fields = Fields(), options: ReadOptions = ReadOptions()
) -> dict[str, float]:
    def row(record: sources.Record) -> dict[str, Any]:
        name, value = _gold(record, fields, "label")
        label = value if isinstance(value, bool) else metrics.parse_label(str(value))
        if label is None:
            raise record.error(f"expected true/false or yes/no, got {value!r}", name)
        out: dict[str, Any] = {"language": record[fields.language], "label": label}
        if fields.prediction in record.fields:
            out["predicted"] = metrics.parse_label(str(record[fields.prediction]))
        if "scores" in record.fields:
            if not isinstance(record["scores"], dict):
                raise record.error("expected an object {label: log-likelihood}", "scores")
            out["score"] = metrics.attributable_score(record["scores"])
        elif "score" in record.fields:
            out["score"] = float(record["score"])
        return out

    rows = _read(path, fields, options, row)
    has_prediction = [("predicted" in r) for r in rows]
    has_score = [("score" in r) for r in rows]
    for name, flags in ((fields.prediction, has_prediction), ("scores", has_score)):
        if any(flags) and not all(flags):
            missing = flags.index(False)
            raise errors.UsageError(
                f"{path}: some lines have {name!r} and some not (e.g. record {missing + 1}); "
                "give every line the same fields"
            )
    return metrics.attribution_metrics(
        languages=[r["language"] for r in rows],
        labels=[r["label"] for r in rows],
        predicted=[r["predicted"] for r in rows] if all(has_prediction) else None,
        scores=[r["score"] for r in rows] if all(has_score) else None,
    )


def score_xtreme_up_qa(
    path: str, fields: Fields = Fields(), options: ReadOptions = ReadOptions()
) -> dict[str, float]:
    def row(record: sources.Record) -> dict[str, Any]:
        values = {"target": _gold(record, fields, "target")[1]}
        if fields.prediction not in record.fields:
            raise record.error("missing field; name it with --prediction_field", fields.prediction)
        values["prediction"] = record[fields.prediction]
        for name, value in values.items():
            if not isinstance(value, str):
                raise record.error(f"expected a string, got {type(value).__name__}", name)
        return {"language": record[fields.language], **values}

    rows = _read(path, fields, options, row)
    return metrics.xtreme_up_qa_metrics(
        [r["language"] for r in rows], [r["target"] for r in rows], [r["prediction"] for r in rows]
    )


def score_file(
    path: str, metric: str, fields: Fields = Fields(), options: ReadOptions = ReadOptions()
) -> dict[str, float]:
    """The flat metric dict (×100, "metric/<lang>" keys) of a predictions file."""
    if metric == "attribution":
        return score_attribution(path, fields, options)
    if metric == "xtreme_up_qa":
        return score_xtreme_up_qa(path, fields, options)
    raise errors.UsageError(f"unknown metric {metric!r}; expected one of {METRICS}")


@errors.command("fiat-t5x score")
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fiat-t5x score", description=__doc__.split("\n")[0])
    parser.add_argument("predictions", help="JSONL predictions file (e.g. what infer wrote)")
    parser.add_argument("--metric", required=True, choices=METRICS)
    parser.add_argument("--json", help="also write the metric dict to this file")
    parser.add_argument("--language_field", default="language", help="default: language")
    parser.add_argument(
        "--target_field", help="gold answer / label (default: target or label, else targets)"
    )
    parser.add_argument("--prediction_field", default="prediction", help="default: prediction")
    parser.add_argument(
        "--skip_malformed", action="store_true", help="count and skip bad lines, don't fail"
    )
    args = parser.parse_args(argv)
    fields = Fields(args.language_field, args.target_field, args.prediction_field)
    report = sources.SkipReport()
    try:
        results = score_file(
            args.predictions, args.metric, fields, ReadOptions(args.skip_malformed, report)
        )
    except sources.MalformedLineError as e:
        raise e.with_skip_hint("--skip_malformed") from None
    if report.num_skipped:
        print(f"{args.predictions}: {report.summary()}", file=sys.stderr)
    print(metrics.rows_to_markdown(metrics.per_language_rows(results)))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, sort_keys=True)
        os.replace(tmp, args.json)
    return 0
