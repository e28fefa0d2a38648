"""β's failure paths against a server written here (`scripted_server`), not the package's fake:
a key echoed at every offset of an error body, 401 then the right key, 404 on the route, a
refused connection, an Iβ typo, a trickled answer, a query string in the base URL, and kill -9
at concurrency 64 with the re-asks counted. Each configuration error must stop the job with one
line (exit 2), record nothing, and leave the store ready for the corrected rerun."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from fiat_t5x.rationales.generate import Example, generate_rationales, identity_for
from fiat_t5x.rationales.prompts import load_prompt
from fiat_t5x.rationales.providers.base import Failure
from fiat_t5x.rationales.providers.openai_http import (
    BAD_ANSWER_CHARS,
    ERROR_BODY_CHARS,
    OpenAIProvider,
)
from fiat_t5x.rationales.store import RationaleStore

from .helpers import IBETA, question, rationale_counts, raw_records, write_examples, write_ibeta
from .scripted_server import Reply, ScriptedServer, Seen, answer_text

REPO = pathlib.Path(__file__).resolve().parents[2]
KEY = "sk-Zq8Xv3Lp9Tr2Wm7YbN4c"  # no 4 characters of it occur in any other test text
WRONG_KEY = "sk-Hd5Gk1Jf6Ru0Ey2Pw"
KEY_ENV = "FIAT_TEST_FAULTS_KEY"


def fragments(secret: str, n: int = 4) -> set[str]:
    return {secret[i : i + n] for i in range(len(secret) - n + 1)}


def assert_no_fragment(secret: str, *texts: str, directory: pathlib.Path | None = None) -> None:
    """No 4 consecutive characters of `secret` in any text or any file under `directory`."""
    parts = fragments(secret)
    files = [p for p in directory.rglob("*") if p.is_file()] if directory else []
    for where, text in [
        *((f"text {i}", t) for i, t in enumerate(texts)),
        *((str(p), p.read_text("utf-8", "replace")) for p in files),
    ]:
        found = sorted(f for f in parts if f in text)
        assert not found, f"{where} holds {found} of the secret"


def generate(tmp_path, url: str, *extra: str, key: str | None = KEY, examples: int = 6):
    """`fiat-t5x rationales generate` as a subprocess on `examples` toy examples."""
    if not (tmp_path / "train.jsonl").exists():
        write_examples(tmp_path / "train.jsonl", examples)
    if not (tmp_path / "ibeta.json").exists():
        write_ibeta(tmp_path)
    cmd = [
        sys.executable, "-m", "fiat_t5x.cli", "rationales", "generate",
        "--store", str(tmp_path / "store"), "--task", "toy",
        "--input", str(tmp_path / "train.jsonl"), "--prompts", str(tmp_path / "ibeta.json"),
        "--base_url", url, "--model", "beta-m", "--api_key_env", KEY_ENV, "--no_progress",
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(KEY_ENV, None)
    if key is not None:
        env[KEY_ENV] = key
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90, cwd=REPO)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fiat-t5x rationales: error: "), stderr
    return lines[0]


def test_the_key_echoed_at_every_offset_is_never_kept(tmp_path, monkeypatch, caplog):
    """Error bodies are cut before they are kept; the cut must never expose part of the key."""
    monkeypatch.setenv(KEY_ENV, KEY)
    span = max(ERROR_BODY_CHARS, BAD_ANSWER_CHARS) + len(KEY) + 12

    def echo(seen: Seen) -> Reply:
        kind, offset = re.search(r"\[(e400|m200|e503) (\d+)\]", seen.prompt).groups()
        body = ("." * int(offset) + f"{seen.authorization} and more text").encode()
        return Reply(status={"e400": 400, "m200": 200, "e503": 503}[kind], body=body)

    examples = [
        Example(f"{kind}-{offset}", {"question": question(offset, f" [{kind} {offset}]")})
        for kind in ("e400", "m200", "e503")
        for offset in range(span)
    ]
    prompt = load_prompt(write_ibeta(tmp_path), "toy")
    with caplog.at_level(logging.INFO), ScriptedServer(echo) as server:
        beta = OpenAIProvider(
            base_url=server.url + "/v1", model="m", api_key_env=KEY_ENV, concurrency=16,
            max_attempts=2, backoff_initial_s=0.001, backoff_max_s=0.002,
        )  # fmt: skip
        with beta, RationaleStore.open_for_writing(tmp_path / "s", identity_for(beta, prompt)) as s:
            summary = generate_rationales(
                examples, task="toy", split="train", prompt=prompt, provider=beta, store=s,
                progress=False,
            )  # fmt: skip
    assert all(seen.authorization == f"Bearer {KEY}" for seen in server.seen)  # it was sent
    assert summary.failed_permanent == span and summary.failed_transient == 2 * span
    records = raw_records(tmp_path / "s")
    assert {r["example_id"] for r in records} == {e.example_id for e in examples}
    assert "<redacted>" in records[0]["message"] or "<redacted>" in records[-1]["message"]
    assert "attempt 1/2 failed (http_503)" in caplog.text
    assert_no_fragment(KEY, caplog.text, directory=tmp_path / "s")


def wrong_key_then_401(seen: Seen) -> Reply:
    if seen.authorization != f"Bearer {KEY}":
        masked = (seen.authorization or "")[7:][:7] + "****" + (seen.authorization or "")[-4:]
        body = json.dumps({"error": {"message": f"Incorrect API key provided: {masked}"}})
        return Reply(status=401, body=body.encode())
    return Reply()


def test_401_stops_the_job_then_the_right_key_finishes_it(tmp_path):
    with ScriptedServer(wrong_key_then_401) as server:
        refused = generate(
            tmp_path, server.url + "/v1", "--concurrency", "2", key=WRONG_KEY, examples=20
        )
        asked, kept = len(server.seen), raw_records(tmp_path / "store")
        fixed = generate(tmp_path, server.url + "/v1", "--concurrency", "2")
    assert refused.returncode == 2, refused.stderr
    line = one_error_line(refused.stderr)
    assert "HTTP 401" in line and f"${KEY_ENV}" in line and "rerun the same command" in line
    assert kept == []  # nothing kept as a permanent failure
    assert asked <= 2  # it stopped at the first answers, not after 20 examples × 6 attempts
    assert fixed.returncode == 0, fixed.stderr
    assert "generated 20" in fixed.stdout and "0 permanent failures kept" in fixed.stdout
    assert rationale_counts(tmp_path / "store") == {f"ex-{i}": 1 for i in range(20)}
    for secret in (KEY, WRONG_KEY):
        assert_no_fragment(
            secret, refused.stderr, fixed.stderr, fixed.stdout, directory=tmp_path / "store"
        )


def test_404_on_the_route_stops_the_job_and_the_fixed_url_finishes_it(tmp_path):
    def routes(seen: Seen) -> Reply:
        if not seen.path.startswith("/v1/chat/completions"):
            return Reply(status=404, body=b'{"detail": "Not Found"}')
        return Reply()

    with ScriptedServer(routes) as server:
        refused = generate(tmp_path, server.url, examples=20)  # no /v1
        kept = raw_records(tmp_path / "store")
        fixed = generate(tmp_path, server.url + "/v1")
    assert refused.returncode == 2
    line = one_error_line(refused.stderr)
    assert "HTTP 404" in line and "base_url" in line and "/v1" in line
    assert kept == []
    assert fixed.returncode == 0, fixed.stderr
    assert rationale_counts(tmp_path / "store") == {f"ex-{i}": 1 for i in range(20)}


def test_a_refused_connection_stops_the_job_fast(tmp_path):
    """Default settings (20 failures in a row, backoff from 1 s): a stop in seconds, where
    40 examples × 6 attempts of capped backoff used to take minutes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"  # nothing listens once closed
    refused = generate(tmp_path, dead, examples=40)
    assert refused.returncode == 2, refused.stderr
    line = one_error_line(refused.stderr)
    assert "is unreachable: 20 connection attempts in a row failed" in line
    assert "ConnectionRefusedError" in line and "base_url" in line
    assert raw_records(tmp_path / "store") == []
    with ScriptedServer() as server:
        fixed = generate(tmp_path, server.url + "/v1")
    assert fixed.returncode == 0, fixed.stderr
    assert rationale_counts(tmp_path / "store") == {f"ex-{i}": 1 for i in range(40)}


