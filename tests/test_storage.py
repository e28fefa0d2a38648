"""`fiat_t5x.storage`: a run's files, local or at a URL (gs:// on a pod), written whole or not
at all. URLs are exercised as `file://`, which takes the same TensorStore kvstore path as a
bucket without a network."""

from __future__ import annotations

import json
import os
import stat

import pytest

from fiat_t5x import storage
from fiat_t5x.training import eval_records, metrics_writer


def test_a_failed_local_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = str(tmp_path / "config.gin")
    storage.write_text(path, "old\n")
    # Not bytes: the write fails after the temp file was opened, as a full disk would.
    with pytest.raises(TypeError):
        storage.write_bytes(path, object())  # type: ignore[arg-type]
    assert storage.read_text(path) == "old\n"
    assert os.listdir(tmp_path) == ["config.gin"]


def test_local_writes_get_the_umask_permissions_like_a_plain_write(tmp_path):
    previous = os.umask(0o022)
    try:
        storage.write_text(str(tmp_path / "a" / "f.txt"), "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "f.txt").st_mode) == 0o644


def test_url_files_are_written_read_appended_and_listed(tmp_path):
    url = f"file://{tmp_path}/run"
    target = storage.join(url, "sub", "metrics.jsonl")
    assert not storage.is_file(target) and not storage.is_dir(url)
    storage.makedirs(url)  # a bucket has no directories: nothing to create, nothing raised
    storage.append_text(target, "1\n")
    storage.append_text(target, "2\n")
    storage.write_text(storage.join(url, "config.gin"), "A = 1\n")
    assert storage.read_text(target) == "1\n2\n"
    assert (tmp_path / "run" / "sub" / "metrics.jsonl").read_text() == "1\n2\n"
    assert storage.list_dir(url) == ["config.gin", "sub"]
    assert storage.is_dir(url) and storage.is_file(storage.join(url, "config.gin"))
    with pytest.raises(FileNotFoundError):
        storage.read_text(storage.join(url, "missing"))


def test_epath_libraries_get_a_local_path_for_file_urls_and_the_url_for_buckets(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert storage.epath_directory(f"file://{tmp_path}/run") == f"{tmp_path}/run"
    assert storage.epath_directory("gs://bucket/runs/x/") == "gs://bucket/runs/x"
    assert storage.epath_directory("runs/x") == f"{tmp_path}/runs/x"


def test_evaluation_records_and_metrics_rows_round_trip_at_a_url(tmp_path):
    url = f"file://{tmp_path}/run"
    directory = eval_records.records_dir(url, "eval")
    rows = [eval_records.Record(index=i, id=f"e{i}", target="y", prediction="y") for i in range(3)]
    written = eval_records.write_records(
        directory, task="demo", split="validation", step=7, rows=rows, imports=()
    )
    assert written == f"{url}/records/eval/demo/step_00000007.jsonl"
    assert eval_records.available_steps(storage.join(directory, "demo")) == [7]
    read = eval_records.read_records(written)
    assert [r.id for r in read.rows] == ["e0", "e1", "e2"] and read.step == 7
    for step in (1, 2):
        metrics_writer.append_row(url, step, {"train/loss": float(step)}, "train")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["train/loss"] for line in lines] == [1.0, 2.0]


def test_metrics_rows_for_a_bucket_are_gathered_until_a_flush(tmp_path):
    """An object cannot grow: the trainer's rows go up at checkpoints (flush), every
    `url_flush_s` seconds and at close, not once per logged step; locally they land at once."""
    url, local = f"file://{tmp_path}/run", tmp_path / "run" / "metrics.jsonl"
    writer = metrics_writer.MetricsWriter(url, tensorboard=False, url_flush_s=3600)
    writer.start_run(0)
    writer.write(1, {"train/loss": 1.0})
    assert not local.exists()
    writer.flush()
    assert len(local.read_text().splitlines()) == 2
    writer.write(2, {"train/loss": 2.0})
    assert len(local.read_text().splitlines()) == 2
    writer.close()
    assert [json.loads(line)["step"] for line in local.read_text().splitlines()] == [0, 1, 2]

    at_once = metrics_writer.MetricsWriter(str(tmp_path / "local"), tensorboard=False)
    at_once.write(1, {"train/loss": 1.0})
    assert len((tmp_path / "local" / "metrics.jsonl").read_text().splitlines()) == 1
    at_once.close()
