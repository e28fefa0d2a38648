"""Reading a run's metrics back from its MODEL_DIR: the one place that reads the file.

The trainer (`fiat_t5x.train`) writes TensorBoard summaries and a JSON-lines file in MODEL_DIR
(`fiat_t5x.training.metrics_writer` describes the rows). Sweeps only need the JSON lines:
`read_metric_history` is the adapter, and everything above it (runner, report, plots) works on
`MetricPoint`s, so a change of the trainer's format changes this function only.

Format read here: `MODEL_DIR/metrics.jsonl`, one JSON object per line, each with an integer
`step`, the `run` and `writer` that wrote it, and any number of scalar metrics, e.g.
`{"step": 200, "run": "...", "writer": "train_eval", "eval/fiat_demo_plain/accuracy": 41.0}`.
Non-numeric values (strings, lists) are ignored. A torn last line (a run killed mid-write) is
dropped with a warning; a malformed line elsewhere is an error naming file and line.

Two rules keep every number meaning what its label says:
* a training run that (re)starts from step S (its `run_start` row) replaces what earlier runs
  logged after S: those steps were trained again, or their work was lost, so their rows are
  dropped and no report averages two copies of a replayed step (the latest run wins);
* rows of `fiat-t5x eval` (writer `eval_command`, which may score another split) are kept apart
  from the trainer's own evaluation unless asked for.
Rows written before runs were recorded (no `run`) are read as they are.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import re
from collections.abc import Iterable, Mapping

from fiat_t5x.training.metrics_writer import (
    EVAL_COMMAND_WRITER,
    EVENT_FIELD,
    METRICS_FILE,
    RUN_FIELD,
    RUN_START_EVENT,
    STEP_FIELD,
    WRITER_FIELD,
)

logger = logging.getLogger(__name__)
_ROW_FIELDS = (STEP_FIELD, RUN_FIELD, WRITER_FIELD, EVENT_FIELD)


class MetricsFileError(ValueError):
    """A metrics file cannot be read; the message names the file and line."""


@dataclasses.dataclass(frozen=True, order=True)
class MetricPoint:
    """One scalar: `name` had `value` at training `step`, written by `writer` ('' if unknown)."""

    step: int
    name: str
    value: float
    writer: str = ""


def metrics_path(model_dir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(model_dir) / METRICS_FILE


def _read_rows(path: pathlib.Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
            row[STEP_FIELD] = int(row[STEP_FIELD])
        except (ValueError, KeyError, TypeError) as e:
            if number == len(lines):
                logger.warning("%s:%d: dropping a torn last line (%s)", path, number, e)
                break
            raise MetricsFileError(
                f"{path}:{number}: expected a JSON object with an integer 'step' ({e})"
            ) from None
        rows.append(row)
    return rows


def current_rows(rows: list[dict]) -> list[dict]:
    """The rows no later training run replaced (see the module docstring), in file order;
    `run_start` rows themselves are dropped."""
    restart_floor = math.inf  # the lowest step a later run restarted from
    kept = []
    for row in reversed(rows):
        if row.get(EVENT_FIELD) == RUN_START_EVENT:
            restart_floor = min(restart_floor, row[STEP_FIELD])
        elif row[STEP_FIELD] <= restart_floor:
            kept.append(row)
    return kept[::-1]


def read_metric_history(
    model_dir: str | pathlib.Path, *, include_eval_command: bool = False
) -> list[MetricPoint]:
    """Every current scalar the run logged, in file order; [] when there is no metrics file yet.

    `include_eval_command` adds the rows of `fiat-t5x eval` runs (writer `eval_command`)."""
    path = metrics_path(model_dir)
    if not path.is_file():
        return []
    points: list[MetricPoint] = []
    for row in current_rows(_read_rows(path)):
        writer = str(row.get(WRITER_FIELD, ""))
        if writer == EVAL_COMMAND_WRITER and not include_eval_command:
            continue
        for name, value in row.items():
            if name in _ROW_FIELDS or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            points.append(MetricPoint(row[STEP_FIELD], name, float(value), writer))
    return points


def final_metrics(points: Iterable[MetricPoint]) -> dict[str, float]:
    """The value at the highest step of every metric (a later line wins a tie)."""
    latest: dict[str, tuple[int, float]] = {}
    for p in points:
        if p.name not in latest or p.step >= latest[p.name][0]:
            latest[p.name] = (p.step, p.value)
    return {name: value for name, (_, value) in sorted(latest.items())}


def series(points: Iterable[MetricPoint], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of one metric, sorted by step (the last value logged at a step wins).

    `key` is an exact name or a `*` pattern as in `lookup`; a pattern that matches more than one
    metric name in the history is ambiguous and gives no series (as `lookup` gives no value).
    """
    points = list(points)
    pattern = key_pattern(key)
    names = {p.name for p in points if p.name == key or pattern.fullmatch(p.name)}
    if len(names) != 1:
        return [], []
    (name,) = names
    by_step: dict[int, float] = {}
    for p in points:
        if p.name == name and not math.isnan(p.value):
            by_step[p.step] = p.value
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def key_pattern(key: str) -> re.Pattern[str]:
    """A report key as a regex: `*` matches one `/`-separated part, `{language}` a language.

    Variants of a sweep usually evaluate different SeqIO tasks (the FIAT task, the w/o-CoT
    task...), so `eval/*/accuracy` names "the accuracy of whatever task this variant evaluates".
    """
    pattern = re.escape(key).replace(r"\*", r"[^/]+")
    pattern = pattern.replace(re.escape("{language}"), r"(?P<language>[^/]+)", 1)
    return re.compile(pattern)


def lookup(metrics: Mapping[str, float], key: str) -> tuple[float | None, list[str]]:
    """The value of `key` (exact name or `*` pattern) and the names it matched.

    The value is None when nothing, or more than one metric, matches.
    """
    if key in metrics:
        return metrics[key], [key]
    pattern = key_pattern(key)
    names = sorted(n for n in metrics if pattern.fullmatch(n))
    return (metrics[names[0]] if len(names) == 1 else None), names