def test_an_ibeta_typo_stops_before_any_store_then_the_fixed_file_runs(tmp_path):
    typo = json.loads(json.dumps(IBETA))
    typo["tasks"]["toy"]["input_template"] = "Q: {questoin}"
    (tmp_path / "ibeta.json").write_text(json.dumps(typo))
    with ScriptedServer() as server:
        bad_prompt = generate(tmp_path, server.url + "/v1")
        write_ibeta(tmp_path)
        bad_setting = generate(
            tmp_path, server.url + "/v1", "--gin.openai_http.OpenAIProvider.endpoint='chatt'"
        )
        asked, store_made = len(server.seen), (tmp_path / "store").exists()
        fixed = generate(tmp_path, server.url + "/v1")
    assert bad_prompt.returncode == 2 and bad_setting.returncode == 2
    assert "example id 'ex-0' of toy/train" in one_error_line(bad_prompt.stderr)
    assert "questoin" in bad_prompt.stderr
    assert "endpoint must be one of ['chat', 'completions']" in one_error_line(bad_setting.stderr)
    assert asked == 0 and not store_made
    assert fixed.returncode == 0, fixed.stderr
    assert len(RationaleStore.open_readonly(tmp_path / "store").texts("toy", "train")) == 6


@pytest.mark.parametrize("trickle_headers", [False, True], ids=["body", "headers"])
def test_a_trickled_answer_cannot_outlive_the_request_deadline(trickle_headers):
    # One byte every 50 ms: no socket read ever waits a whole second, the answer takes > 10 s.
    trickle = Reply(chunk=1, every_s=0.05, trickle_headers=trickle_headers)
    with ScriptedServer(lambda seen: trickle) as server:
        beta = OpenAIProvider(
            base_url=server.url + "/v1", model="m", api_key_env="", timeout_s=1.0, max_attempts=1
        )
        start = time.monotonic()
        with beta:
            ((_, outcome),) = beta.generate([("k", "a prompt")])
        elapsed = time.monotonic() - start
    assert isinstance(outcome, Failure) and outcome.kind == "timeout", outcome
    assert "timeout_s=1.0" in outcome.message
    assert elapsed < 5.0  # the deadline (1 s + the watchdog's poll), not the 10 s trickle


