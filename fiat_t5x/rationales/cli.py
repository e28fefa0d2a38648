"""`fiat-t5x rationales generate|status`: β's rationales for a task's splits into a store; a
store's counts.

    # the dataset's gin file, as for training (RATIONALE_STORE, BASE_TASK, Iβ, BETA)
    fiat-t5x rationales generate --gin_file=gin/fiat/xor_attriqa.gin \\
        --gin.RATIONALE_STORE="'/data/rationales/xor'" \\
        --gin.BETA_BASE_URL="'http://HOST:8000/v1'" --gin.BETA_MODEL="'MODEL'"
    # or plain flags for a JSONL file and an OpenAI-compatible server
    fiat-t5x rationales generate --store /tmp/r --task toy --split train --input train.jsonl \\
        --prompts ibeta.yaml --base_url http://127.0.0.1:8000/v1 --model my-model
    fiat-t5x rationales status --store /tmp/r

`gin/runs/rationales.gin` is always read first (it binds the job to the macros); without a
--gin_file, `gin/fiat/beta/openai.gin` (β = an OpenAI-compatible server) is read too. Each
plain flag is a gin binding applied last (see FLAG_BINDINGS). The API key is never a flag or
a gin value: only the NAME of the environment variable holding it (--api_key_env).

Exit status: 0 every example settled, 3 finished but some examples failed (rerun to retry the
retryable ones), 2 a configuration error (one line on stderr, nothing sent), 130 interrupted
(rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import gin
from fiat_t5x.training import gin_cli
from fiat_t5x.training.gin_cli import UsageError

logger = logging.getLogger(__name__)

EXIT_FAILURES = 3
EXIT_INTERRUPTED = 130
JOB_GIN = "runs/rationales.gin"
DEFAULT_BETA_GIN = "fiat/beta/openai.gin"
# Macros the job cannot run without (gin/runs/rationales.gin reads them).
REQUIRED_MACROS = ("RATIONALE_STORE", "BASE_TASK", "IBETA_FILE", "BETA")


def _q(value: Any) -> str:
    return repr(value)


# flag -> (argparse options, the gin bindings it stands for given the parsed args)
FLAG_BINDINGS: dict[str, tuple[dict[str, Any], Callable[[Any, argparse.Namespace], list[str]]]] = {
    "--store": (
        {"help": "store directory (RATIONALE_STORE)"},
        lambda v, a: [f"RATIONALE_STORE = {_q(v)}"],
    ),
    "--task": (
        {"help": "task: the store key, and the SeqIO task when no --input (BASE_TASK)"},
        lambda v, a: [f"BASE_TASK = {_q(v)}"],
    ),
    "--split": (
        {"action": "append", "help": "split to generate; repeatable (RATIONALE_SPLITS)"},
        lambda v, a: [f"RATIONALE_SPLITS = {_q(list(v))}"],
    ),
    "--input": (
        {"help": "JSONL examples for the one --split (default: the SeqIO task's split)"},
        lambda v, a: [f"job.RationaleJob.input_files = {_q({(a.split or ['train'])[0]: v})}"],
    ),
    "--prompts": (
        {"help": "Iβ file, YAML/JSON (IBETA_FILE)"},
        lambda v, a: [f"IBETA_FILE = {_q(v)}"],
    ),
    "--prompt_task": (
        {"help": "entry of the Iβ file (IBETA_TASK; default: --task)"},
        lambda v, a: [f"IBETA_TASK = {_q(v)}"],
    ),
    "--module": (
        {"action": "append", "help": "module to import first (e.g. fiat_tasks.demo); repeatable"},
        lambda v, a: [f"job.RationaleJob.import_modules = {_q(list(v))}"],
    ),
    "--id_field": (
        {"help": "example id field (default 'id')"},
        lambda v, a: [f"job.RationaleJob.id_field = {_q(v)}"],
    ),
    "--limit": (
        {"type": int, "help": "only the first N examples of each split"},
        lambda v, a: [f"job.RationaleJob.limit = {v}"],
    ),
    "--retry_failed": (
        {"action": "store_true", "default": None, "help": "ask again for permanent failures too"},
        lambda v, a: ["job.RationaleJob.retry_failed = True"],
    ),
    "--no_progress": (
        {"action": "store_true", "default": None, "help": "no progress bar"},
        lambda v, a: ["job.RationaleJob.progress = False"],
    ),
    "--base_url": (
        {"help": "OpenAI-compatible API root, e.g. http://host:8000/v1 (BETA_BASE_URL)"},
        lambda v, a: [f"BETA_BASE_URL = {_q(v)}"],
    ),
    "--model": (
        {"help": "β's model name on the server (BETA_MODEL)"},
        lambda v, a: [f"BETA_MODEL = {_q(v)}"],
    ),
    "--api_key_env": (
        {"help": "NAME of the env var holding the key, '' for none (BETA_API_KEY_ENV)"},
        lambda v, a: [f"BETA_API_KEY_ENV = {_q(v)}"],
    ),
    "--concurrency": (
        {"type": int, "help": "requests in flight at most (OpenAIProvider.concurrency)"},
        lambda v, a: [f"openai_http.OpenAIProvider.concurrency = {v}"],
    ),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fiat-t5x rationales generate",
        description="β's rationales for a task's splits, into a store. "
        "Also takes --gin_file=FILE, --gin.NAME=VALUE and --gin_search_paths=DIRS.",
        allow_abbrev=False,
    )
    parser.add_argument("--verbose", action="store_true", help="log every retry")
    for flag, (options, _) in FLAG_BINDINGS.items():
        parser.add_argument(flag, dest=flag[2:], **options)
    return parser


def flag_bindings(args: argparse.Namespace) -> list[str]:
    """The gin bindings the given plain flags stand for (applied after every gin file)."""
    bindings = []
    for flag, (_, binding) in FLAG_BINDINGS.items():
        value = getattr(args, flag[2:])
        if value is not None:
            bindings += binding(value, args)
    if args.input is not None and args.split is None:
        bindings.append("RATIONALE_SPLITS = ['train']")
    if args.task is not None and args.prompt_task is None:
        bindings.append(f"IBETA_TASK = {_q(args.task)}")
    if args.input is not None and args.split is not None and len(args.split) != 1:
        raise UsageError("--input is the examples of one split: give exactly one --split")
    return bindings


def gin_argv(rest: Sequence[str], bindings: Sequence[str]) -> list[str]:
    """gin_cli arguments: the job's gin file first, the user's, then the flags' bindings."""
    user_files = any(a.startswith("--gin_file") for a in rest)
    files = [f"--gin_file={JOB_GIN}"] + ([] if user_files else [f"--gin_file={DEFAULT_BETA_GIN}"])
    return [*files, *rest, *(f"--gin_bindings={b}" for b in bindings)]


