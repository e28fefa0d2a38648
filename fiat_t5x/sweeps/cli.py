"""`fiat-t5x sweep run|report|status|list ...`.

fiat-t5x sweep list   gin/sweeps/demo.yaml              # variants and their commands
fiat-t5x sweep run    gin/sweeps/demo.yaml --root runs/demo [--only a,b] [--fail_fast]
                      [--num_processes 2]              # each variant as 2 local "hosts"
                      [--gin_file=F] [--gin.NAME=VALUE]  # added to every variant's command
fiat-t5x sweep run    gin/sweeps/x.yaml --root R --launcher tpu -- --tpu_name ... --zone ...
fiat-t5x sweep status gin/sweeps/demo.yaml --root runs/demo
fiat-t5x sweep report gin/sweeps/demo.yaml --root runs/demo --out runs/demo/report
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pathlib
import shlex
import sys
from collections.abc import Sequence

from fiat_t5x import errors, gin_files, storage
from fiat_t5x.errors import UsageError
from fiat_t5x.sweeps.binding_check import check_bindings_keep_variants_apart
from fiat_t5x.sweeps.runner import SweepRunner, log_tail, run_one_process, variant_status
from fiat_t5x.sweeps.spec import SweepFileError, load_sweep

_PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]


def import_launcher(name: str):
    """`launch.<name>` from the checkout (launchers live beside the package, not inside it)."""
    try:
        return importlib.import_module(f"launch.{name}")
    except ModuleNotFoundError:
        if (_PROJECT_ROOT / "launch" / f"{name}.py").is_file():
            sys.path.insert(0, str(_PROJECT_ROOT))
            return importlib.import_module(f"launch.{name}")
        raise UsageError(
            f"launcher 'launch.{name}' not found; run it from a checkout of fiat-t5x "
            f"(looked in {_PROJECT_ROOT / 'launch'})"
        ) from None


def sweep_file(path: pathlib.Path) -> pathlib.Path:
    """The sweep file as given, else a shipped one (`gin/sweeps/demo.yaml` from anywhere)."""
    found = gin_files.find(path)
    return pathlib.Path(found) if found else path


def root_dir(text: str) -> pathlib.Path:
    """A sweep root: a directory the runner writes with local file calls (on a pod, a shared
    disk or a mounted bucket); a URL would silently become a local folder named `gs:`."""
    if storage.is_url(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is a URL; the sweep root must be a local or mounted directory (a shared "
            "disk, or the bucket mounted with gcsfuse). A single run writes to a bucket with "
            "--gin.MODEL_DIR='gs://...'"
        )
    return pathlib.Path(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fiat-t5x sweep", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)

    run = sub.add_parser("run", help="train and evaluate every variant into ROOT/<variant>/")
    run.add_argument("sweep", type=pathlib.Path)
    run.add_argument("--root", type=root_dir, required=True)
    run.add_argument("--only", default="", help="comma-separated variant names")
    run.add_argument("--fail_fast", action="store_true", help="stop at the first failure")
    run.add_argument("--num_processes", type=int, default=1, help="local processes per variant")
    run.add_argument(
        "--launcher",
        choices=("local", "tpu"),
        default="local",
        help="tpu: hand the whole sweep to launch.tpu (its flags after --)",
    )

    for name, help_ in (("status", "state of every variant"), ("list", "variants and commands")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("sweep", type=pathlib.Path)
        p.add_argument("--root", type=root_dir, default=pathlib.Path("sweep_root"))

    report = sub.add_parser("report", help="tables (Markdown, CSV) and plots (PNG)")
    report.add_argument("sweep", type=pathlib.Path)
    report.add_argument("--root", type=root_dir, required=True)
    report.add_argument("--out", type=pathlib.Path, required=True)
    report.add_argument("--no_plots", action="store_true")
    return parser


@errors.command("fiat-t5x sweep")
def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    # Everything after a bare `--` belongs to the launcher (`--launcher tpu -- --zone ...`).
    launcher_flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    # `--gin_file=F` / `--gin.NAME=VALUE` go to every variant of `sweep run`.
    gin_flags = [a for a in own if a.startswith(("--gin_file=", "--gin."))]
    args = _parser().parse_args([a for a in own if a not in gin_flags])
    args.launcher_flags = launcher_flags
    if gin_flags and args.action != "run":
        raise UsageError(f"{gin_flags[0]!r} is an option of `sweep run` only")
    args.sweep = sweep_file(args.sweep)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sweep = load_sweep(args.sweep).with_extra_args(gin_flags)
    return {"run": _run, "status": _status, "list": _list, "report": _report}[args.action](
        sweep, args
    )


def _run(sweep, args) -> int:
    only = [n for n in args.only.split(",") if n]
    flags = args.launcher_flags
    if args.launcher == "tpu":
        check_bindings_keep_variants_apart(sweep)  # here, before a slice is paid for
        tpu = import_launcher("tpu")
        extra = ["--only", ",".join(only)] if only else []
        return tpu.main(["sweep", str(args.sweep), "--root", str(args.root), *extra, *flags])
    if flags:
        raise UsageError(f"unexpected arguments {flags}; only --launcher tpu takes flags after --")
    process_runner = run_one_process
    if args.num_processes > 1:
        process_runner = import_launcher("local").process_runner(args.num_processes)
    runner = SweepRunner(sweep, args.root, fail_fast=args.fail_fast, process_runner=process_runner)
    results = runner.run(only)
    failed = [r for r in results if r.state == "failed"]
    for r in results:
        line = f"{r.name}: {r.state}"
        if r.state == "failed":
            line += f" ({r.message}); log: {r.log_path}"
        print(line)
    for r in failed:
        tail = log_tail(r.log_path)
        if tail:
            print(f"--- last lines of {r.log_path} ---\n{tail}")
    done = sum(r.state in ("done", "skipped") for r in results)
    print(f"{done} of {len(results)} variants done; {len(failed)} failed")
    return 1 if failed else 0


def _status(sweep, args) -> int:
    for v in sweep.variants:
        s = variant_status(args.root, v.name)
        extra = f"  ({s.detail})" if s.detail and s.state != "done" else ""
        print(f"{v.name:32s} {s.state:10s} {s.model_dir}{extra}")
    return 0


def _list(sweep, args) -> int:
    try:
        check_bindings_keep_variants_apart(sweep)
    except SweepFileError as e:
        print(f"(the sweep cannot run: {e})")
    for v in sweep.variants:
        print(f"{v.name}  [{v.label}]")
        try:
            print(f"  {shlex.join(sweep.argv(v, args.root / v.name))}")
        except SweepFileError as e:
            print(f"  (cannot run yet: {e})")
    return 0


def _report(sweep, args) -> int:
    from fiat_t5x.sweeps.report import write_report

    files = write_report(sweep, args.root, args.out, plots=not args.no_plots)
    print(f"wrote {files.markdown}")
    for md, csv in files.tables.values():
        print(f"wrote {md} and {csv}")
    for p in files.plots:
        print(f"wrote {p}")
    if files.missing:
        print(f"missing variants ({len(files.missing)}): {', '.join(files.missing)}")
    return 0
