"""Per-example evaluation records: what every evaluated example's target, prediction and score were.

A metric such as `eval/<task>/accuracy` is one number; a confidence interval, or a paired test
of two runs on the same examples, needs the examples behind it. Every evaluation that writes
metrics (training-time and `fiat_t5x.eval` through `seqio.Evaluator`, the ICL baseline and
`fiat-infer` through `fiat_t5x.inference.scoring`) also writes its records here, and sweep
reports bootstrap the task's own metric functions over them (`fiat_t5x.sweeps.confidence`).

Layout: a metric key `<prefix>/<task>/<metric>` (prefix `eval` or `infer`) has its records in
`MODEL_DIR/records/<prefix>/<task>/step_<step>.jsonl`, for the step the metric was logged at.
The first line is a header, then one line per SeqIO example (rank-classification tasks have
several per example, sharing its `id`):

    {"header": {"format": "fiat_t5x.eval_records/1", "task": "fiat_demo_fiat", "split":
     "validation", "step": 200, "count": 400, "imports": ["fiat_tasks.fiat_demo_variants", ...]}}
    {"index": 0, "id": "demo-validation-0000", "target": {"answer": "yes", ...},
     "prediction": "yes", "output": "yes"}

`target` and `prediction` are postprocessed (what the metric functions receive), `score` is a
score-metric input (a log-likelihood), `output` the decoded text. `imports` are the modules
the run's gin imported, so a reader can register the task and call its metric functions.
Files are written whole (temp file + rename): a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fiat_t5x import storage

FORMAT = "fiat_t5x.eval_records/1"
RECORDS_DIR = "records"
_STEP_FILE = re.compile(r"^step_(\d+)\.jsonl$")


class RecordsFileError(ValueError):
    """A records file that cannot be read; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One evaluated row. `key` groups the rows of one example (its id, else its index)."""

    index: int
    id: str | None = None
    target: Any = None
    prediction: Any = None
    score: float | None = None
    output: Any = None

    @property
    def key(self) -> str:
        return self.id if self.id is not None else f"#{self.index}"


@dataclasses.dataclass(frozen=True)
class Records:
    """The records of one task at one step, and where they came from."""

    task: str
    split: str | None
    step: int
    imports: tuple[str, ...]
    rows: tuple[Record, ...]
    path: str | None = None


def records_dir(model_dir: str | os.PathLike, prefix: str) -> str:
    """`MODEL_DIR/records/<prefix>`: the folder of a metric prefix such as `eval` (local or in a
    bucket, see `fiat_t5x.storage`)."""
    return storage.join(os.fspath(model_dir), RECORDS_DIR, prefix)


def step_name(step: int) -> str:
    return f"step_{int(step):08d}.jsonl"


def step_file(directory: str | os.PathLike, task: str, step: int) -> str:
    return storage.join(os.fspath(directory), task, step_name(step))


def available_steps(directory: str | os.PathLike) -> list[int]:
    """Steps with a records file in `directory` (a `<prefix>/<task>` folder), ascending."""
    names = storage.list_dir(os.fspath(directory))
    return sorted(int(m.group(1)) for m in map(_STEP_FILE.match, names) if m is not None)


def gin_imports() -> tuple[str, ...]:
    """The modules the current gin configuration imports (they register its SeqIO tasks)."""
    try:
        import gin

        text = gin.config_str()
    except Exception:  # noqa: BLE001 - no gin, or nothing parsed: nothing to import
        return ()
    modules = []
    for line in text.splitlines():
        if match := re.match(r"^import ([\w.]+)", line):
            modules.append(match.group(1))
        elif match := re.match(r"^from ([\w.]+) import (\w+)", line):
            modules.append(f"{match.group(1)}.{match.group(2)}")
    return tuple(dict.fromkeys(m for m in modules if m != "__gin__.dynamic_registration"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def write_records(
    directory: str | os.PathLike,
    *,
    task: str,
    split: str | None,
    step: int,
    rows: Sequence[Record],
    imports: Sequence[str] | None = None,
) -> str:
    """Writes `<directory>/<task>/step_<step>.jsonl` whole (or not at all); returns its path."""
    path = step_file(directory, task, step)
    header = {
        "format": FORMAT,
        "task": task,
        "split": split,
        "step": int(step),
        "count": len(rows),
        "imports": list(gin_imports() if imports is None else imports),
    }
    lines = [json.dumps({"header": header}, ensure_ascii=False) + "\n"]
    for row in rows:
        line = {k: _jsonable(v) for k, v in dataclasses.asdict(row).items() if v is not None}
        lines.append(json.dumps(line, ensure_ascii=False) + "\n")
    storage.write_text(path, "".join(lines))
    return path


def read_records(path: str | os.PathLike) -> Records:
    """Reads a records file; a malformed or truncated one is an error naming file and line."""
    path = os.fspath(path)
    lines = storage.read_text(path).splitlines()
    try:
        header = json.loads(lines[0])["header"]
        if header.get("format") != FORMAT:
            raise ValueError(f"format {header.get('format')!r}, expected {FORMAT!r}")
    except (IndexError, ValueError, KeyError, TypeError) as e:
        raise RecordsFileError(f"{path}:1: not a records header ({e})") from None
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            data = json.loads(line)
            rows.append(Record(**data))
        except (ValueError, TypeError) as e:
            raise RecordsFileError(f"{path}:{number}: not a record ({e})") from None
    if len(rows) != header["count"]:
        raise RecordsFileError(
            f"{path}: the header announces {header['count']} records, the file has {len(rows)}"
        )
    return Records(
        task=header["task"],
        split=header.get("split"),
        step=int(header["step"]),
        imports=tuple(header.get("imports", ())),
        rows=tuple(rows),
        path=path,
    )


def records_from_evaluator(
    dataset: Iterable[Mapping[str, Any]] | None,
    targets: Sequence[Any],
    inferences: Mapping[str, Sequence[Any]],
) -> list[Record]:
    """Records from what `seqio.Evaluator` hands its loggers (examples in dataset order)."""
    examples = list(dataset) if dataset is not None else []

    def pick(name: str, index: int) -> Any:
        values = inferences.get(name)
        return values[index] if values is not None and index < len(values) else None

    rows = []
    for index, target in enumerate(targets):
        example = examples[index] if index < len(examples) else {}
        example_id = example.get("id")
        if example_id is None and isinstance(target, Mapping):
            example_id = target.get("id")
        score = pick("score", index)
        rows.append(
            Record(
                index=index,
                id=None if example_id is None else str(_jsonable(example_id)),
                target=target,
                prediction=pick("prediction", index),
                score=None if score is None else float(np.asarray(score).reshape(-1)[0]),
                output=pick("output", index),
            )
        )
    return rows


def records_logger(split: str | None) -> Callable[..., Any]:
    """A `seqio.Evaluator` logger class for `split`: `logger_cls=[records_logger(split)]`.

    It writes `<log_dir>/<task>/step_<step>.jsonl` for every evaluated task. (seqio and
    tensorflow are imported here, not with this module, so readers of records stay light.)
    """
    import seqio
    import tensorflow_datasets as tfds

    class RecordsLogger(seqio.Logger):
        def __call__(self, task_name, step, metrics, dataset, inferences, targets) -> None:
            del metrics
            if not targets:
                return
            examples = tfds.as_numpy(dataset) if dataset is not None else None
            rows = records_from_evaluator(examples, targets, inferences or {})
            path = write_records(
                self.output_dir, task=task_name, split=split, step=step or 0, rows=rows
            )
            logging.info("wrote %d evaluation records to %s", len(rows), path)

    return RecordsLogger
