"""`python -m fiat_t5x.train` end to end: config errors, config.gin, the same losses on
1 device / a 4x2 mesh (fp32 and bf16) / 2 processes, exact resume after SIGKILL, SIGTERM saves
and exits."""

import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from fiat_t5x import train as train_script
from fiat_t5x.sweeps.metrics import read_metric_history, series
from tests.training.training_helpers import REPO, cli_args, cli_env, loss_curve, run_cli

REFERENCE_STEPS = 40


def test_missing_required_values_are_named(capsys):
    code = train_script.main(
        ["--gin_file=tests/training/tiny_model.gin", "--gin_file=runs/finetune.gin"]
    )
    err = capsys.readouterr().err
    assert code == 2
    for name in (
        "MODEL_DIR",
        "MIXTURE_OR_TASK_NAME",
        "TASK_FEATURE_LENGTHS",
        "TRAIN_STEPS",
        "INITIAL_CHECKPOINT_PATH",
    ):
        assert name in err
    assert "--gin.MODEL_DIR=" in err


def test_unknown_task_fails_at_start_with_its_name(tmp_path, capsys):
    args = cli_args(str(tmp_path), "--gin.MIXTURE_OR_TASK_NAME='no_such_task'")
    assert train_script.main(args) == 2
    err = capsys.readouterr().err
    assert "'no_such_task' is not a registered SeqIO task" in err
    assert not (tmp_path / "checkpoint_1").exists()


def test_a_frozen_dtype_that_is_no_dtype_fails_at_start_with_the_fix(tmp_path, capsys):
    args = cli_args(str(tmp_path), "--gin.optimizers.TrainableSelector.frozen_dtype='bf16'")
    assert train_script.main(args) == 2
    err = capsys.readouterr().err
    assert "frozen_dtype='bf16' is not a dtype: use 'bfloat16'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "checkpoint_1").exists()


