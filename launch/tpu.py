"""Run a gin command or a whole sweep on a Cloud TPU VM or pod slice through `gcloud`.

    python -m launch.tpu up     --tpu_name fiat --zone us-central2-b --project my-proj \
                                --accelerator_type v4-32 [--queued] [--spot]
    python -m launch.tpu run    --tpu_name fiat ... -- python3 -m fiat_t5x.train --gin_file=...
    python -m launch.tpu sweep  gin/sweeps/fiat_ablations.yaml --root ~/runs/ablations --tpu_name ...
    python -m launch.tpu logs   --tpu_name fiat ... --dest ./tpu_logs
    python -m launch.tpu delete --tpu_name fiat ... [--queued]
    (`--dry_run` on any of them prints the exact gcloud commands instead of running them)

`up` = create (a TPU VM, or a queued resource that is waited for until ACTIVE) + setup (copy this
checkout to every worker and `pip install -e` it, or `pip install` a package: a pip spec, or a
wheel file here, which is copied to the workers first). An installed package carries its gin
files, so `--gin_file=gin/fiat/xor_attriqa.gin` resolves on the workers without a checkout.
`run` runs the same command on every worker (`--worker=all`), each worker teeing its output to
`~/fiat_logs/<run>.log` while gcloud streams it here; on a multi-host slice it exports
`TPU_WORKER_HOSTNAMES` (read from `gcloud ... describe`), which is what
`fiat_t5x.training.distributed.initialize` needs to call `jax.distributed.initialize()`.
`logs` copies every worker's logs (and, for a sweep, worker 0's sweep root) back here.
Settings come from flags, or from a gin file binding `tpu_config.*` (flags win).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import gin

logger = logging.getLogger(__name__)

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
REMOTE_LOG_DIR = "~/fiat_logs"
# Files never shipped to the workers.
_EXCLUDES = (".venv", ".git", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")


@dataclasses.dataclass(frozen=True)
class TpuConfig:
    """Where and what to run. Attributes mirror the flags of the same name."""

    tpu_name: str
    zone: str
    project: str
    accelerator_type: str = "v4-8"
    runtime_version: str = "tpu-ubuntu2204-base"
    queued: bool = False
    spot: bool = False
    install: str = "copy"  # "copy": ship this checkout; "pip": pip install `package`
    package: str = "fiat-t5x"
    jax_spec: str = "jax[tpu]==0.10.2"  # the version setup.py pins
    remote_dir: str = "~/fiat-t5x"
    python: str = "python3"
    gcloud: str = "gcloud"

    def __post_init__(self) -> None:
        for name in ("tpu_name", "zone", "project"):
            if not getattr(self, name):
                raise ValueError(f"TPU launcher: --{name} is required (flag or tpu_config.{name})")
        if self.install not in ("copy", "pip"):
            raise ValueError(
                f"TPU launcher: --install must be 'copy' or 'pip', got {self.install!r}"
            )
        num_workers(self.accelerator_type)  # validates the accelerator type

    @property
    def queued_resource_id(self) -> str:
        return f"{self.tpu_name}-qr"

    @property
    def location(self) -> list[str]:
        return [f"--zone={self.zone}", f"--project={self.project}"]


@gin.configurable
def tpu_config(**overrides) -> dict:
    """Gin hook: `tpu_config.zone = 'us-central2-b'` etc. in a launcher gin file."""
    return overrides


def num_workers(accelerator_type: str) -> int:
    """Hosts in a slice: v2/v3/v4/v5p count TensorCores (8 per host); v5e/v6e count chips."""
    match = re.fullmatch(r"(v2|v3|v4|v5p|v5litepod|v5e|v6e)-(\d+)", accelerator_type)
    if not match:
        raise ValueError(
            f"TPU launcher: unknown --accelerator_type {accelerator_type!r}; expected e.g. "
            "v4-8, v4-32, v5p-16, v5litepod-16, v6e-8"
        )
    family, count = match.group(1), int(match.group(2))
    if family in ("v2", "v3", "v4", "v5p"):
        return max(1, count // 8)
    return 1 if count <= 8 else count // 4


class Gcloud:
    """Runs (or, in dry-run mode, prints) gcloud commands; every command is also recorded."""

    def __init__(self, binary: str = "gcloud", dry_run: bool = False, out=None) -> None:
        self.binary = binary
        self.dry_run = dry_run
        self.out = out or sys.stdout
        self.commands: list[list[str]] = []

    def __call__(self, *args: str, capture: bool = False, check: bool = True) -> str:
        argv = [self.binary, *args]
        self.commands.append(argv)
        if self.dry_run:
            print(shlex.join(argv), file=self.out, flush=True)
            return ""
        logger.info("$ %s", shlex.join(argv))
        if capture:
            done = subprocess.run(argv, check=False, capture_output=True, text=True)
        else:
            done = subprocess.run(argv, check=False)
        if check and done.returncode != 0:
            detail = f": {done.stderr.strip()}" if capture and done.stderr else ""
            raise GcloudError(f"`{shlex.join(argv)}` exited with {done.returncode}{detail}")
        return done.stdout if capture else ""


class GcloudError(RuntimeError):
    """A gcloud command failed; the message has the command line."""


class TpuLauncher:
    """The steps of a TPU job; each step is a handful of gcloud commands."""

    def __init__(self, config: TpuConfig, gcloud: Gcloud) -> None:
        self.config = config
        self.gcloud = gcloud

    @property
    def multi_host(self) -> bool:
        return num_workers(self.config.accelerator_type) > 1

    # --- lifecycle ---------------------------------------------------------------------------

    def create(self, poll_seconds: float = 30.0, timeout: float = 6 * 3600) -> None:
        c = self.config
        if c.queued:
            self.gcloud(
                "compute", "tpus", "queued-resources", "create", c.queued_resource_id,
                f"--node-id={c.tpu_name}", f"--accelerator-type={c.accelerator_type}",
                f"--runtime-version={c.runtime_version}", *c.location,
                *(["--spot"] if c.spot else []),
            )  # fmt: skip
            self.wait_active(poll_seconds, timeout)
        else:
            self.gcloud(
                "compute", "tpus", "tpu-vm", "create", c.tpu_name,
                f"--accelerator-type={c.accelerator_type}", f"--version={c.runtime_version}",
                *c.location, *(["--spot"] if c.spot else []),
            )  # fmt: skip

    def wait_active(self, poll_seconds: float, timeout: float) -> None:
        """Polls the queued resource until ACTIVE; FAILED/SUSPENDED are errors."""
        c = self.config
        deadline = time.monotonic() + timeout
        while True:
            state = self.gcloud(
                "compute", "tpus", "queued-resources", "describe", c.queued_resource_id,
                *c.location, "--format=value(state.state)", capture=True,
            ).strip()  # fmt: skip
            if self.gcloud.dry_run or state == "ACTIVE":
                return
            if state in ("FAILED", "SUSPENDED"):
                raise GcloudError(f"queued resource {c.queued_resource_id} is {state}")
            if time.monotonic() > deadline:
                raise GcloudError(f"queued resource {c.queued_resource_id} not ACTIVE ({state})")
            logger.info("queued resource %s is %s; waiting", c.queued_resource_id, state)
            time.sleep(poll_seconds)

    def setup(self) -> None:
        """Puts the code on every worker and installs it (with JAX for TPU)."""
        c = self.config
        if c.install == "copy":
            with tempfile.TemporaryDirectory() as tmp:
                archive = pathlib.Path(tmp) / "fiat-t5x.tgz"
                if not self.gcloud.dry_run:
                    self._make_archive(archive)
                self.gcloud(
                    "compute", "tpus", "tpu-vm", "scp", str(archive), f"{c.tpu_name}:~/fiat-t5x.tgz",
                    "--worker=all", *c.location,
                )  # fmt: skip
            install = (
                f"mkdir -p {c.remote_dir} && tar xzf ~/fiat-t5x.tgz -C {c.remote_dir} && "
                f"{c.python} -m pip install -q -e {c.remote_dir} {shlex.quote(c.jax_spec)}"
            )
        else:
            package = c.package
            if pathlib.Path(package).is_file():  # a wheel built here (`pip wheel .`): ship it
                package = f"~/{pathlib.Path(package).name}"
                self.gcloud(
                    "compute", "tpus", "tpu-vm", "scp", c.package, f"{c.tpu_name}:{package}",
                    "--worker=all", *c.location,
                )  # fmt: skip
            else:
                package = shlex.quote(package)
            install = f"{c.python} -m pip install -q {package} {shlex.quote(c.jax_spec)}"
        self.ssh_all(install)

    def delete(self) -> None:
        c = self.config
        if c.queued:
            self.gcloud(
                "compute", "tpus", "queued-resources", "delete", c.queued_resource_id,
                *c.location, "--force", "--quiet",
            )  # fmt: skip
        else:
            self.gcloud("compute", "tpus", "tpu-vm", "delete", c.tpu_name, *c.location, "--quiet")

    # --- running -----------------------------------------------------------------------------

    def worker_hostnames(self) -> list[str]:
        """Internal IPs of the workers, in worker order (from `describe`)."""
        c = self.config
        text = self.gcloud(
            "compute", "tpus", "tpu-vm", "describe", c.tpu_name, *c.location,
            "--format=value(networkEndpoints[].ipAddress)", capture=True,
        )  # fmt: skip
        return [h for h in re.split(r"[;,\s]+", text.strip()) if h]

    def remote_command(self, command: Sequence[str], run_name: str) -> str:
        """The shell line every worker runs: env for multi-host JAX, the command, a log."""
        c = self.config
        env = ""
        if self.multi_host:
            hosts = self.worker_hostnames()
            value = ",".join(hosts) if hosts else "$TPU_WORKER_HOSTNAMES"
            env = f"export TPU_WORKER_HOSTNAMES={value} && "
        log = f"{REMOTE_LOG_DIR}/{run_name}.log"
        cd = f"cd {c.remote_dir} && " if c.install == "copy" else ""
        return (
            f"mkdir -p {REMOTE_LOG_DIR} && {cd}{env}"
            f"set -o pipefail && {shlex.join(command)} 2>&1 | tee -a {log}"
        )

    def ssh_all(self, line: str) -> None:
        c = self.config
        self.gcloud(
            "compute", "tpus", "tpu-vm", "ssh", c.tpu_name, "--worker=all", *c.location,
            f"--command={line}",
        )  # fmt: skip

    def run(self, command: Sequence[str], run_name: str = "run") -> None:
        """The same command on every worker; gcloud streams all workers' output here."""
        self.ssh_all(self.remote_command(command, run_name))

    def collect(self, dest: pathlib.Path, remote_paths: Sequence[str] = ()) -> None:
        """Every worker's logs into dest/worker<i>/, plus `remote_paths` from worker 0."""
        c = self.config
        for worker in range(num_workers(c.accelerator_type)):
            target = dest / f"worker{worker}"
            if not self.gcloud.dry_run:
                target.mkdir(parents=True, exist_ok=True)
            self.gcloud(
                "compute", "tpus", "tpu-vm", "scp", "--recurse",
                f"{c.tpu_name}:{REMOTE_LOG_DIR}", str(target), f"--worker={worker}", *c.location,
            )  # fmt: skip
        for path in remote_paths:
            self.gcloud(
                "compute", "tpus", "tpu-vm", "scp", "--recurse", f"{c.tpu_name}:{path}",
                str(dest), "--worker=0", *c.location,
            )  # fmt: skip

    def _make_archive(self, archive: pathlib.Path) -> None:
        excludes = [f"--exclude={e}" for e in _EXCLUDES]
        subprocess.run(
            ["tar", "czf", str(archive), *excludes, "-C", str(PROJECT_ROOT), "."], check=True
        )