def bound_model_dir() -> str | None:
    """MODEL_DIR when gin sets it (a sweep step): β's counts then go to its metrics.jsonl."""
    try:
        value = gin.query_parameter("%MODEL_DIR")
    except ValueError:
        return None
    return None if gin_cli.is_required(value) or not value else str(value)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def generate_main(argv: Sequence[str]) -> int:
    from fiat_t5x.rationales import job as job_lib

    parser = _parser()
    try:
        args, rest = parser.parse_known_args(list(argv))
        gin_args = gin_argv(rest, flag_bindings(args))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    outcome: dict[str, int] = {}

    def body() -> None:
        job = gin_cli.configured(job_lib.RationaleJob)()
        summaries = job_lib.run_job(job, gin_config=gin.operative_config_str())
        for summary in summaries:
            print(summary.describe())
        model_dir = bound_model_dir()
        if model_dir:
            job_lib.write_job_metrics(model_dir, summaries)
        failed = sum(s.failed_permanent + s.failed_transient for s in summaries)
        outcome["code"] = EXIT_FAILURES if failed else 0

    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():
            status = gin_cli.run_main(gin_args, body, REQUIRED_MACROS, parser.format_usage())
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return status or outcome.get("code", 0)


def store_status(store_dir: str) -> dict[str, Any]:
    """Counts per task split: rationales, failures by kind, tokens, first and last time."""
    from fiat_t5x.rationales.store import RationaleStore

    store = RationaleStore.open_readonly(store_dir)
    splits: dict[str, dict[str, Any]] = {}
    for task, split in store.task_splits():
        done = store.rationales(task, split)
        failed = store.failures(task, split)
        times = [r.time for r in done.values()] + [f.time for f in failed.values()]
        kinds = collections.Counter(
            f"{f.kind}{'' if f.permanent else ' (retryable)'}" for f in failed.values()
        )
        splits[f"{task}/{split}"] = {
            "rationales": len(done),
            "failures_permanent": sum(f.permanent for f in failed.values()),
            "failures_retryable": sum(not f.permanent for f in failed.values()),
            "failure_kinds": dict(kinds),
            "prompt_tokens": sum(r.prompt_tokens or 0 for r in done.values()),
            "completion_tokens": sum(r.completion_tokens or 0 for r in done.values()),
            "first": min(times, default=None),
            "last": max(times, default=None),
        }
    return {
        "store": str(store.directory),
        "identity_sha256": store.identity.sha256,
        "identity": store.identity.to_json(),
        "splits": splits,
    }


def status_main(argv: Sequence[str]) -> int:
    parser = _Parser(prog="fiat-t5x rationales status")
    parser.add_argument("--store", required=True, help="store directory")
    parser.add_argument("--json", action="store_true", help="print JSON")
    try:
        args = parser.parse_args(list(argv))
        status = store_status(args.store)
    except (UsageError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    identity = status["identity"]
    print(f"store {status['store']}  identity {status['identity_sha256'][:12]}")
    print(f"  β: {json.dumps(identity['provider'], sort_keys=True)}")
    print(f"  decoding: {json.dumps(identity['decoding'], sort_keys=True)}")
    print(f"  Iβ sha256: {identity['ibeta_sha256'][:12]}")
    if not status["splits"]:
        print("  (no records yet)")
    for name, s in status["splits"].items():
        print(
            f"  {name}: {s['rationales']} rationales, {s['failures_permanent']} permanent "
            f"failures, {s['failures_retryable']} retryable; tokens {s['prompt_tokens']} prompt "
            f"+ {s['completion_tokens']} completion; {s['first']} .. {s['last']}"
        )
        for kind, count in sorted(s["failure_kinds"].items()):
            print(f"      {kind}: {count}")
    return 0


def main(argv: Sequence[str]) -> int:
    commands = {"generate": generate_main, "status": status_main}
    usage = "usage: fiat-t5x rationales {generate,status} [--help]"
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    if not argv or argv[0] not in commands:
        print(usage, file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
