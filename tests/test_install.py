"""The package installs and runs outside the repository: a wheel built from the sources, in a
fresh virtualenv, used from an empty directory, finds its gin files, Iβ/Iτ files and tasks
(package data, not the checkout) and trains.

The virtualenv reaches the test environment's installed dependencies through a .pth file, so
the test needs no network; only the wheel itself is installed into it (--no-deps).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import site
import subprocess
import sys
import sysconfig

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ("setup.py", "README.md", "fiat_t5x", "tasks", "gin")

pytestmark = pytest.mark.slow


def _run(argv: list[str], cwd: pathlib.Path, env: dict[str, str], timeout: int = 300):
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{argv}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def _dependency_paths() -> list[str]:
    """This interpreter's site-packages directories (and those its .pth files add). As plain
    path entries their .pth files (an editable install of this checkout) are not run."""
    paths = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    paths += [p for p in sys.path if p.endswith("site-packages")]
    return [p for i, p in enumerate(paths) if os.path.isdir(p) and p not in paths[:i]]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin directory, an empty working directory, environment) with the wheel installed."""
    root = tmp_path_factory.mktemp("install")
    source = root / "src"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    wheels = root / "wheels"
    pip = [sys.executable, "-m", "pip"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)], root, env)  # fmt: skip
    (wheel,) = wheels.glob("fiat_t5x-*.whl")

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, env)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    pathlib.Path(purelib, "zz_test_dependencies.pth").write_text(
        "\n".join(_dependency_paths()) + "\n", encoding="utf-8"
    )
    _run([*pip, "--python", str(python), "install", "--no-deps", "-q", str(wheel)], root, env)

    empty = root / "empty"
    empty.mkdir()
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return venv / "bin", empty, env


def test_help_runs_from_the_installed_entry_point(installed):
    bin_dir, empty, env = installed
    out = _run([str(bin_dir / "fiat-t5x"), "--help"], empty, env).stdout
    assert out.startswith("usage: fiat-t5x <command>") and "train" in out


# Run by the virtualenv's python from an empty directory: the gin files, the Iτ files and the
# FIAT variants come from the installed package, then `fiat-t5x train` trains 2 steps
# (one process, to pay for the TensorFlow/JAX start-up once).
SCRIPT = """
import pathlib, sys
import fiat_t5x, fiat_tasks
from fiat_t5x import cli, gin_files
from fiat_t5x.training import gin_cli
root = pathlib.Path(sys.prefix)
for module in (fiat_t5x, fiat_tasks):
    assert pathlib.Path(module.__file__).is_relative_to(root), module.__file__
assert gin_files.gin_dir().is_relative_to(root), gin_files.gin_dir()
args = gin_cli.parse_args(["--gin_file=models/flan_t5/base.gin", "--gin_file=peft/lora.gin",
                           "--gin_file=gin/runs/finetune.gin"])
gin_cli.parse_gin(args)
import gin
print("emb_dim", gin.query_parameter("fiat_t5x.models.config.T5Config.emb_dim"))
print("lora_rank", gin.query_parameter("%LORA_RANK"))
import fiat_tasks.fiat_variants as variants
import seqio
assert all(path.is_file() for path in variants.BASE_TASKS.values()), variants.BASE_TASKS
fiat = sorted(tasks.fiat for tasks in variants.TASKS.values())
assert set(fiat) <= set(seqio.TaskRegistry.names())
print("fiat variants", fiat)
sys.exit(cli.main(sys.argv[1:]))
"""


def test_gin_files_prompts_fiat_variants_and_training_from_an_empty_directory(installed):
    bin_dir, empty, env = installed
    model_dir = empty.parent / "run"
    train = [
        "train", "--gin_file=models/flan_t5/tiny.gin", "--gin_file=peft/lora.gin",
        "--gin_file=runs/finetune.gin",
        f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='fiat_demo_plain'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 8}", "--gin.TRAIN_STEPS=2",
        "--gin.BATCH_SIZE=4", "--gin.INITIAL_CHECKPOINT_PATH=None", "--gin.EVAL_PERIOD=0",
    ]  # fmt: skip
    result = _run([str(bin_dir / "python"), "-c", SCRIPT, *train], empty, env)
    out = result.stdout
    assert "emb_dim 768" in out  # models/flan_t5/base.gin, with its include of architecture.gin
    assert "lora_rank 8" in out  # peft/lora.gin
    assert "fiat variants ['xor_attriqa_all_fiat', 'xtreme_up_qa_full_all_fiat'" in out, out
    assert (model_dir / "checkpoint_2").is_dir()
    assert (model_dir / "config.gin").is_file()
    assert list(empty.iterdir()) == []  # nothing written where the command ran
    log = result.stdout + result.stderr
    assert "step 2 loss" in log
    assert not [line for line in log.splitlines() if "ERROR" in line], log[-3000:]