def test_a_query_string_in_the_base_url_is_sent_and_its_key_kept_out_of_logs(tmp_path):
    secret = "Qk7Vb2Nm9Xc4Lp"

    def flaky_echo(seen: Seen) -> Reply:
        if "number 0?" in seen.prompt and sum("number 0?" in s.prompt for s in server.seen) == 1:
            return Reply(status=503, body=f"busy; you asked {seen.path}".encode())
        return Reply()

    with ScriptedServer(flaky_echo) as server:
        base_url = f"{server.url}/v1?api-version=2024-06-01&key={secret}"
        done = generate(
            tmp_path,
            base_url,
            "--verbose",
            "--gin.openai_http.OpenAIProvider.backoff_initial_s=0.01",
        )
    assert done.returncode == 0, done.stderr
    assert {s.path for s in server.seen} == {
        f"/v1/chat/completions?api-version=2024-06-01&key={secret}"
    }
    assert "attempt 1/6 failed (http_503)" in done.stderr  # the echo went through the log...
    assert_no_fragment(
        secret, done.stdout, done.stderr, directory=tmp_path / "store"
    )  # ...redacted
    job = json.loads((tmp_path / "store" / "job.json").read_text())
    assert job["beta"]["settings"]["base_url"].endswith("/v1?api-version=2024-06-01&key=<redacted>")


def _kill_when(job: subprocess.Popen, records: pathlib.Path, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and job.poll() is None:
        if records.exists() and records.read_bytes().count(b"\n") >= at_least:
            break
        time.sleep(0.002)
    assert job.poll() is None, "the job ended before it could be killed"
    os.kill(job.pid, signal.SIGKILL)
    job.wait(10)


def test_kill_9_at_concurrency_64_re_asks_at_most_the_unsaved_bound(tmp_path):
    """Requests answered (or sent) but not saved at a kill are asked again on resume: at most
    `max_unsaved` per crash (docs/rationales.md), and nothing twice in the store. A fast server
    (10 ms) makes answers pile up faster than they are saved: the case the bound is for."""
    n, concurrency, max_unsaved = 2000, 64, 72
    ids = write_examples(tmp_path / "train.jsonl", n)
    write_ibeta(tmp_path)
    records = tmp_path / "store" / "records.jsonl"
    cmd = [
        sys.executable, "-m", "fiat_t5x.cli", "rationales", "generate", "--store",
        str(tmp_path / "store"), "--task", "toy", "--input", str(tmp_path / "train.jsonl"),
        "--prompts", str(tmp_path / "ibeta.json"), "--model", "m", "--api_key_env", "",
        "--concurrency", str(concurrency), "--no_progress",
        f"--gin.openai_http.OpenAIProvider.max_unsaved={max_unsaved}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    re_asks = []
    with ScriptedServer(latency_s=0.01) as server:
        url = ["--base_url", server.url + "/v1"]
        for kill_at in (300, 900):
            before = len(server.prompts())
            job = subprocess.Popen([*cmd, *url], env=env, cwd=REPO, stderr=subprocess.DEVNULL)
            _kill_when(job, records, kill_at)
            time.sleep(0.2)  # requests already on the wire are recorded by the server
            stored = {r["example_id"] for r in raw_records(tmp_path / "store")}
            asked = {
                f"ex-{m.group(1)}"
                for p in server.prompts()[before:]
                if (m := re.search(r"number (\d+)\?", p))
            }
            re_asks.append(len(asked - stored))
        done = subprocess.run(
            [*cmd, *url], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr
    print(f"re-asks per kill at concurrency {concurrency}: {re_asks}")
    assert sum(re_asks) > 0 and all(r <= max_unsaved for r in re_asks), re_asks
    assert rationale_counts(tmp_path / "store") == {i: 1 for i in ids}
    prompt = load_prompt(tmp_path / "ibeta.json", "toy")
    texts = RationaleStore.open_readonly(tmp_path / "store").texts("toy", "train")
    assert texts == {
        f"ex-{i}": answer_text(prompt.render({"question": question(i)})) for i in range(n)
    }
