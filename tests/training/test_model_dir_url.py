"""A MODEL_DIR given as a URL, as T5X users give `gs://...` on a pod: the run writes there (not
into a local folder named after the URL), resumes from there, and eval/infer load it from its
config.gin there. `file://` takes the same code path as a bucket without a network."""

from __future__ import annotations

import json

import pytest

from fiat_t5x import eval as eval_script
from fiat_t5x.training.trained_run import load_trained_run
from tests.training.training_helpers import REPO, TINY_GIN, cli_args, loss_curve, run_cli


@pytest.mark.slow
def test_a_url_model_dir_trains_resumes_evaluates_and_loads_there(tmp_path, capsys):
    local = tmp_path / "run"
    url = f"file://{local}"
    first = run_cli(cli_args(url, "--gin.CHECKPOINT_PERIOD=3", steps=6))
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (REPO / "file:").exists(), "the URL became a local folder under the cwd"
    assert (local / "config.gin").is_file()
    assert (local / "checkpoint_3").is_dir() and (local / "checkpoint_6").is_dir()
    assert sorted(loss_curve(str(local))) == list(range(1, 7))

    second = run_cli(cli_args(url, "--gin.CHECKPOINT_PERIOD=3", steps=8))
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"restored {local}/checkpoint_6" in second.stderr
    assert sorted(loss_curve(str(local))) == list(range(1, 9))

    run = load_trained_run(url)  # no gin files: the model comes from the URL's config.gin
    assert run.step == 8

    evaluated = eval_script.main(
        [
            f"--gin_file={TINY_GIN}",
            "--gin_file=runs/eval.gin",
            f"--gin.MODEL_DIR='{url}'",
            "--gin.MIXTURE_OR_TASK_NAME='fiat_demo_plain'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 8}",
            "--gin.INITIAL_CHECKPOINT_PATH=None",
            "--gin.eval_script.evaluate.num_examples=8",
        ]
    )
    assert evaluated == 0
    assert "eval/fiat_demo_plain/accuracy" in json.loads(capsys.readouterr().out)
    assert list((local / "records" / "eval_command" / "fiat_demo_plain").glob("step_*.jsonl"))
    last = json.loads((local / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["writer"] == "eval_command" and last["step"] == 8