def sweep_command(sweep: str, root: str, python: str, only: str = "") -> list[str]:
    """The sweep runner's command line, run on every worker (each variant is multi-host)."""
    command = [python, "-m", "fiat_t5x.cli", "sweep", "run", sweep, "--root", root]
    return command + (["--only", only] if only else [])


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tpu_name")
    common.add_argument("--zone")
    common.add_argument("--project")
    common.add_argument("--accelerator_type")
    common.add_argument("--runtime_version")
    common.add_argument("--queued", action="store_true", default=None, help="queued resource")
    common.add_argument("--spot", action="store_true", default=None)
    common.add_argument("--install", choices=("copy", "pip"))
    common.add_argument(
        "--package", help="with --install=pip: a pip spec, or a local wheel (copied over)"
    )
    common.add_argument("--remote_dir")
    common.add_argument("--python")
    common.add_argument("--gcloud", help="gcloud binary (default: gcloud on PATH)")
    common.add_argument("--gin_file", action="append", default=[], help="binds tpu_config.*")
    common.add_argument("--dry_run", action="store_true", help="print gcloud commands only")
    common.add_argument("--poll_seconds", type=float, default=30.0, help="queued-resource polling")
    parser = argparse.ArgumentParser(
        prog="python -m launch.tpu", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="action", required=True)
    for name in ("create", "setup", "up", "delete"):
        sub.add_parser(name, parents=[common])
    run = sub.add_parser("run", parents=[common], help="COMMAND on every worker (after --)")
    run.add_argument("--run_name", default="run")
    run.add_argument("--collect", type=pathlib.Path, help="copy logs here afterwards")
    sweep = sub.add_parser("sweep", parents=[common], help="a whole sweep on the slice")
    sweep.add_argument("sweep")
    sweep.add_argument("--root", required=True, help="sweep root on the workers")
    sweep.add_argument("--only", default="")
    sweep.add_argument("--collect", type=pathlib.Path, help="copy logs and the root here")
    logs = sub.add_parser("logs", parents=[common], help="copy the workers' logs here")
    logs.add_argument("--dest", type=pathlib.Path, required=True)
    return parser


