"""Running a sweep: every variant trains and evaluates into `<root>/<variant>/` (its MODEL_DIR).

Each variant is a subprocess (the trainer, or the sweep's `command`), with stdout and stderr
appended to `<root>/<variant>/run.log`. Completion is a `DONE` file holding the final metrics,
written atomically (temp file + rename) only after the process exited 0 and its metrics file
could be read, so an interrupted sweep never looks finished. Re-running a sweep skips variants
with a `DONE` file; an interrupted variant restarts (the trainer resumes from its checkpoints).
A failed variant leaves a `FAILED` file (exit code, log path) and the sweep goes on unless
`fail_fast`.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import pathlib
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fiat_t5x.sweeps.binding_check import check_bindings_keep_variants_apart
from fiat_t5x.sweeps.metrics import final_metrics, metrics_path, read_metric_history
from fiat_t5x.sweeps.spec import Sweep, SweepFileError, Variant, dump_variant

DONE_FILE = "DONE"
FAILED_FILE = "FAILED"
LOG_FILE = "run.log"
VARIANT_FILE = "variant.yaml"
COMMAND_FILE = "command.sh"

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class VariantStatus:
    """Where a variant stands on disk.

    state: "done" (DONE present), "failed" (FAILED present), "incomplete" (started, no marker:
    interrupted or still running) or "missing" (never started).
    """

    name: str
    state: str
    model_dir: pathlib.Path
    log_path: pathlib.Path
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What `run_variant` did: state is "done", "skipped" (already done) or "failed"."""

    name: str
    state: str
    log_path: pathlib.Path
    returncode: int | None = None
    message: str = ""
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)


def variant_status(root: str | pathlib.Path, name: str) -> VariantStatus:
    model_dir = pathlib.Path(root) / name
    log_path = model_dir / LOG_FILE
    done = model_dir / DONE_FILE
    if done.is_file():
        record = read_marker(done)
        return VariantStatus(name, "done", model_dir, log_path, record.get("final_metrics", {}))
    failed = model_dir / FAILED_FILE
    if failed.is_file():
        record = read_marker(failed)
        return VariantStatus(name, "failed", model_dir, log_path, detail=record.get("message", ""))
    if model_dir.is_dir():
        return VariantStatus(name, "incomplete", model_dir, log_path, detail="no DONE marker")
    return VariantStatus(name, "missing", model_dir, log_path, detail="not run")


def read_marker(path: pathlib.Path) -> dict[str, Any]:
    """A DONE/FAILED file's JSON; an unreadable one is an error naming the file."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{path}: unreadable marker ({e}); delete it to run the variant again"
        ) from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object; delete it to run the variant again")
    return record


def write_atomically(path: pathlib.Path, text: str) -> None:
    """Writes `text` so that readers see either no file or the whole file."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def config_fingerprint(argv: Sequence[str], gin_files: Sequence[pathlib.Path]) -> str:
    """A hash of the command line and the gin files' contents (to notice an edited config)."""
    h = hashlib.sha256()
    for part in argv:
        h.update(part.encode() + b"\0")
    for f in gin_files:
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


# Runs argv with its output going to log_path; returns the exit code. The default runs one
# local process; `launch.local` supplies one that runs N processes as N hosts.
ProcessRunner = Callable[[Sequence[str], pathlib.Path, Mapping[str, str]], int]


def run_one_process(argv: Sequence[str], log_path: pathlib.Path, env: Mapping[str, str]) -> int:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=dict(env))
        try:
            return proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


