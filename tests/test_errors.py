"""Every command's unhappy path: a user mistake is one message on stderr that names the file,
line, field or flag and says what to do, exit code 2, no traceback, and nothing written.

The table runs in-process through `fiat_t5x.cli.main` (each command's imports are paid once
per session); one subprocess checks `python -m fiat_t5x.train` end to end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable

import pytest

from fiat_t5x import cli

REPO = pathlib.Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Case:
    """`fiat-t5x <argv>` must exit 2 with `needles` in its one error line, leaving `absent`
    paths (relative to the case's directory) uncreated."""

    argv: Callable[[pathlib.Path], list[str]]
    needles: tuple[str, ...]
    absent: tuple[str, ...] = ()
    prog: str | None = None  # default: "fiat-t5x <command>"


def _train(*extra: str, model_dir: str = "run") -> Callable[[pathlib.Path], list[str]]:
    def argv(d: pathlib.Path) -> list[str]:
        return [
            "train",
            "--gin_file=models/flan_t5/tiny.gin",
            "--gin_file=peft/lora.gin",
            "--gin_file=runs/finetune.gin",
            f"--gin.MODEL_DIR='{d / model_dir}'",
            "--gin.MIXTURE_OR_TASK_NAME='fiat_demo_plain'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 8}",
            "--gin.TRAIN_STEPS=2",
            "--gin.BATCH_SIZE=8",
            "--gin.INITIAL_CHECKPOINT_PATH=None",
            *[e.replace("{d}", str(d)) for e in extra],
        ]

    return argv


def _run_dir(command: str, *extra: str) -> Callable[[pathlib.Path], list[str]]:
    def argv(d: pathlib.Path) -> list[str]:
        return [
            command,
            "--gin_file=models/flan_t5/tiny.gin",
            "--gin_file=peft/lora.gin",
            f"--gin_file=runs/{command}.gin",
            "--gin.MIXTURE_OR_TASK_NAME='fiat_demo_plain'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 8}",
            *[e.replace("{d}", str(d)) for e in extra],
        ]

    return argv


def _plain(*argv: str) -> Callable[[pathlib.Path], list[str]]:
    return lambda d: [a.replace("{d}", str(d)) for a in argv]


CASES = {
    # fiat-t5x itself
    "unknown command": Case(
        _plain("trian"), ("unknown command 'trian'", "closest: train"), prog="fiat-t5x"
    ),  # fmt: skip
    # train: flags and gin
    "train unknown flag": Case(
        _train("--gin_fil=x.gin"),
        ("unknown argument '--gin_fil=x.gin'", "closest: --gin_file"),
        ("run",),
    ),  # fmt: skip
    "train macro typo": Case(
        _train("--gin.TRAIN_STEP=5"),
        (
            "--gin.TRAIN_STEP=5: no loaded gin file reads the macro TRAIN_STEP",
            "closest: TRAIN_STEPS",
        ),
        ("run",),
    ),  # fmt: skip
    "train unset macro": Case(
        _train("--gin.train_script.train.log_period=%LOG_EVERY"),
        ("gin macro %LOG_EVERY is read by", "log_period but never set", "--gin.LOG_EVERY="),
        ("run",),
    ),  # fmt: skip
    "train unquoted string": Case(
        _train("--gin.MIXTURE_OR_TASK_NAME=fiat_demo_plain"),
        ("--gin.MIXTURE_OR_TASK_NAME=fiat_demo_plain: gin cannot parse this binding", "quotes"),
        ("run",),
    ),  # fmt: skip
    "train unknown parameter": Case(
        _train("--gin.train_script.train.log_perid=1"),
        ("--gin.train_script.train.log_perid=1:", "parameter named 'log_perid'"),
        ("run",),
    ),  # fmt: skip
    "train missing gin file": Case(
        _train("--gin_file=models/flan_t5/tinny.gin"),
        ("gin file 'models/flan_t5/tinny.gin' not found",),
        ("run",),
    ),  # fmt: skip
    "train pod.gin before the model": Case(
        _plain(
            "train",
            "--gin_file=partitioning/pod.gin",
            "--gin_file=models/flan_t5/tiny.gin",
            "--gin_file=runs/finetune.gin",
            "--gin.MODEL_DIR='{d}/run'",
        ),
        (
            "ACTIVATION_DTYPE: ",
            "gin/partitioning/pod.gin:",
            "models/flan_t5/architecture.gin:",
            "silently lost (so would SCAN_LAYERS, REMAT_POLICY)",
            "Give the model's --gin_file first",
        ),
        ("run",),
    ),  # fmt: skip
    "train gin syntax": Case(
        _train("--gin_file={d}/broken.gin"),
        ("broken.gin:3: gin syntax error: Failed to parse token 'Z'", "unclosed bracket"),
        ("run",),
    ),  # fmt: skip
    "train gin import": Case(
        _train("--gin_file={d}/imports.gin"),
        ("imports.gin:1: cannot import 'no_such_tasks_module'", "PYTHONPATH"),
        ("run",),
    ),  # fmt: skip
    "train missing required": Case(
        lambda d: [a for a in _train()(d) if "MODEL_DIR" not in a],
        ("missing required gin values: MODEL_DIR", "--gin.MODEL_DIR="),
        ("run",),
    ),  # fmt: skip
    # train: values checked before anything is written
    "train unknown task": Case(
        _train("--gin.MIXTURE_OR_TASK_NAME='fiat_demo_plian'"),
        ("'fiat_demo_plian' is not a registered SeqIO task", "fiat_demo_plain"),
        ("run",),
    ),  # fmt: skip
    "train missing checkpoint": Case(
        _train("--gin.INITIAL_CHECKPOINT_PATH='{d}/no_ckpt'"),
        ("INITIAL_CHECKPOINT_PATH=", "no_ckpt' does not exist"),
        ("run",),
    ),  # fmt: skip
    "train malformed data": Case(
        _train("--gin_file={d}/errtab_tasks.gin", "--gin.MIXTURE_OR_TASK_NAME='errtab_qa'"),
        ("train.jsonl:3: field 'answer': empty value", "--gin.malformed_lines.skip=True"),
        ("run",),
    ),  # fmt: skip
    # eval / infer
    "eval missing model dir": Case(
        _run_dir("eval", "--gin.MODEL_DIR='{d}/no_run'", "--gin.INITIAL_CHECKPOINT_PATH=None"),
        ("MODEL_DIR=", "no_run' is not a directory"),
        ("no_run",),
    ),  # fmt: skip
    "infer missing checkpoint": Case(
        _run_dir(
            "infer",
            "--gin.MODEL_DIR='{d}/empty_run'",
            "--gin.INITIAL_CHECKPOINT_PATH='{d}/no_ckpt'",
        ),
        ("no_ckpt' does not exist",),
        ("empty_run/inference",),
    ),  # fmt: skip
    "fiat-infer missing gin file": Case(
        _plain("fiat-infer", "--gin_file=nope.gin"), ("gin file 'nope.gin' not found",)
    ),  # fmt: skip
    "icl macro typo": Case(
        _plain(
            "icl",
            "--gin_file=gin/fiat/demo.gin",
            "--gin_file=gin/baselines/icl.gin",
            "--gin.MODEL_DIR='{d}/icl'",
            "--gin.ICL_SHOT=2",
        ),
        ("no loaded gin file reads the macro ICL_SHOT",),
        ("icl",),
    ),  # fmt: skip
    # score
    "score missing file": Case(
        _plain("score", "--metric", "xtreme_up_qa", "{d}/none.jsonl"),
        ("none.jsonl", "no such data file"),
    ),  # fmt: skip
    "score malformed line": Case(
        _plain("score", "--metric", "xtreme_up_qa", "{d}/bad.jsonl", "--json", "{d}/scores.json"),
        ("bad.jsonl:2: bad JSON", "--skip_malformed"),
        ("scores.json",),
    ),  # fmt: skip
    "score gold field": Case(
        _plain("score", "--metric", "xtreme_up_qa", "{d}/nogold.jsonl"),
        ("nogold.jsonl:1:", "missing field 'target' (or 'targets')", "--target_field"),
    ),  # fmt: skip
    # check-vocab
    "check-vocab unknown module": Case(
        _plain("check-vocab", "--task", "x", "--vocab", "byte", "--module", "no_such_tasks_module"),
        ("--module no_such_tasks_module: no module named", "PYTHONPATH"),
    ),  # fmt: skip
    "check-vocab unknown task": Case(
        _plain(
            "check-vocab",
            "--task",
            "fiat_demo_plian",
            "--vocab",
            "byte",
            "--module",
            "fiat_tasks.demo",
        ),
        ("'fiat_demo_plian' is not a registered", "fiat_demo_plain"),
    ),  # fmt: skip
    "check-vocab unknown split": Case(
        _plain(
            "check-vocab",
            "--task",
            "fiat_demo_plain",
            "--vocab",
            "byte",
            "--module",
            "fiat_tasks.demo",
            "--split",
            "dev",
        ),
        ("--split dev", "'train'"),
    ),  # fmt: skip
    "check-vocab missing vocab": Case(
        _plain(
            "check-vocab",
            "--task",
            "fiat_demo_plain",
            "--vocab",
            "{d}/spm.model",
            "--module",
            "fiat_tasks.demo",
        ),
        ("spm.model", "no such SentencePiece model file"),
    ),  # fmt: skip
    # convert
    "convert missing checkpoint": Case(
        _plain("convert", "t5x-to-hf", "--t5x_checkpoint", "{d}/no_ckpt", "--output", "{d}/hf"),
        ("no_ckpt",),
        ("hf",),
    ),  # fmt: skip
    "convert config not json": Case(
        _plain(
            "convert",
            "t5x-to-hf",
            "--t5x_checkpoint",
            "{d}/no_ckpt",
            "--config",
            "{d}/bad.jsonl",
            "--output",
            "{d}/hf",
        ),
        ("no_ckpt",),
        ("hf",),
    ),  # fmt: skip
    # sweep, mixture-rates
    "sweep missing file": Case(
        _plain("sweep", "list", "{d}/nope.yaml"), ("nope.yaml: cannot read the sweep file",)
    ),  # fmt: skip
    "sweep bad yaml": Case(
        _plain("sweep", "list", "{d}/broken.gin"), ("broken.gin:",)
    ),  # fmt: skip
    "sweep unknown variant": Case(
        _plain("sweep", "run", "gin/sweeps/demo.yaml", "--root", "{d}/sweep", "--only", "fiatt"),
        ("unknown variant(s) ['fiatt']",),
        ("sweep",),
    ),  # fmt: skip
    "sweep root URL": Case(
        _plain("sweep", "run", "gin/sweeps/demo.yaml", "--root", "gs://bucket/sweep"),
        ("argument --root: 'gs://bucket/sweep' is a URL", "mounted with gcsfuse"),
        ("gs:",),
        prog="fiat-t5x sweep run",
    ),  # fmt: skip
    "rationales unknown module": Case(
        _plain(
            "rationales",
            "generate",
            "--module",
            "no_such_tasks_module",
            "--task",
            "x",
            "--store",
            "{d}/store",
            "--prompts",
            "{d}/p.yaml",
            "--model",
            "m",
            "--base_url",
            "http://127.0.0.1:9/v1",
        ),
        ("no module named 'no_such_tasks_module'", "PYTHONPATH"),
        ("store",),
    ),  # fmt: skip
    "mixture-rates unknown module": Case(
        _plain("mixture-rates", "x", "--module", "no_such_tasks_module"),
        ("--module no_such_tasks_module: no module named",),
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Files the cases point at: broken gin files, a task module with a malformed data line,
    bad prediction files. Read-only for the cases (each gets its own working directory)."""
    d = tmp_path_factory.mktemp("errors_project")
    (d / "broken.gin").write_text("X = 1\nY = (1,\nZ = 2\n")
    (d / "imports.gin").write_text("import no_such_tasks_module\n")
    (d / "errtab_tasks.gin").write_text("import errtab_tasks\n")
    (d / "errtab_tasks.py").write_text(
        "import seqio, tensorflow as tf\n"
        "from fiat_t5x.data import sources\n"
        "S = tf.TensorSpec([], tf.string)\n"
        "src = sources.jsonl_data_source(\n"
        f"    {{'train': {str(d / 'train.jsonl')!r}, 'validation': {str(d / 'train.jsonl')!r}}},\n"
        "    {'question': S, 'answer': S}, non_empty=('answer',))\n"
        "@seqio.map_over_dataset\n"
        "def qa(ex):\n"
        "    return {'inputs': ex['question'], 'targets': ex['answer']}\n"
        "F = seqio.Feature(seqio.ByteVocabulary())\n"
        "seqio.TaskRegistry.add('errtab_qa', source=src, preprocessors=[qa,\n"
        "    seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],\n"
        "    output_features={'inputs': F, 'targets': F})\n"
    )
    lines = [{"question": f"q{i}", "answer": "" if i == 2 else "a"} for i in range(8)]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (d / "bad.jsonl").write_text('{"language": "bn", "target": "a", "prediction": "a"}\n{oops\n')
    (d / "nogold.jsonl").write_text('{"language": "bn", "answer": "a", "prediction": "a"}\n')
    return d


def _call(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("name", sorted(CASES))
def test_user_error_is_one_message_exit_2_and_writes_nothing(name, project, tmp_path, monkeypatch):
    case = CASES[name]
    for file in project.iterdir():
        if file.is_file():
            os.symlink(file, tmp_path / file.name)
    (tmp_path / "empty_run").mkdir()
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = case.argv(tmp_path)
    code, out, err = _call(argv)
    prog = case.prog or f"fiat-t5x {argv[0]}"
    assert code == 2, f"exit {code}\nstdout: {out[-1500:]}\nstderr: {err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    messages = [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(messages) == 1, err[-3000:]
    for needle in case.needles:
        assert needle in messages[0], messages[0]
    for path in case.absent:
        assert not (tmp_path / path).exists(), f"{path} was written"
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before, f"written: {set(after) - set(before)}"


def test_argparse_mistakes_exit_2_with_usage():
    code, _, err = _call(["score", "predictions.jsonl"])
    assert code == 2 and "the following arguments are required: --metric" in err


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_shows_the_traceback_too(how, monkeypatch, tmp_path):
    argv = ["score", "--metric", "xtreme_up_qa", str(tmp_path / "none.jsonl")]
    if how == "flag":
        argv.append("--debug")
    else:
        monkeypatch.setenv("FIAT_T5X_DEBUG", "1")
    code, _, err = _call(argv)
    assert code == 2
    assert "Traceback (most recent call last)" in err and "FileNotFoundError" in err
    assert err.rstrip().splitlines()[-1].startswith("fiat-t5x score: error: ")


def test_a_bug_keeps_its_traceback(monkeypatch):
    from fiat_t5x import scoring

    def broken(*args, **kwargs):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(scoring, "score_file", broken)
    with pytest.raises(KeyError):
        _call(["score", "--metric", "xtreme_up_qa", "p.jsonl"])


def test_python_m_train_reports_a_typo_in_one_line(tmp_path):
    """The module entry point (what sweeps and launchers run), in its own process."""
    argv = _train("--gin.TRAIN_STEP=5")(tmp_path)[1:]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    result = subprocess.run(
        [sys.executable, "-m", "fiat_t5x.train", *argv],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith("python -m fiat_t5x.train: error: --gin.TRAIN_STEP=5: no loaded gin")
    assert "closest: TRAIN_STEPS" in last
    assert list(tmp_path.iterdir()) == []