def config_from_args(args: argparse.Namespace) -> TpuConfig:
    values: dict = {}
    if args.gin_file:
        with gin.unlock_config():
            gin.parse_config_files_and_bindings(args.gin_file, [], skip_unknown=True)
        values.update(gin.get_bindings("tpu_config"))
    fields = {f.name for f in dataclasses.fields(TpuConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{args.gin_file}: unknown tpu_config parameter(s) {unknown}")
    values.update({k: v for k, v in vars(args).items() if k in fields and v is not None})
    for name in ("tpu_name", "zone", "project"):
        values.setdefault(name, "")
    return TpuConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = _parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    try:
        config = config_from_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    launcher = TpuLauncher(config, Gcloud(config.gcloud, dry_run=args.dry_run))
    try:
        if args.action in ("create", "up"):
            launcher.create(poll_seconds=args.poll_seconds)
        if args.action in ("setup", "up"):
            launcher.setup()
        if args.action == "run":
            if not command:
                print("error: give the command to run after --", file=sys.stderr)
                return 2
            launcher.run(command, args.run_name)
            if args.collect:
                launcher.collect(args.collect)
        if args.action == "sweep":
            name = pathlib.Path(args.sweep).stem
            launcher.run(sweep_command(args.sweep, args.root, config.python, args.only), name)
            if args.collect:
                launcher.collect(args.collect, [args.root])
        if args.action == "logs":
            launcher.collect(args.dest)
        if args.action == "delete":
            launcher.delete()
    except GcloudError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
