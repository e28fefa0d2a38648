"""The sweep runner on the fake trainer: end to end, failures, interruption and re-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from fiat_t5x.sweeps import cli
from fiat_t5x.sweeps.metrics import final_metrics, read_metric_history
from fiat_t5x.sweeps.runner import SweepRunner, variant_status
from fiat_t5x.sweeps.spec import load_sweep
from tests.sweeps.conftest import fake_command, two_variant_sweep, write_sweep


def _invocations(model_dir) -> int:
    path = model_dir / "invocations"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_two_variants_end_to_end(gin_tree):
    sweep = load_sweep(two_variant_sweep(gin_tree))
    root = gin_tree / "root"
    results = SweepRunner(sweep, root).run()
    assert [(r.name, r.state) for r in results] == [("fiat", "done"), ("wo_cot", "done")]
    for name, score in (("fiat", 80.0), ("wo_cot", 70.0)):
        done = json.loads((root / name / "DONE").read_text())
        # The DONE marker's numbers are the last record of the variant's own metrics file.
        last = json.loads((root / name / "metrics.jsonl").read_text().splitlines()[-1])
        assert done["final_metrics"]["eval/demo/accuracy"] == last["eval/demo/accuracy"] == score
        assert done["final_step"] == last["step"] == 30
        assert "fake_trainer: training into" in (root / name / "run.log").read_text()
        assert (root / name / "command.sh").read_text().startswith(sys.executable)
    # Running again does nothing: both are skipped, neither trainer is started.
    again = SweepRunner(sweep, root).run()
    assert [r.state for r in again] == ["skipped", "skipped"]
    assert _invocations(root / "fiat") == _invocations(root / "wo_cot") == 1


def test_failed_variant_is_reported_and_others_continue(gin_tree):
    path = write_sweep(
        gin_tree,
        f"""\
        name: failing
        gin_search_paths: ["."]
        command: {json.dumps(fake_command())}
        variants:
          broken: {{gin_files: [gin/base.gin], bindings: {{EXIT_CODE: 3}}}}
          missing_gin: {{gin_files: [gin/nope.gin]}}
          good: {{gin_files: [gin/fiat.gin]}}
        """,
    )
    sweep = load_sweep(path)
    root = gin_tree / "root"
    results = {r.name: r for r in SweepRunner(sweep, root).run()}
    assert results["broken"].state == "failed" and results["broken"].returncode == 3
    assert "simulated failure" in results["broken"].log_path.read_text()
    assert results["missing_gin"].state == "failed"
    assert "gin/nope.gin" in results["missing_gin"].message
    assert results["good"].state == "done"
    assert variant_status(root, "broken").state == "failed"
    assert not (root / "broken" / "DONE").exists()

    # fail_fast stops at the first failure.
    root2 = gin_tree / "root2"
    results = SweepRunner(sweep, root2, fail_fast=True).run()
    assert [r.name for r in results] == ["broken"]
    assert variant_status(root2, "good").state == "missing"


def test_interrupted_sweep_resumes_and_skips_finished(gin_tree):
    """Kill the whole sweep (SIGKILL) while the second variant trains, then run it again."""
    gate = gin_tree / "let_wo_cot_finish"
    sweep_path = two_variant_sweep(gin_tree, wait_for=str(gate))
    root = gin_tree / "root"
    argv = [
        sys.executable,
        "-m",
        "fiat_t5x.cli",
        "sweep",
        "run",
        str(sweep_path),
        "--root",
        str(root),
    ]
    proc = subprocess.Popen(
        argv, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while _invocations(root / "wo_cot") == 0:
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "the second variant never started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert variant_status(root, "fiat").state == "done"
    assert variant_status(root, "wo_cot").state == "incomplete"

    gate.touch()
    assert cli.main(["run", str(sweep_path), "--root", str(root)]) == 0
    assert _invocations(root / "fiat") == 1  # finished variant skipped
    assert _invocations(root / "wo_cot") == 2  # interrupted variant run again
    done = json.loads((root / "wo_cot" / "DONE").read_text())
    assert done["final_metrics"] == final_metrics(read_metric_history(root / "wo_cot"))


def test_cli_exit_code_and_status(gin_tree, capsys):
    sweep_path = write_sweep(
        gin_tree,
        f"""\
        name: s
        gin_search_paths: ["."]
        command: {json.dumps(fake_command())}
        variants:
          bad: {{gin_files: [gin/base.gin], bindings: {{EXIT_CODE: 5}}}}
          ok: {{gin_files: [gin/base.gin]}}
        """,
    )
    root = gin_tree / "root"
    assert cli.main(["run", str(sweep_path), "--root", str(root), "--only", "ok"]) == 0
    assert cli.main(["run", str(sweep_path), "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "bad: failed (exited with code 5)" in out and str(root / "bad" / "run.log") in out
    assert cli.main(["status", str(sweep_path), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "done" in out and "failed" in out


def test_run_adds_gin_flags_to_every_variant(gin_tree, capsys):
    sweep_path = two_variant_sweep(gin_tree)
    root = gin_tree / "root"
    args = ["run", str(sweep_path), "--root", str(root), "--gin.SCORE=42.0"]
    assert cli.main(args) == 0
    for name in ("fiat", "wo_cot"):
        assert _last_record_of(root / name)["eval/demo/accuracy"] == 42.0
        assert "--gin.SCORE=42.0" in (root / name / "command.sh").read_text()
    assert cli.main(["status", str(sweep_path), "--root", str(root), "--gin.SCORE=1"]) == 2
    assert "is an option of `sweep run` only" in capsys.readouterr().err


def _last_record_of(model_dir) -> dict:
    return json.loads((model_dir / "metrics.jsonl").read_text().splitlines()[-1])


def test_variants_as_two_local_processes(gin_tree):
    sweep_path = two_variant_sweep(gin_tree)
    root = gin_tree / "root"
    assert cli.main(["run", str(sweep_path), "--root", str(root), "--num_processes", "2"]) == 0
    for name in ("fiat", "wo_cot"):
        assert _invocations(root / name) == 2  # one per "host"
        assert (root / name / "run.proc1.log").exists()
        assert variant_status(root, name).state == "done"
