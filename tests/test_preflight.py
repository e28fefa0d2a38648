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
def report():
    """The tiny LoRA run on a data 4 x model 2 mesh, compiled in this process (8 devices)."""
    return preflight.analyze(TRAIN_FLAGS, preflight.Target("8 chips", 8, 16 * preflight.GIB))


def test_the_report_measures_the_configured_run(report):
    assert report.mesh == {"data": 4, "model": 2}
    assert report.batch_size == 32 and report.feature_lengths == {"inputs": 64, "targets": 16}
    assert 0 < report.n_trainable < report.n_frozen  # LoRA factors vs the frozen base
    assert report.step.temporaries > 0 and report.step.arguments > 0
    assert report.step.aliased > 0  # the state is donated
    assert set(report.startup) == {"init", "optimizer_state"}
    assert report.flops_per_device and report.flops_per_device > 0
    assert report.examples["mlp_kernel"].spec == "(None, 'model')"
    assert report.examples["lora_a"].spec == "(None, None)"
    text = preflight.format_report(report)
    assert "mesh: data 4 x model 2" in text and "verdict: FITS" in text
    assert preflight.exit_code(report) == 0


def test_too_little_memory_gives_does_not_fit_with_suggestions(report):
    small = dataclasses.replace(report.target, memory_bytes=report.step.total // 4)
    too_big = dataclasses.replace(report, target=small)
    text = preflight.format_report(too_big)
    assert preflight.exit_code(too_big) == 1
    assert "verdict: DOES NOT FIT" in text
    assert "NUM_MICROBATCHES = 2" in text and "NUM_PARTITIONS = 4" in text
    assert "frozen_dtype = 'bfloat16'" in text


@pytest.mark.slow
def test_the_command_reexecs_with_fake_devices_and_reports(tmp_path):
    out = tmp_path / "report.json"
    flags = [*TRAIN_FLAGS, "--gin.NUM_PARTITIONS=1", "--gin.NUM_MICROBATCHES=2"]
    command = [sys.executable, "-m", "fiat_t5x.cli", "preflight", *flags, "--json", str(out)]
    result = subprocess.run(
        [*command, "--target", "v5e-4", "--device_memory_gib", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mesh: data 4 x model 1" in result.stdout and "verdict: FITS" in result.stdout
    data = json.loads(out.read_text())
    assert data["fits"] and data["num_microbatches"] == 2 and data["target"]["devices"] == 4
    assert set(data["per_device_bytes"]) >= {"arguments", "outputs", "temporaries", "total"}
