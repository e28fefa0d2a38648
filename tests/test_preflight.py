"""`fiat-t5x preflight`: the tiny config compiled ahead of time for fake targets, with the pod
settings (gin/partitioning/pod.gin) and the flags bench/scale_aot.py builds for its grid."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from fiat_t5x import preflight
from tests import gpu_host
from tests.training.training_helpers import REPO


def _scale_aot():
    spec = importlib.util.spec_from_file_location("scale_aot", REPO / "bench" / "scale_aot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# What `bench/scale_aot.py --model flan_t5/tiny --peft lora --mesh 4x2 --batch 32
# --lengths 64,16` hands preflight: the grid's gin files (pod.gin included) on the tiny model.
SCALE_AOT_ARGS = argparse.Namespace(
    model="flan_t5/tiny",
    peft="lora",
    mesh="4x2",
    batch=32,
    lengths="64,16",
    memory_gib=16.0,
    pod_gin="partitioning/pod.gin",
)
PREFLIGHT_ARGV = _scale_aot().preflight_argv(SCALE_AOT_ARGS, [])
TRAIN_FLAGS = PREFLIGHT_ARGV[: PREFLIGHT_ARGV.index("--devices")]  # the gin part


def test_scale_aot_puts_pod_gin_after_the_model_files():
    """pod.gin overrides the architecture's SCAN_LAYERS / REMAT_POLICY, so it comes after them."""
    files = [flag for flag in TRAIN_FLAGS if flag.startswith("--gin_file=")]
    assert files == [
        "--gin_file=models/flan_t5/tiny.gin",
        "--gin_file=peft/lora.gin",
        "--gin_file=runs/finetune.gin",
        "--gin_file=partitioning/pod.gin",
    ]
    assert PREFLIGHT_ARGV[len(TRAIN_FLAGS) :] == ["--devices", "8", "--device_memory_gib", "16.0"]


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
    command = [sys.executable, "-m", "fiat_t5x.cli", "preflight", *PREFLIGHT_ARGV]
    result = subprocess.run(
        [*command, "--json", str(out)],
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
    # pod.gin's settings, through its include of models/pod_memory.gin, in the compiled run:
    assert data["knobs"] == {
        "dtype": "bfloat16",
        "param_dtype": "float32",
        "scan_layers": True,
        "remat_policy": "full",
        "param_scan_axis": 0,
        "activation_length": "model",
    }
    assert data["frozen_dtype"] == "bfloat16" and data["frozen_f32_bytes"] == 0
    assert data["batch_size"] == 32 and data["feature_lengths"] == {"inputs": 64, "targets": 16}
    assert 0 < data["n_trainable"] < data["n_frozen"]  # LoRA factors vs the frozen base
    step = data["per_device_bytes"]
    assert step["temporaries"] > 0 and step["arguments"] > 0 and step["aliased"] > 0  # donated
    assert set(step) == {"arguments", "outputs", "aliased", "temporaries", "total"}
    assert set(data["startup_per_device_bytes"]) == {"init", "optimizer_state"}
    assert data["flops_per_device"] > 0
    # Stacked layers on axis 0: [layers, embed, mlp] split over `model`; LoRA factors replicated.
    assert data["example_shardings"]["mlp_kernel"]["path"] == "decoder/layers/mlp/wi_0/kernel"
    assert data["example_shardings"]["mlp_kernel"]["spec"] == "(None, None, 'model')"
    assert data["example_shardings"]["lora_a"]["spec"] == "(None, None, None)"


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
    assert "frozen_dtype = 'bfloat16'" not in text  # pod.gin's base is bf16 already
    assert "REMAT_POLICY" not in text  # and rematerialised
    fp32_base = dataclasses.replace(
        too_big, frozen_dtype="float32", frozen_f32_bytes=report.step.arguments
    )
    assert "frozen_dtype = 'bfloat16'" in preflight.format_report(fp32_base)


def test_the_device_check_imports_nothing_the_gpu_machine_lacks_and_matches_the_gin_sizes():
    """bench/aot_device_check.py runs where only JAX, flax, optax and orbax are installed: its
    imports must not reach gin, SeqIO or TensorFlow; its Flan-T5 sizes are the gin files'."""
    blocker = (
        gpu_host.BLOCK_MISSING + "import json, runpy\n"
        "module = runpy.run_path('bench/aot_device_check.py', run_name='device_check')\n"
        "print(json.dumps(module['SIZES']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocker],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sizes = json.loads(result.stdout.strip().splitlines()[-1])
    for size in ("base", "large", "xl", "xxl"):
        gin_text = (REPO / "gin" / "models" / "flan_t5" / f"{size}.gin").read_text()
        in_gin = {k: int(v) for k, v in re.findall(r"^\s+(\w+) = (\d+)$", gin_text, re.M)}
        layers = in_gin.pop("num_encoder_layers")
        assert in_gin.pop("num_decoder_layers") == layers
        assert {**in_gin, "layers": layers} == sizes[size], size