def test_unknown_flag_and_missing_gin_file(capsys):
    assert train_script.main(["--gin_file=nope.gin"]) == 2
    assert "not found" in capsys.readouterr().err
    assert train_script.main(["--bogus"]) == 2
    assert "unknown argument" in capsys.readouterr().err


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run on one device."""
    model_dir = str(tmp_path_factory.mktemp("reference"))
    result = run_cli(cli_args(model_dir, "--gin.CHECKPOINT_PERIOD=4", steps=REFERENCE_STEPS))
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


def _final_params(model_dir: str, step: int):
    tree = ocp.PyTreeCheckpointer().restore(os.path.join(model_dir, f"checkpoint_{step}", "state"))
    return tree["params"]


def _assert_trees_close(a, b, rtol):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_trees_close(a[k], b[k], rtol)
    else:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=1e-7)


@pytest.mark.slow
def test_reference_run_writes_config_metrics_and_checkpoints(reference):
    config = open(os.path.join(reference, "config.gin")).read()
    assert "MIXTURE_OR_TASK_NAME = 'fiat_demo_plain'" in config
    assert f"TRAIN_STEPS = {REFERENCE_STEPS}" in config
    curve = loss_curve(reference)
    assert sorted(curve) == list(range(1, REFERENCE_STEPS + 1))
    assert np.mean([curve[s] for s in range(31, 41)]) < np.mean([curve[s] for s in range(1, 11)])
    rows = [json.loads(line) for line in open(os.path.join(reference, "metrics.jsonl"))]
    assert rows[0] == {"step": 0, "run": rows[1]["run"], "writer": "train", "event": "run_start"}
    record = rows[1]
    assert record["writer"] == "train" and {r["run"] for r in rows[:REFERENCE_STEPS]} == {
        record["run"]
    }
    for key in ("train/learning_rate", "train/steps_per_sec", "train/tokens_per_sec", "train/mfu"):
        assert key in record
    assert f"checkpoint_{REFERENCE_STEPS}" in os.listdir(reference)


@pytest.mark.slow
def test_same_losses_on_a_4x2_mesh(reference, tmp_path):
    args = cli_args(str(tmp_path), "--gin_file=partitioning/model_parallel_2.gin", steps=6)
    result = run_cli(args, env=cli_env(devices=8))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'data': 4, 'model': 2" in result.stderr
    ref, got = loss_curve(reference), loss_curve(str(tmp_path))
    np.testing.assert_allclose(
        [got[s] for s in range(1, 7)], [ref[s] for s in range(1, 7)], rtol=2e-5
    )


@pytest.mark.slow
def test_bf16_on_a_4x2_mesh_matches_one_device(tmp_path):
    """The CPU's bf16 path merges the batch and heads axes in attention (`cpu_ops`' flat forms),
    which a mesh shards over both; the sharded run must train like the unsharded one."""
    bf16 = "--gin.config.T5Config.dtype='bfloat16'"
    curves = []
    for name, devices, extra in (
        ("one", 1, ()),
        ("mesh", 8, ("--gin_file=partitioning/model_parallel_2.gin",)),
    ):
        result = run_cli(cli_args(str(tmp_path / name), bf16, *extra, steps=4), cli_env(devices))
        assert result.returncode == 0, result.stderr[-3000:]
        curves.append(loss_curve(str(tmp_path / name)))
    one, mesh = curves
    assert sorted(one) == sorted(mesh) == [1, 2, 3, 4]
    # bf16 rounding differs with the summation order of the sharded dots: well under 1e-3.
    np.testing.assert_allclose([mesh[s] for s in one], [one[s] for s in one], rtol=1e-3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_same_losses_as_two_processes_on_a_4x2_mesh(reference, tmp_path):
    args = cli_args(str(tmp_path), "--gin_file=partitioning/model_parallel_2.gin", steps=6)
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "fiat_t5x.train", *args],
            cwd=REPO,
            env=cli_env(
                devices=4,
                FIAT_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                FIAT_NUM_PROCESSES="2",
                FIAT_PROCESS_ID=str(i),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "process 1 of 2 joined" in outputs[1]
    ref, got = loss_curve(reference), loss_curve(str(tmp_path))
    np.testing.assert_allclose(
        [got[s] for s in range(1, 7)], [ref[s] for s in range(1, 7)], rtol=2e-5
    )


def _start(args, **env):
    return subprocess.Popen(
        [sys.executable, "-m", "fiat_t5x.train", *args],
        cwd=REPO,
        env=cli_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path, proc, timeout=240):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, f"run ended early: {proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_then_restart_ends_like_the_uninterrupted_run(reference, tmp_path):
    model_dir = str(tmp_path)
    args = cli_args(
        model_dir, "--gin.CHECKPOINT_PERIOD=4", "--gin.KEEP_CHECKPOINTS=20", steps=REFERENCE_STEPS
    )
    proc = _start(args)
    _wait_for(os.path.join(model_dir, "checkpoint_8"), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(
        int(n.split("_")[1]) for n in os.listdir(model_dir) if n.startswith("checkpoint_")
    )
    assert killed_at < REFERENCE_STEPS, "the run finished before it could be killed"
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"restored {model_dir}/checkpoint_{killed_at}" in result.stderr
    ref, got = loss_curve(reference), loss_curve(model_dir)
    assert sorted(got) == sorted(ref)
    np.testing.assert_allclose(
        [got[s] for s in sorted(got)], [ref[s] for s in sorted(ref)], rtol=1e-6
    )
    _assert_trees_close(
        _final_params(model_dir, REFERENCE_STEPS), _final_params(reference, REFERENCE_STEPS), 1e-6
    )


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    model_dir = str(tmp_path)
    proc = _start(cli_args(model_dir, "--gin.CHECKPOINT_PERIOD=1000", steps=100000))
    metrics = os.path.join(model_dir, "metrics.jsonl")
    _wait_for(metrics, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "stop requested" in err
    steps = [int(n.split("_")[1]) for n in os.listdir(model_dir) if n.startswith("checkpoint_")]
    assert len(steps) == 1 and 0 < steps[0] < 100000
    assert max(loss_curve(model_dir)) == steps[0]


@pytest.mark.slow
def test_eval_and_infer_read_the_trained_checkpoint(reference, capsys, tmp_path):
    from fiat_t5x import eval as eval_script
    from fiat_t5x import infer as infer_script

    common = [
        "--gin_file=tests/training/tiny_model.gin",
        f"--gin.MODEL_DIR='{reference}'",
        "--gin.MIXTURE_OR_TASK_NAME='fiat_demo_plain'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 8}",
        "--gin.INITIAL_CHECKPOINT_PATH=None",
    ]
    assert (
        eval_script.main(
            [*common, "--gin_file=runs/eval.gin", "--gin.eval_script.evaluate.num_examples=16"]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    ref_curve = loss_curve(reference)
    assert "eval/fiat_demo_plain/accuracy" in results
    # Its per-example records stand apart from training's (which sweep reports bootstrap).
    command_records = pathlib.Path(reference, "records", "eval_command", "fiat_demo_plain")
    assert list(command_records.glob("step_*.jsonl"))
    # A random-init base is rebuilt from RANDOM_SEED: another seed is another (wrong) base.
    eval_args = [*common, "--gin_file=runs/eval.gin", "--gin.eval_script.evaluate.num_examples=16"]
    assert (
        eval_script.main(
            [*eval_args, "--gin.RANDOM_SEED=1", "--gin.eval_script.evaluate.run_seqio=False"]
        )
        == 0
    )
    other_seed = json.loads(capsys.readouterr().out)
    assert other_seed["eval/loss_per_token"] != pytest.approx(
        results["eval/loss_per_token"], rel=1e-3
    )
    # The trained checkpoint was read: the same base without it (an empty MODEL_DIR) is worse.
    untrained_dir = tmp_path / "untrained"
    untrained_dir.mkdir()
    untrained_args = [a for a in eval_args if not a.startswith("--gin.MODEL_DIR=")]
    assert (
        eval_script.main(
            [
                *untrained_args,
                f"--gin.MODEL_DIR='{untrained_dir}'",
                "--gin.eval_script.evaluate.run_seqio=False",
            ]
        )
        == 0
    )
    untrained = json.loads(capsys.readouterr().out)
    assert results["eval/loss_per_token"] < untrained["eval/loss_per_token"]
    assert ref_curve  # eval appended its record after the training records, marked as its own
    last = [json.loads(line) for line in open(os.path.join(reference, "metrics.jsonl"))][-1]
    assert last["step"] == REFERENCE_STEPS and "eval/token_accuracy" in last
    assert last["writer"] == "eval_command" and last["eval_split"] == "validation"
    assert (
        infer_script.main([*common, "--gin_file=runs/infer.gin", "--gin.INFER_BATCH_SIZE=8"]) == 0
    )
    path = capsys.readouterr().out.strip().splitlines()[-1]
    records = [json.loads(line) for line in open(path)]
    from fiat_tasks import demo

    assert len(records) == demo.SPLIT_SIZES["test"] and records[0]["step"] == REFERENCE_STEPS
    assert {"inputs", "targets", "prediction", "id", "language"} <= set(records[0])


def test_train_steps_count_from_zero_and_the_log_says_so_when_the_base_has_a_step(caplog):
    with caplog.at_level(logging.WARNING):
        train_script.explain_train_steps(2000, "/ckpt/flan_t5_base/checkpoint_1184000/")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "this run trains 2000 steps" in line and "TRAIN_STEPS=1186000" in line
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # written the T5X way: named, with the fix
        train_script.explain_train_steps(1186000, "/ckpt/flan_t5_base/checkpoint_1184000")
    assert "set TRAIN_STEPS=2000 for 2000 fine-tuning steps" in caplog.records[-1].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a Hugging Face directory has no step
        train_script.explain_train_steps(2000, "/ckpt/flan-t5-base")
    assert not caplog.records


def _copy_of(reference, tmp_path) -> str:
    model_dir = str(tmp_path / "run")
    shutil.copytree(reference, model_dir)
    return model_dir


@pytest.mark.slow
def test_a_damaged_checkpoint_is_set_aside_retrained_and_saved_again(reference, tmp_path):
    model_dir = _copy_of(reference, tmp_path)
    step_dir = os.path.join(model_dir, f"checkpoint_{REFERENCE_STEPS}")
    data = [
        os.path.join(root, name)
        for root, _, names in os.walk(os.path.join(step_dir, "state", "d"))
        for name in names
    ]
    assert data
    for path in data:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    args = cli_args(model_dir, "--gin.CHECKPOINT_PERIOD=4", steps=REFERENCE_STEPS)
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"skipping damaged checkpoint {step_dir}:" in result.stderr
    assert f"restored {model_dir}/checkpoint_{REFERENCE_STEPS - 4}" in result.stderr
    aside = [n for n in os.listdir(model_dir) if n.startswith(f"checkpoint_{REFERENCE_STEPS}.")]
    assert len(aside) == 1 and aside[0].startswith(f"checkpoint_{REFERENCE_STEPS}.damaged-")
    # The retrained step is saved again and is what an uninterrupted run saved.
    _assert_trees_close(
        _final_params(model_dir, REFERENCE_STEPS), _final_params(reference, REFERENCE_STEPS), 1e-6
    )
    # metrics.jsonl holds both runs' rows of steps 37..40; a report reads each step once.
    steps, losses = series(read_metric_history(model_dir), "train/loss")
    assert steps == list(range(1, REFERENCE_STEPS + 1))
    ref = loss_curve(reference)
    np.testing.assert_allclose(losses, [ref[s] for s in steps], rtol=1e-6)


@pytest.mark.slow
def test_another_configuration_stops_at_start_with_old_and_new_shapes(reference, tmp_path):
    model_dir = _copy_of(reference, tmp_path)
    config = open(os.path.join(model_dir, "config.gin")).read()
    result = run_cli(cli_args(model_dir, "--gin.lora.LoraConfig.rank=4", steps=2))
    assert result.returncode == 2, result.stderr[-3000:]
    (error,) = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert (
        "decoder/layers_0/self_attention/query/lora_a: checkpoint (64, 8) float32 vs now "
        "(64, 4) float32" in error
    )
    assert "new MODEL_DIR" in error and "--gin.START_OVER_ON_MISMATCH=True" in error
    assert open(os.path.join(model_dir, "config.gin")).read() == config  # still describes them
    assert sorted(os.listdir(model_dir)) == sorted(os.listdir(reference))  # nothing moved


def test_start_over_on_mismatch_reaches_the_trainer():
    """The flag the message names is bound (what it does: test_checkpointing.py)."""
    import gin
    from fiat_t5x.training import gin_cli

    args = gin_cli.parse_args(cli_args("/tmp/unused", "--gin.START_OVER_ON_MISMATCH=True", steps=2))
    gin_cli.parse_gin(args)
    try:
        bindings = gin.get_bindings("train_script.train")
        assert bindings["start_over_on_mismatch"] is True
    finally:
        gin.clear_config()
