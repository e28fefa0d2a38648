"""Scalars to TensorBoard (clu metric writers) and to `MODEL_DIR/metrics.jsonl`.

Only process 0 writes files; other processes log through absl only. The JSONL file has one
object per write, and every row says which process start (`run`) and which part of the code
(`writer`) wrote it:

    {"step": 100, "run": "20261201T101500-4242-8c1f", "writer": "train", "train/loss": 1.23, ...}

Writers: `train` (the training loop), `train_eval` (evaluation every EVAL_PERIOD steps),
`eval_command` (`fiat-t5x eval`), and the inference commands' own names (`icl`, `fiat_infer`).
A training run also writes `{"step": S, "run": ..., "writer": "train", "event": "run_start"}`
when it starts from step S: after a restart, rows of earlier runs past S describe steps that
were trained again (or lost), so readers drop them (`fiat_t5x.sweeps.metrics`) and never
average two copies of a replayed step.

In a bucket (MODEL_DIR `gs://...`) an object cannot grow, so every append rewrites it; the
training loop's rows are therefore gathered and written at most every `url_flush_s` seconds and
whenever a checkpoint is saved (`flush`), so that the file is complete up to the newest
checkpoint (rows after it describe steps a restart trains again) and a long run does not upload
its growing file once per logged step.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import time
from collections.abc import Mapping

from fiat_t5x import storage

METRICS_FILE = "metrics.jsonl"
# Row fields besides the metrics.
STEP_FIELD, RUN_FIELD, WRITER_FIELD, EVENT_FIELD = "step", "run", "writer", "event"
RUN_START_EVENT = "run_start"
# Writers.
TRAIN_WRITER = "train"
TRAIN_EVAL_WRITER = "train_eval"
EVAL_COMMAND_WRITER = "eval_command"

_RUN_ID: str | None = None


def run_id() -> str:
    """This process start's id: start time, process id and a random tag (sortable by time)."""
    global _RUN_ID
    if _RUN_ID is None:
        now = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
        _RUN_ID = f"{now}-{os.getpid()}-{secrets.token_hex(2)}"
    return _RUN_ID


def append_row(model_dir: str, step: int, values: Mapping[str, object], writer: str) -> str:
    """Append one row `{"step", "run", "writer", **values}` to MODEL_DIR/metrics.jsonl (the
    caller makes sure only one process writes); returns the file's path."""
    path = storage.join(model_dir, METRICS_FILE)
    storage.append_text(path, _row_line(step, values, writer))
    return path


def _row_line(step: int, values: Mapping[str, object], writer: str) -> str:
    row = {STEP_FIELD: int(step), RUN_FIELD: run_id(), WRITER_FIELD: writer, **values}
    return json.dumps(row, sort_keys=True) + "\n"


class MetricsWriter:
    """Writes `{name: float}` per step to TensorBoard event files and to the JSON lines file."""

    def __init__(
        self, model_dir: str, *, tensorboard: bool = True, url_flush_s: float = 60.0
    ) -> None:
        import jax
        from clu import metric_writers

        self.is_writer = jax.process_index() == 0
        self.model_dir = model_dir
        self.path = storage.join(model_dir, METRICS_FILE)
        logdir = storage.epath_directory(model_dir) if (tensorboard and self.is_writer) else None
        self._writer = metric_writers.create_default_writer(
            logdir, just_logging=not self.is_writer or not tensorboard, asynchronous=False
        )
        if self.is_writer:
            storage.makedirs(model_dir)
        self._gather = self.is_writer and storage.is_url(model_dir)
        self._url_flush_s = url_flush_s
        self._pending: list[str] = []
        self._last_flush = time.monotonic()

    def start_run(self, step: int) -> None:
        """Record that a training run starts (or resumes) from `step`."""
        self._append(step, {EVENT_FIELD: RUN_START_EVENT}, TRAIN_WRITER)

    def write(self, step: int, scalars: Mapping[str, float], writer: str = TRAIN_WRITER) -> None:
        values = {k: float(v) for k, v in scalars.items()}
        self._writer.write_scalars(int(step), values)
        self._append(step, values, writer)

    def _append(self, step: int, values: Mapping[str, object], writer: str) -> None:
        if not self.is_writer:
            return
        if not self._gather:
            storage.append_text(self.path, _row_line(step, values, writer))
            return
        self._pending.append(_row_line(step, values, writer))
        if time.monotonic() - self._last_flush >= self._url_flush_s:
            self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            storage.append_text(self.path, "".join(self._pending))
            self._pending.clear()
        self._last_flush = time.monotonic()

    def flush(self) -> None:
        """Everything written so far reaches TensorBoard's files and metrics.jsonl (call it
        after each checkpoint)."""
        self._writer.flush()
        self._write_pending()

    def close(self) -> None:
        self._write_pending()
        self._writer.close()
