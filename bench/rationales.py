"""The β client: requests/s against the fake OpenAI server, and requests re-asked per kill -9.

    .venv/bin/python bench/rationales.py                      # throughput: latency 0.1 s, c 1, 8, 64
    .venv/bin/python bench/rationales.py --latency_s 0.05 --concurrency 64 --rounds 20
    .venv/bin/python bench/rationales.py --crash --concurrency 64 --kills 6   # re-asks per crash

Throughput: the server runs in its own process (so it does not share the client's GIL) and
sleeps `latency_s` per request, standing in for a model's decoding time. Ideal throughput is
concurrency / latency; we report the measured rate as a fraction of it, for the provider alone
(`OpenAIProvider.generate`), and for the whole job (prompt rendering, store appends with fsync,
progress accounting) writing into a fresh store, with the provider's `max_unsaved` at 1×, 1.5×
and 2× the concurrency (the bound on requests a crash can cost).

Crash (`--crash`): `fiat-t5x rationales generate` runs as a subprocess against the server (in
this process) and is killed with SIGKILL at a random point, `kills` times, then resumed to the
end. A re-ask is an example whose request reached the server before the kill but whose outcome
was not on disk: it is asked (and paid) again on resume. We print re-asks per kill against
the concurrency and against `max_unsaved`, the bound docs/rationales.md states.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pathlib
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from fiat_t5x.rationales.fake_openai import FakeOpenAIServer
from fiat_t5x.rationales.generate import Example, generate_rationales, identity_for
from fiat_t5x.rationales.prompts import parse_prompts
from fiat_t5x.rationales.providers.openai_http import OpenAIProvider
from fiat_t5x.rationales.store import RationaleStore

REPO = pathlib.Path(__file__).resolve().parents[1]
IBETA = {
    "tasks": {
        "bench": {
            "instruction": "Answer step by step.",
            "input_template": "Q: {question}",
            "exemplars": [{"fields": {"question": "1+1?"}, "rationale": "1+1=2.", "answer": "2"}],
        }
    }
}
PROMPTS = parse_prompts(IBETA)["bench"]
UNSAVED_FACTORS = (1.0, 1.5, 2.0)


def _serve(latency_s: float, port_queue, stop_event) -> None:
    with FakeOpenAIServer(latency_s=latency_s) as server:
        port_queue.put(server.base_url)
        stop_event.wait()


def _provider(base_url: str, concurrency: int, max_unsaved: int | None = None) -> OpenAIProvider:
    return OpenAIProvider(
        base_url=base_url,
        model="bench",
        api_key_env="",
        concurrency=concurrency,
        max_unsaved=max_unsaved,
    )


def provider_rate(base_url: str, concurrency: int, n: int) -> float:
    with _provider(base_url, concurrency) as beta:
        start = time.perf_counter()
        count = sum(1 for _ in beta.generate((i, f"Q: {i}") for i in range(n)))
        elapsed = time.perf_counter() - start
    assert count == n
    return n / elapsed


def job_rate(base_url: str, concurrency: int, n: int, max_unsaved: int) -> float:
    examples = [Example(str(i), {"question": f"{i}+{i}?"}) for i in range(n)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        _provider(base_url, concurrency, max_unsaved) as beta,
    ):
        identity = identity_for(beta, PROMPTS)
        with RationaleStore.open_for_writing(pathlib.Path(tmp) / "s", identity) as store:
            start = time.perf_counter()
            summary = generate_rationales(
                examples,
                task="bench",
                split="train",
                prompt=PROMPTS,
                provider=beta,
                store=store,
                progress=False,
            )
            elapsed = time.perf_counter() - start
    assert summary.generated == n, summary.describe()
    return n / elapsed


def throughput(args: argparse.Namespace) -> None:
    ctx = multiprocessing.get_context("spawn")
    urls, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(args.latency_s, urls, stop), daemon=True)
    server.start()
    base_url = urls.get(timeout=60)
    rows = []
    try:
        provider_rate(base_url, 4, 8)  # warm up imports and connections
        for c in args.concurrency:
            n = c * args.rounds
            ideal = c / args.latency_s
            row = {"concurrency": c, "requests": n, "ideal_rps": ideal}
            p = statistics.median(provider_rate(base_url, c, n) for _ in range(args.trials))
            row["provider"] = p / ideal
            for factor in UNSAVED_FACTORS:
                bound = max(c, round(factor * c))
                j = statistics.median(job_rate(base_url, c, n, bound) for _ in range(args.trials))
                row[f"job_{factor}"] = j / ideal
            rows.append(row)
    finally:
        stop.set()
        server.join(10)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"latency {args.latency_s * 1000:.0f} ms; {_machine()}")
    heads = " | ".join(f"job, max_unsaved {f}×c" for f in UNSAVED_FACTORS)
    print(f"| concurrency | requests | ideal req/s | provider | {heads} |")
    print("|---:|---:|---:|---:|" + "---:|" * len(UNSAVED_FACTORS))
    for r in rows:
        jobs = " | ".join(f"{r[f'job_{f}']:.2f}" for f in UNSAVED_FACTORS)
        print(
            f"| {r['concurrency']} | {r['requests']} | {r['ideal_rps']:.0f} | "
            f"{r['provider']:.2f} | {jobs} |"
        )


def _job_command(tmp: pathlib.Path, base_url: str, concurrency: int, max_unsaved: int) -> list[str]:
    return [
        sys.executable, "-m", "fiat_t5x.cli", "rationales", "generate",
        "--store", str(tmp / "store"), "--task", "bench", "--input", str(tmp / "in.jsonl"),
        "--prompts", str(tmp / "ibeta.json"), "--base_url", base_url, "--model", "bench",
        "--api_key_env", "", "--concurrency", str(concurrency), "--no_progress",
        f"--gin.openai_http.OpenAIProvider.max_unsaved={max_unsaved}",
    ]  # fmt: skip


def _stored_ids(store: pathlib.Path) -> set[str]:
    path = store / "records.jsonl"
    if not path.exists():
        return set()
    ids = set()
    for line in path.read_bytes().split(b"\n")[:-1]:
        try:
            ids.add(json.loads(line.split(b" ", 1)[1])["example_id"])
        except (ValueError, IndexError, KeyError):
            continue  # a torn tail: not saved
    return ids


def crash_re_asks(
    concurrency: int, max_unsaved: int, kills: int, latency_s: float, n: int, seed: int
) -> list[int]:
    """Re-asks per SIGKILL of a job at `concurrency` with the provider bound `max_unsaved`."""
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp_name, FakeOpenAIServer(latency_s=latency_s) as server:
        tmp = pathlib.Path(tmp_name)
        (tmp / "ibeta.json").write_text(json.dumps(IBETA))
        with open(tmp / "in.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"id": f"q{i}", "question": f"question {i}?"}) + "\n")
        cmd = _job_command(tmp, server.base_url, concurrency, max_unsaved)
        re_asks = []
        for k in range(kills):
            before = len(server.requests)
            done_before = len(_stored_ids(tmp / "store"))
            target = done_before + rng.randint(concurrency * 2, concurrency * 6)
            job = subprocess.Popen(
                cmd, env=env, cwd=REPO, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            )
            while job.poll() is None and len(_stored_ids(tmp / "store")) < target:
                time.sleep(0.005)
            if job.poll() is not None:
                raise SystemExit(f"kill {k}: the job ended before the kill; use more examples")
            os.kill(job.pid, signal.SIGKILL)
            job.wait()
            time.sleep(latency_s + 0.2)  # requests on the wire reach the server's record
            stored = _stored_ids(tmp / "store")
            asked = {
                f"q{m.group(1)}"
                for r in server.requests[before:]
                if (m := re.search(r"question (\d+)\?", r.prompt))
            }
            re_asks.append(len(asked - stored))
        subprocess.run(cmd, env=env, cwd=REPO, check=True, capture_output=True)
        assert len(_stored_ids(tmp / "store")) == n
    return re_asks


def crash(args: argparse.Namespace) -> None:
    print(
        f"kill -9 of `fiat-t5x rationales generate`; latency {args.latency_s * 1000:.0f} ms; {_machine()}"
    )
    print(
        "| concurrency | max_unsaved | kills | re-asks per kill | mean | max | max / concurrency | max / max_unsaved |"
    )
    print("|---:|---:|---:|---|---:|---:|---:|---:|")
    for c in args.concurrency:
        for factor in UNSAVED_FACTORS:
            bound = max(c, round(factor * c))
            n = c * 6 * (args.kills + 2)
            counts = crash_re_asks(c, bound, args.kills, args.latency_s, n, seed=c)
            print(
                f"| {c} | {bound} | {args.kills} | {counts} | {statistics.mean(counts):.1f} | "
                f"{max(counts)} | {max(counts) / c:.2f} | {max(counts) / bound:.2f} |"
            )


def _machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.node()}, {os.cpu_count()} CPUs, load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, "
        f"python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency_s", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--rounds", type=int, default=20, help="requests per worker per trial")
    parser.add_argument("--trials", type=int, default=3, help="median of this many trials")
    parser.add_argument("--crash", action="store_true", help="measure re-asks per kill -9")
    parser.add_argument("--kills", type=int, default=6, help="kills per setting (--crash)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    (crash if args.crash else throughput)(args)


if __name__ == "__main__":
    main()
