"""`fiat-t5x preflight`: the tiny config compiled ahead of time for fake targets."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from fiat_t5x import preflight
from tests.training.training_helpers import REPO, TINY_GIN

TRAIN_FLAGS = [
    f"--gin_file={TINY_GIN}",
    "--gin_file=runs/finetune.gin",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
    "--gin.BATCH_SIZE=32",
    "--gin.NUM_PARTITIONS=2",
]


def test_targets_count_chips_like_the_slice_names():
    v4 = preflight.parse_target("v4-64")  # v4 names count TensorCores: 32 chips
    assert (v4.devices, v4.memory_bytes) == (32, 32 * preflight.GIB)
    v5e = preflight.parse_target("v5e-32")
    assert (v5e.devices, v5e.memory_bytes, v5e.peak_flops) == (32, 16 * preflight.GIB, 197e12)
    with pytest.raises(ValueError, match="v5e-32"):
        preflight.parse_target("tpu-32")


def test_bad_flags_are_one_line_errors(capsys):
    assert preflight.main([*TRAIN_FLAGS, "--target", "x9-3"]) == 2
    assert preflight.main([*TRAIN_FLAGS, "--devices", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "--device_memory_gib" in err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The command on the tiny LoRA run for 8 fake chips (data 4 x model 2): it re-runs itself
    in a subprocess with the fake devices set up, prints the report and writes its JSON."""
    out = tmp_path_factory.mktemp("preflight") / "report.json"
    command = [sys.executable, "-m", "fiat_t5x.cli", "preflight", *TRAIN_FLAGS]
    result = subprocess.run(
        [*command, "--target", "v5e-8", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return result, json.loads(out.read_text()) if out.exists() else None


@pytest.mark.slow
def test_the_command_reports_the_configured_run_and_exits_0(run):
    result, data = run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mesh: data 4 x model 2" in result.stdout and "verdict: FITS" in result.stdout
    assert data["fits"] and data["target"]["devices"] == 8 and not data["cpu_hoisting"]
    assert data["batch_size"] == 32 and data["feature_lengths"] == {"inputs": 64, "targets": 16}
    assert 0 < data["n_trainable"] < data["n_frozen"]  # LoRA factors vs the frozen base
    step = data["per_device_bytes"]
    assert step["temporaries"] > 0 and step["arguments"] > 0 and step["aliased"] > 0  # donated
    assert set(step) == {"arguments", "outputs", "aliased", "temporaries", "total"}
    assert set(data["startup_per_device_bytes"]) == {"init", "optimizer_state"}
    assert data["flops_per_device"] > 0
    assert data["example_shardings"]["mlp_kernel"]["spec"] == "(None, 'model')"
    assert data["example_shardings"]["lora_a"]["spec"] == "(None, None)"


@pytest.mark.slow
def test_too_little_memory_gives_does_not_fit_with_suggestions(run):
    report = preflight.Report.from_dict(run[1])
    assert preflight.exit_code(report) == 0
    small = dataclasses.replace(report.target, memory_bytes=report.step.total // 4)
    too_big = dataclasses.replace(report, target=small)
    text = preflight.format_report(too_big)
    assert preflight.exit_code(too_big) == 1
    assert "verdict: DOES NOT FIT" in text
    assert "NUM_MICROBATCHES = 2" in text and "NUM_PARTITIONS = 4" in text
    assert "frozen_dtype = 'bfloat16'" in text
