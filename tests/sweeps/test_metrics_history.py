"""metrics.jsonl rows say which run and writer wrote them; the reader keeps one copy of every
step (the run that restarted last wins) and keeps `fiat-t5x eval` rows apart."""

from __future__ import annotations

import collections
import json

import pytest

from fiat_t5x.sweeps.metrics import final_metrics, read_metric_history, series
from fiat_t5x.training import metrics_writer


def _row(step, run, writer, **values):
    return json.dumps({"step": step, "run": run, "writer": writer, **values})


def _start(step, run):
    return json.dumps({"step": step, "run": run, "writer": "train", "event": "run_start"})


@pytest.fixture
def restarted(tmp_path):
    """Run A logs steps 10..30 and evaluates at 20 and 30, then dies; its newest intact
    checkpoint is step 20. Run B resumes from 20 and has logged step 25 so far. The user also
    ran `fiat-t5x eval` on the test split at A's step 30."""
    lines = [
        _start(0, "A"),
        _row(10, "A", "train", **{"train/loss": 3.0}),
        _row(20, "A", "train", **{"train/loss": 2.0}),
        _row(20, "A", "train_eval", **{"eval/demo/accuracy": 60.0}),
        _row(30, "A", "train", **{"train/loss": 1.0}),
        _row(30, "A", "train_eval", **{"eval/demo/accuracy": 80.0}),
        _row(30, "E", "eval_command", eval_split="test", **{"eval/demo/accuracy": 99.0}),
        _start(20, "B"),
        _row(25, "B", "train", **{"train/loss": 1.8}),
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_a_restart_replaces_what_earlier_runs_logged_after_its_step(restarted):
    points = read_metric_history(restarted)
    # A's rows after step 20 describe work that was lost: gone; B's row and A's rows up to 20 stay.
    assert series(points, "train/loss") == ([10, 20, 25], [3.0, 2.0, 1.8])
    assert final_metrics(points) == {"eval/demo/accuracy": 60.0, "train/loss": 1.8}
    per_step = collections.Counter((p.step, p.name) for p in points)
    assert max(per_step.values()) == 1  # never two copies of a step to average


def test_eval_command_rows_are_kept_apart_unless_asked_for(tmp_path):
    lines = [
        _start(0, "A"),
        _row(30, "A", "train_eval", **{"eval/demo/accuracy": 80.0}),
        _row(30, "E", "eval_command", eval_split="test", **{"eval/demo/accuracy": 99.0}),
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert final_metrics(read_metric_history(tmp_path)) == {"eval/demo/accuracy": 80.0}
    both = read_metric_history(tmp_path, include_eval_command=True)
    assert {p.writer for p in both} == {"train_eval", "eval_command"}
    assert final_metrics(both) == {"eval/demo/accuracy": 99.0}


def test_rows_of_the_writer_carry_run_and_writer_and_old_files_still_read(tmp_path):
    path = metrics_writer.append_row(str(tmp_path), 5, {"infer/x/accuracy": 1.0}, "fiat_infer")
    row = json.loads(open(path).read())
    assert row["run"] == metrics_writer.run_id() and row["writer"] == "fiat_infer"
    with open(path, "a") as f:  # a row of an older version: no run, no writer
        f.write(json.dumps({"step": 7, "train/loss": 0.5}) + "\n")
    points = read_metric_history(tmp_path)
    assert [(p.step, p.name, p.writer) for p in points] == [
        (5, "infer/x/accuracy", "fiat_infer"),
        (7, "train/loss", ""),
    ]
