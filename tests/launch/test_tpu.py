"""The TPU launcher against a fake `gcloud` first on PATH that records its arguments."""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import stat
import sys
import tarfile
import textwrap

import pytest

from fiat_t5x.sweeps import cli as sweep_cli
from launch import tpu

FAKE_GCLOUD = """\
#!{python}
import json, os, pathlib, shutil, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if args[:4] == ["compute", "tpus", "tpu-vm", "scp"] and os.path.isfile(args[4]):
    shutil.copy(args[4], os.environ["FAKE_GCLOUD_LOG"] + ".upload")
if args[:4] == ["compute", "tpus", "tpu-vm", "describe"]:
    print("10.0.0.1;10.0.0.2;10.0.0.3;10.0.0.4")
if args[:4] == ["compute", "tpus", "queued-resources", "describe"]:
    polls = pathlib.Path(os.environ["FAKE_GCLOUD_LOG"] + ".polls")
    n = int(polls.read_text()) if polls.exists() else 0
    polls.write_text(str(n + 1))
    print("ACTIVE" if n >= 1 else "WAITING_FOR_RESOURCES")
"""

COMMON = ["--tpu_name", "fiat", "--zone", "us-central2-b", "--project", "proj"]
LOCATION = ["--zone=us-central2-b", "--project=proj"]


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
    """Puts the fake first on PATH; returns a function giving the recorded argv lists."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "gcloud"
    script.write_text(FAKE_GCLOUD.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "gcloud.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCLOUD_LOG", str(log))

    def calls() -> list[list[str]]:
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    return calls


def test_num_workers():
    assert [tpu.num_workers(t) for t in ("v4-8", "v4-32", "v5p-128", "v3-8", "v5litepod-16")] == [
        1,
        4,
        16,
        1,
        4,
    ]
    with pytest.raises(ValueError, match="unknown --accelerator_type 'v9-8'"):
        tpu.num_workers("v9-8")


def test_single_host_up_run_delete(fake_gcloud, tmp_path):
    v48 = [*COMMON, "--accelerator_type", "v4-8"]
    assert tpu.main(["up", *v48]) == 0
    train = ["python3", "-m", "fiat_t5x.train", "--gin_file=gin/fiat/demo.gin"]
    assert tpu.main(["run", *v48, "--", *train]) == 0
    assert tpu.main(["delete", *v48]) == 0
    calls = fake_gcloud()
    create, scp, install, run, delete = calls
    assert create == [
        "compute", "tpus", "tpu-vm", "create", "fiat", "--accelerator-type=v4-8",
        "--version=tpu-ubuntu2204-base", *LOCATION,
    ]  # fmt: skip
    archive = pathlib.Path(scp[4])
    assert scp == [
        "compute", "tpus", "tpu-vm", "scp", str(archive), "fiat:~/fiat-t5x.tgz", "--worker=all",
        *LOCATION,
    ]  # fmt: skip
    with tarfile.open(tmp_path / "gcloud.jsonl.upload") as uploaded:  # the checkout, really
        names = set(uploaded.getnames())
    assert "./launch/tpu.py" in names and "./fiat_t5x/sweeps/spec.py" in names
    assert not any(n.startswith(("./.venv", "./.git/")) for n in names)
    assert install[:8] == ["compute", "tpus", "tpu-vm", "ssh", "fiat", "--worker=all", *LOCATION]
    assert "pip install -q -e ~/fiat-t5x 'jax[tpu]==0.10.2'" in install[-1]
    # Single host: no describe, no multi-host environment, the command verbatim with a log.
    assert run[:5] == ["compute", "tpus", "tpu-vm", "ssh", "fiat"] and "--worker=all" in run
    line = run[-1].removeprefix("--command=")
    assert "TPU_WORKER_HOSTNAMES" not in line
    assert f"{shlex.join(train)} 2>&1 | tee -a ~/fiat_logs/run.log" in line
    assert line.startswith("mkdir -p ~/fiat_logs && cd ~/fiat-t5x && ")
    assert delete == ["compute", "tpus", "tpu-vm", "delete", "fiat", *LOCATION, "--quiet"]


def test_multi_host_queued_run_collect(fake_gcloud, tmp_path):
    v432 = [*COMMON, "--accelerator_type", "v4-32", "--queued", "--spot", "--poll_seconds", "0"]
    assert tpu.main(["create", *v432]) == 0
    calls = fake_gcloud()
    assert calls[0] == [
        "compute", "tpus", "queued-resources", "create", "fiat-qr", "--node-id=fiat",
        "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base", *LOCATION, "--spot",
    ]  # fmt: skip
    describe = ["compute", "tpus", "queued-resources", "describe", "fiat-qr", *LOCATION]
    assert [c[:-1] for c in calls[1:]] == [describe, describe]  # polled until ACTIVE

    dest = tmp_path / "logs"
    assert tpu.main(["run", *v432, "--collect", str(dest), "--", "python3", "-m", "x"]) == 0
    calls = fake_gcloud()[3:]
    assert calls[0][:5] == ["compute", "tpus", "tpu-vm", "describe", "fiat"]
    line = calls[1][-1]
    assert "export TPU_WORKER_HOSTNAMES=10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4 && " in line
    scps = calls[2:]
    assert [c[-3] for c in scps] == [f"--worker={i}" for i in range(4)]
    assert [c[-4] for c in scps] == [str(dest / f"worker{i}") for i in range(4)]
    assert all(c[4:6] == ["--recurse", "fiat:~/fiat_logs"] for c in scps)

    assert tpu.main(["delete", *v432]) == 0
    assert fake_gcloud()[-1] == [
        "compute", "tpus", "queued-resources", "delete", "fiat-qr", *LOCATION, "--force", "--quiet",
    ]  # fmt: skip


@pytest.mark.parametrize("accelerator", ["v4-8", "v4-32"])
def test_dry_run_prints_the_commands_it_would_run(fake_gcloud, capsys, accelerator):
    args = [*COMMON, "--accelerator_type", accelerator]
    command = ["python3", "-m", "fiat_t5x.train", "--gin.MODEL_DIR='/tmp/m'"]
    assert tpu.main(["run", *args, "--dry_run", "--", *command]) == 0
    printed = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert fake_gcloud() == []  # nothing was executed
    assert tpu.main(["run", *args, "--", *command]) == 0
    real = [["gcloud", *c] for c in fake_gcloud()]
    if accelerator == "v4-8":
        assert printed == real
    else:
        # Dry run cannot ask for the workers' IPs, so it leaves the variable to the workers.
        assert printed[0] == real[0] and printed[0][4] == "describe"
        assert "TPU_WORKER_HOSTNAMES=$TPU_WORKER_HOSTNAMES" in printed[1][-1]
        assert "TPU_WORKER_HOSTNAMES=10.0.0.1,10.0.0.2" in real[1][-1]


def test_sweep_handed_to_tpu_launcher(fake_gcloud, capsys, tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\nvariants: {a: {}}\n")
    argv = ["run", str(sweep), "--root", "/data/runs", "--launcher", "tpu", "--"]
    assert sweep_cli.main([*argv, *COMMON, "--accelerator_type", "v4-32"]) == 0
    ssh = fake_gcloud()[-1]
    expected = f"python3 -m fiat_t5x.cli sweep run {sweep} --root /data/runs 2>&1 | tee -a ~/fiat_logs/s.log"
    assert ssh[:6] == ["compute", "tpus", "tpu-vm", "ssh", "fiat", "--worker=all"]
    assert expected in ssh[-1]


def test_settings_from_gin_and_flags_win(tmp_path, fake_gcloud, capsys):
    gin_file = tmp_path / "tpu.gin"
    gin_file.write_text(
        textwrap.dedent("""\
        tpu_config.tpu_name = 'from-gin'
        tpu_config.zone = 'europe-west4-a'
        tpu_config.project = 'gin-proj'
        tpu_config.accelerator_type = 'v5p-16'
        tpu_config.runtime_version = 'v2-alpha-tpuv5'
        """)
    )
    assert (
        tpu.main(["create", "--gin_file", str(gin_file), "--zone", "us-east5-a", "--dry_run"]) == 0
    )
    (line,) = capsys.readouterr().out.splitlines()
    assert shlex.split(line) == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", "from-gin", "--accelerator-type=v5p-16",
        "--version=v2-alpha-tpuv5", "--zone=us-east5-a", "--project=gin-proj",
    ]  # fmt: skip


def test_missing_required_setting_is_named(capsys):
    assert tpu.main(["create", "--tpu_name", "x", "--zone", "z", "--dry_run"]) == 2
    assert "--project is required" in capsys.readouterr().err


def test_install_pip_ships_a_local_wheel_and_runs_without_a_checkout(fake_gcloud, tmp_path):
    wheel = tmp_path / "fiat_t5x-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    flags = [*COMMON, "--accelerator_type", "v4-8", "--install", "pip", "--package", str(wheel)]
    assert tpu.main(["setup", *flags]) == 0
    train = ["python3", "-m", "fiat_t5x.train", "--gin_file=gin/fiat/demo.gin"]
    assert tpu.main(["run", *flags, "--", *train]) == 0
    scp, install, run = fake_gcloud()
    assert scp[:6] == ["compute", "tpus", "tpu-vm", "scp", str(wheel), f"fiat:~/{wheel.name}"]
    assert f"pip install -q ~/{wheel.name} 'jax[tpu]==0.10.2'" in install[-1]
    # No checkout on the workers: the command runs in the home directory, gin files come
    # from the installed package.
    assert "cd ~/fiat-t5x" not in run[-1]
