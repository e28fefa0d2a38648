"""`fiat-t5x rationales generate|status` as real subprocesses against the fake server: a full
job, SIGKILL mid-way then resume (nothing lost, nothing duplicated), two jobs on one store, gin,
and that the API key appears in no output and no file."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from fiat_t5x.rationales.fake_openai import FakeOpenAIServer, Reply, quote_last_line
from fiat_t5x.rationales.prompts import load_prompt
from fiat_t5x.rationales.store import RationaleStore

from .helpers import rationale_counts, raw_records, write_examples, write_ibeta

REPO = pathlib.Path(__file__).resolve().parents[2]
KEY = "sk-cli-SECRET-77e1b2d4"
KEY_ENV = "FIAT_TEST_CLI_BETA_KEY"


def command(server, tmp_path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fiat_t5x.cli",
        "rationales",
        "generate",
        "--store",
        str(tmp_path / "store"),
        "--task",
        "toy",
        "--input",
        str(tmp_path / "train.jsonl"),
        "--prompts",
        str(tmp_path / "ibeta.json"),
        "--base_url",
        server.base_url,
        "--model",
        "beta-m",
        "--api_key_env",
        KEY_ENV,
        "--gin.openai_http.OpenAIProvider.backoff_initial_s=0.01",
        "--gin.openai_http.OpenAIProvider.backoff_max_s=0.05",
        "--verbose",
        *extra,
    ]


def env() -> dict[str, str]:
    return {**os.environ, KEY_ENV: KEY, "PYTHONPATH": str(REPO)}


def run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def assert_key_nowhere(directory: pathlib.Path, *texts: str) -> None:
    for text in texts:
        assert KEY not in text
    for path in directory.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_generate_then_status(tmp_path):
    ids = write_examples(tmp_path / "train.jsonl", 12, tags={4: " [bad]", 5: " [retry]"})
    write_ibeta(tmp_path)
    script = {
        "[bad]": [Reply(status=400, echo_auth=True)],
        "[retry]": [Reply(status=503, echo_auth=True)],
    }
    with FakeOpenAIServer(api_key=KEY, script=script) as server:
        done = run(command(server, tmp_path, "--concurrency", "3"))
    assert done.returncode == 3, done.stderr  # 3: finished, but with failures
    assert "generated 11" in done.stdout and "1 failed permanently" in done.stdout
    assert "rationales: 100%" in done.stderr and "12/12" in done.stderr  # the progress bar
    assert "attempt 1/6 failed (http_503)" in done.stderr  # --verbose logs retries...
    assert "Authorization: Bearer <redacted>" in done.stderr  # ...with the key scrubbed
    store = RationaleStore.open_readonly(tmp_path / "store")
    assert set(store.texts("toy", "train")) == set(ids) - {"ex-4"}
    assert set(store.failures("toy", "train")) == {"ex-4"}
    job = json.loads((tmp_path / "store" / "job.json").read_text())
    assert job["beta"]["settings"]["api_key_env"] == KEY_ENV  # the variable's name only
    assert job["beta"]["identity"]["model"] == "beta-m" and job["job"]["splits"] == ["train"]
    assert "<function" not in json.dumps(job)
    status = run(
        [
            sys.executable,
            "-m",
            "fiat_t5x.cli",
            "rationales",
            "status",
            "--store",
            str(tmp_path / "store"),
        ]
    )
    assert status.returncode == 0, status.stderr
    assert "toy/train: 11 rationales, 1 permanent failures, 0 retryable" in status.stdout
    assert "http_400: 1" in status.stdout
    assert_key_nowhere(tmp_path / "store", done.stdout, done.stderr, status.stdout)


def _start_and_kill(server, tmp_path, records: pathlib.Path, at_least: int) -> None:
    """Starts a job and SIGKILLs it once `records` holds `at_least` lines."""
    job = subprocess.Popen(
        command(server, tmp_path, "--concurrency", "4"),
        env=env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and job.poll() is None:
        if records.exists() and records.read_bytes().count(b"\n") >= at_least:
            break
        time.sleep(0.002)
    assert job.poll() is None, f"the job ended before it could be killed: {job.stderr.read()}"
    os.kill(job.pid, signal.SIGKILL)
    job.wait(10)
    job.stderr.close()


def test_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path):
    n = 300
    ids = write_examples(tmp_path / "train.jsonl", n)
    prompt = load_prompt(write_ibeta(tmp_path), "toy")
    records = tmp_path / "store" / "records.jsonl"
    with FakeOpenAIServer(latency_s=0.01) as server:
        _start_and_kill(server, tmp_path, records, at_least=40)
        first = raw_records(tmp_path / "store")
        _start_and_kill(server, tmp_path, records, at_least=len(first) + 60)  # killed twice
        second = raw_records(tmp_path / "store")
        assert 40 <= len(first) < len(second) < n
        assert second[: len(first)] == first
        done_ids = {r["example_id"] for r in second}
        before = len(server.requests)
        done = run(command(server, tmp_path, "--concurrency", "4"))
        assert done.returncode == 0, done.stderr
        resumed_prompts = {r.prompt for r in server.requests[before:]}
    assert f"{len(done_ids)} already had rationales" in done.stdout
    # nothing finished before the kills was asked again...
    fields = {f"ex-{i}": {"question": f"question number {i}?"} for i in range(n)}
    assert not {prompt.render(fields[i]) for i in done_ids} & resumed_prompts
    # ...every example has exactly one rationale, and earlier records are kept as they were
    assert rationale_counts(tmp_path / "store") == {i: 1 for i in ids}
    assert raw_records(tmp_path / "store")[: len(second)] == second
    texts = RationaleStore.open_readonly(tmp_path / "store").texts("toy", "train")
    assert texts == {i: quote_last_line(prompt.render(fields[i])) for i in ids}


def test_second_job_on_the_same_store_is_refused(tmp_path):
    write_examples(tmp_path / "train.jsonl", 50)
    write_ibeta(tmp_path)
    lock = tmp_path / "store" / "lock"
    with FakeOpenAIServer(latency_s=0.2) as server:
        first = subprocess.Popen(
            command(server, tmp_path, "--concurrency", "1"),
            env=env(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not (lock.exists() and lock.read_text().startswith(str(first.pid))):
                assert time.monotonic() < deadline and first.poll() is None
                time.sleep(0.01)
            second = run(command(server, tmp_path))
        finally:
            first.send_signal(signal.SIGTERM)
            first.wait(10)
    assert first.returncode == 130  # SIGTERM stops the job cleanly: rerun resumes it
    assert second.returncode == 2
    (line,) = [line for line in second.stderr.splitlines() if ": error: " in line]
    assert f"being written by another job (pid {first.pid} " in line
    assert "Traceback" not in second.stderr
    assert max(rationale_counts(tmp_path / "store").values(), default=1) == 1


def test_gin_macros_with_a_flag_for_the_missing_one(tmp_path):
    """The macros the dataset gin files share with training (gin/runs/rationales.gin); a missing
    one is named in one line, and its flag supplies it."""
    write_examples(tmp_path / "train.jsonl", 3)
    write_ibeta(tmp_path)
    with FakeOpenAIServer(api_key=KEY) as server:
        args = [
            "--gin.BASE_TASK='toy'",
            f"--gin.RATIONALE_STORE='{tmp_path / 'store'}'",
            f"--gin.IBETA_FILE='{tmp_path / 'ibeta.json'}'",
            f"--gin.BETA_BASE_URL='{server.base_url}'",
            f"--gin.BETA_API_KEY_ENV='{KEY_ENV}'",
            "--gin.RATIONALE_SPLITS=['train']",
            "--gin.job.RationaleJob.input_files={'train': '%s'}" % (tmp_path / "train.jsonl"),
        ]
        base = [sys.executable, "-m", "fiat_t5x.cli", "rationales", "generate", "--no_progress"]
        missing = run([*base, *args])
        asked, store_made = len(server.requests), (tmp_path / "store").exists()
        done = run([*base, *args, "--model", "beta-from-flag"])
    assert missing.returncode == 2 and asked == 0
    lines = [line for line in missing.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, missing.stderr
    (line,) = lines
    assert "model not set" in line and "BETA_MODEL" in line and "--model" in line
    assert "In call to configurable" not in missing.stderr and not store_made
    assert done.returncode == 0, done.stderr
    assert server.requests[0].body["model"] == "beta-from-flag"
    job = json.loads((tmp_path / "store" / "job.json").read_text())
    assert "openai_http.OpenAIProvider.temperature = 0.0" in job["gin"]
    assert len(RationaleStore.open_readonly(tmp_path / "store").texts("toy", "train")) == 3
    assert_key_nowhere(tmp_path / "store", done.stdout, done.stderr)