class SweepRunner:
    """Runs the variants of `sweep` under `root`, one after another."""

    def __init__(
        self,
        sweep: Sweep,
        root: str | pathlib.Path,
        *,
        fail_fast: bool = False,
        process_runner: ProcessRunner = run_one_process,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.sweep = sweep
        self.root = pathlib.Path(root)
        self.fail_fast = fail_fast
        self.process_runner = process_runner
        self.env = dict(os.environ if env is None else env)

    def run(self, only: Sequence[str] | None = None) -> list[RunResult]:
        """Runs the selected variants (all by default); returns one result per variant.

        Refuses (SweepFileError, nothing run) a sweep whose bindings would erase what its
        variants' gin files set apart (`binding_check`)."""
        selected = self.sweep.select(only)
        check_bindings_keep_variants_apart(self.sweep)
        results = []
        for variant in selected:
            result = self.run_variant(variant)
            results.append(result)
            if result.state == "failed":
                logger.error(
                    "variant %s failed: %s (log: %s)", result.name, result.message, result.log_path
                )
                if self.fail_fast:
                    break
        return results

    def run_variant(self, variant: Variant) -> RunResult:
        model_dir = self.root / variant.name
        log_path = model_dir / LOG_FILE
        status = variant_status(self.root, variant.name)
        if status.state == "done":
            logger.info("variant %s: already done, skipping", variant.name)
            self._warn_if_changed(variant, model_dir)
            return RunResult(variant.name, "skipped", log_path, 0, metrics=status.metrics)
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / FAILED_FILE).unlink(missing_ok=True)
        try:
            gin_files = self.sweep.resolve_gin_files(variant)
            argv = self.sweep.argv(variant, model_dir.resolve())
        except SweepFileError as e:
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"{e}\n")
            return self._failed(variant, log_path, None, str(e))

        (model_dir / VARIANT_FILE).write_text(dump_variant(variant), encoding="utf-8")
        (model_dir / COMMAND_FILE).write_text(shlex.join(argv) + "\n", encoding="utf-8")
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"=== {_now()} sweep {self.sweep.name}: {shlex.join(argv)}\n")
        logger.info("variant %s: running (log: %s)", variant.name, log_path)
        start = time.monotonic()
        returncode = self.process_runner(argv, log_path, self.env)
        wall = time.monotonic() - start
        if returncode != 0:
            return self._failed(variant, log_path, returncode, f"exited with code {returncode}")
        try:
            history = read_metric_history(model_dir)
        except ValueError as e:
            return self._failed(variant, log_path, returncode, str(e))
        if not history:
            return self._failed(
                variant,
                log_path,
                returncode,
                f"exited 0 but wrote no metrics to {metrics_path(model_dir)}",
            )
        metrics = final_metrics(history)
        record = {
            "variant": variant.name,
            "label": variant.label,
            "final_metrics": metrics,
            "final_step": max(p.step for p in history),
            "finished_at": _now(),
            "wall_seconds": round(wall, 3),
            "fingerprint": config_fingerprint(argv, gin_files),
            "command": argv,
        }
        write_atomically(model_dir / DONE_FILE, json.dumps(record, indent=2) + "\n")
        logger.info("variant %s: done in %.1fs", variant.name, wall)
        return RunResult(variant.name, "done", log_path, 0, metrics=metrics)

    def _warn_if_changed(self, variant: Variant, model_dir: pathlib.Path) -> None:
        """A finished variant whose config was edited since is kept, but the user is told."""
        try:
            argv = self.sweep.argv(variant, model_dir.resolve())
            now = config_fingerprint(argv, self.sweep.resolve_gin_files(variant))
        except SweepFileError:
            return
        if read_marker(model_dir / DONE_FILE).get("fingerprint") not in (None, now):
            logger.warning(
                "variant %s finished with a different config than the sweep now gives; "
                "delete %s to run it again",
                variant.name,
                model_dir,
            )

    def _failed(
        self, variant: Variant, log_path: pathlib.Path, returncode: int | None, message: str
    ) -> RunResult:
        record = {
            "variant": variant.name,
            "returncode": returncode,
            "message": message,
            "log": str(log_path),
            "failed_at": _now(),
        }
        write_atomically(log_path.parent / FAILED_FILE, json.dumps(record, indent=2) + "\n")
        return RunResult(variant.name, "failed", log_path, returncode, message)


def log_tail(log_path: pathlib.Path, lines: int = 15) -> str:
    """The last lines of a variant's log, to show next to a failure."""
    if not log_path.is_file():
        return ""
    return "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
