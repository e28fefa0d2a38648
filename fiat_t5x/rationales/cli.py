"""`fiat-t5x rationales generate|status`: run β over a task split into a store, or inspect a store.

    fiat-t5x rationales generate --gin_file gin/runs/rationales.gin \\
        --gin_bindings "TASK='fiat_demo'" --gin_bindings "STORE_DIR='/tmp/rationales'" ...
    fiat-t5x rationales generate --store /tmp/r --task demo --split train --input train.jsonl \\
        --prompts ibeta.yaml --base_url http://127.0.0.1:8000/v1 --model my-model
    fiat-t5x rationales status --store /tmp/r

Gin configures `rationale_job`; a plain flag, when given, overrides the gin value of the same
parameter. The API key is never a flag or a gin value: only the NAME of the environment variable
that holds it (`--api_key_env`).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import inspect
import json
import logging
import signal
import sys
import urllib.parse
from typing import Any

import gin
from fiat_t5x import gin_files
from fiat_t5x.rationales.generate import Example, JobSummary
from fiat_t5x.rationales.providers.base import Provider

logger = logging.getLogger(__name__)

# rationale_job parameter -> (flag, argparse kwargs). Defaults live in rationale_job's signature.
_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "store_dir": ("--store", {"help": "store directory (created if missing)"}),
    "task": ("--task", {"help": "task name: the store key, and the SeqIO task when no --input"}),
    "split": ("--split", {"help": "split name (store key; SeqIO split when no --input)"}),
    "prompts_file": ("--prompts", {"help": "Iβ file (YAML/JSON)"}),
    "prompt_task": ("--prompt_task", {"help": "entry of the Iβ file (default: --task)"}),
    "input_jsonl": ("--input", {"help": "JSONL examples (default: the SeqIO task split)"}),
    "id_field": ("--id_field", {"help": "example id field (default 'id')"}),
    "import_modules": (
        "--module",
        {"action": "append", "help": "module to import first (e.g. fiat_tasks.demo); repeatable"},
    ),
    "limit": ("--limit", {"type": int, "help": "only the first N examples"}),
    "provider": ("--provider", {"choices": ["openai", "replay", "local"]}),
    "base_url": ("--base_url", {"help": "OpenAI-compatible API root, e.g. http://host:8000/v1"}),
    "model": ("--model", {"help": "β's model name (server model / replay label / local name)"}),
    "endpoint": ("--endpoint", {"choices": ["chat", "completions"]}),
    "api_key_env": ("--api_key_env", {"help": "NAME of the env var holding the key ('' = none)"}),
    "temperature": ("--temperature", {"type": float}),
    "max_tokens": ("--max_tokens", {"type": int}),
    "stop": ("--stop", {"action": "append", "help": "stop sequence; repeatable"}),
    "system_prompt": ("--system_prompt", {}),
    "timeout_s": ("--timeout_s", {"type": float}),
    "concurrency": ("--concurrency", {"type": int}),
    "max_attempts": ("--max_attempts", {"type": int}),
    "backoff_initial_s": ("--backoff_initial_s", {"type": float}),
    "backoff_max_s": ("--backoff_max_s", {"type": float}),
    "replay_file": ("--replay_file", {"help": "JSONL of id + rationale (provider=replay)"}),
    "replay_text_field": ("--replay_text_field", {}),
    "checkpoint": ("--checkpoint", {"help": "T5X checkpoint directory (provider=local)"}),
    "vocabulary": (
        "--vocabulary",
        {"help": "'byte' or a SentencePiece model path (provider=local)"},
    ),
    "batch_size": ("--batch_size", {"type": int}),
    "max_input_length": ("--max_input_length", {"type": int}),
    "retry_failed": (
        "--retry_failed",
        {"action": "store_const", "const": True, "help": "retry permanent failures too"},
    ),
    "progress": (
        "--no_progress",
        {"action": "store_const", "const": False, "help": "no progress bar"},
    ),
}


# Macros of gin/runs/rationales.gin that a flag also sets, so `--model X` satisfies
# `BETA_MODEL = %gin.REQUIRED` when that gin file is used.
_MACROS = {
    "task": "TASK",
    "split": "SPLIT",
    "store_dir": "STORE_DIR",
    "prompts_file": "IBETA_FILE",
    "model": "BETA_MODEL",
    "base_url": "BETA_BASE_URL",
    "api_key_env": "BETA_API_KEY_ENV",
}


def _public_url(url: str | None) -> str | None:
    """The URL without credentials or query string (some APIs take the key as ?key=...)."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def read_examples(
    *,
    task: str,
    split: str,
    input_jsonl: str | None,
    id_field: str,
    limit: int | None,
) -> list[Example]:
    """Examples from a JSONL file (ids as strings), or from a registered SeqIO task's source."""
    if input_jsonl:
        from fiat_t5x.data.sources import read_jsonl

        records = read_jsonl(input_jsonl, required=(id_field,), non_empty=(id_field,))
        examples = [Example(str(r[id_field]), dict(r.fields)) for r in records]
    else:
        examples = _seqio_examples(task, split, id_field, limit)
    return examples[:limit] if limit is not None else examples


def _seqio_examples(task: str, split: str, id_field: str, limit: int | None) -> list[Example]:
    """The raw (pre-preprocessor) examples of a SeqIO task: Iβ reads the source's fields."""
    import seqio

    try:
        seqio_task = seqio.get_mixture_or_task(task)
    except ValueError as e:
        raise ValueError(
            f"{task!r} is not a registered SeqIO task; pass --module to import its registration "
            "or --input with a JSONL file"
        ) from e
    dataset = seqio_task.source.get_dataset(split=split, shuffle=False)
    if limit is not None:
        dataset = dataset.take(limit)
    examples = []
    for i, raw in enumerate(dataset.as_numpy_iterator()):
        fields = {k: _to_python(v) for k, v in raw.items()}
        if id_field not in fields:
            raise ValueError(
                f"SeqIO task {task!r} split {split!r} example {i} has no field {id_field!r} "
                f"(fields: {sorted(fields)}); pass --id_field"
            )
        examples.append(Example(str(fields[id_field]), fields))
    return examples


def _to_python(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    return value


def build_provider(
    *,
    provider: str,
    model: str,
    base_url: str | None,
    endpoint: str,
    api_key_env: str | None,
    temperature: float,
    max_tokens: int,
    stop: tuple[str, ...],
    system_prompt: str | None,
    timeout_s: float,
    concurrency: int,
    max_attempts: int,
    backoff_initial_s: float,
    backoff_max_s: float,
    replay_file: str | None,
    replay_text_field: str,
    id_field: str,
    checkpoint: str | None,
    vocabulary: str | None,
    batch_size: int,
    max_input_length: int,
) -> Provider:
    if provider == "openai":
        from fiat_t5x.rationales.providers.openai_http import OpenAIConfig, OpenAIProvider

        if not base_url:
            raise ValueError("provider=openai needs --base_url (rationale_job.base_url)")
        config = OpenAIConfig(
            base_url=base_url,
            model=model,
            endpoint=endpoint,
            api_key_env=api_key_env,
            temperature=temperature,
            max_tokens=max_tokens,
            stop=tuple(stop),
            system_prompt=system_prompt,
            timeout_s=timeout_s,
            concurrency=concurrency,
            max_attempts=max_attempts,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
        )
        return OpenAIProvider(config)
    if provider == "replay":
        from fiat_t5x.rationales.providers.replay import ReplayConfig, ReplayProvider

        if not replay_file:
            raise ValueError("provider=replay needs --replay_file (rationale_job.replay_file)")
        return ReplayProvider(
            ReplayConfig(replay_file, model=model, id_field=id_field, text_field=replay_text_field)
        )
    if provider == "local":
        return _local_provider(
            checkpoint=checkpoint,
            vocabulary=vocabulary,
            model=model,
            batch_size=batch_size,
            max_input_length=max_input_length,
            max_tokens=max_tokens,
            temperature=temperature,
        )
    raise ValueError(f"unknown provider {provider!r}; use openai, replay or local")


def _local_provider(
    *,
    checkpoint: str | None,
    vocabulary: str | None,
    model: str,
    batch_size: int,
    max_input_length: int,
    max_tokens: int,
    temperature: float,
) -> Provider:
    if not checkpoint or not vocabulary:
        raise ValueError("provider=local needs --checkpoint (a T5X checkpoint) and --vocabulary")
    import seqio

    from fiat_t5x.models.checkpoints.layout import infer_config
    from fiat_t5x.models.checkpoints.t5x import load_t5x_params
    from fiat_t5x.models.model import EncoderDecoderModel
    from fiat_t5x.rationales.providers.local_t5 import LocalDecoding, LocalT5Provider

    params = load_t5x_params(checkpoint)
    t5 = EncoderDecoderModel(infer_config(params))
    vocab = (
        seqio.ByteVocabulary()
        if vocabulary == "byte"
        else seqio.SentencePieceVocabulary(vocabulary)
    )
    decoding = LocalDecoding(
        batch_size=batch_size,
        max_input_length=max_input_length,
        max_decode_length=max_tokens,
        method="greedy" if temperature == 0 else "sample",
        temperature=temperature,
    )
    return LocalT5Provider(t5, params, vocab, model_name=model, decoding=decoding)


@gin.configurable
def rationale_job(
    *,
    store_dir: str,
    task: str,
    prompts_file: str,
    model: str,
    split: str = "train",
    prompt_task: str | None = None,
    input_jsonl: str | None = None,
    id_field: str = "id",
    import_modules: tuple[str, ...] = (),
    limit: int | None = None,
    provider: str = "openai",
    base_url: str | None = None,
    endpoint: str = "chat",
    api_key_env: str | None = "OPENAI_API_KEY",
    temperature: float = 0.0,
    max_tokens: int = 256,
    stop: tuple[str, ...] = (),
    system_prompt: str | None = None,
    timeout_s: float = 60.0,
    concurrency: int = 8,
    max_attempts: int = 6,
    backoff_initial_s: float = 1.0,
    backoff_max_s: float = 60.0,
    replay_file: str | None = None,
    replay_text_field: str = "rationale",
    checkpoint: str | None = None,
    vocabulary: str | None = None,
    batch_size: int = 8,
    max_input_length: int = 1024,
    retry_failed: bool = False,
    progress: bool = True,
) -> JobSummary:
    """Generates β's rationales for one task split into `store_dir` (see the module docstring)."""
    from fiat_t5x.rationales.generate import generate_rationales, identity_for
    from fiat_t5x.rationales.prompts import load_prompt
    from fiat_t5x.rationales.store import RationaleStore

    settings = dict(locals())
    missing = [name for name, value in settings.items() if value is gin.REQUIRED]
    if missing:
        flags = ", ".join(f"{_FLAGS[m][0]} (rationale_job.{m})" for m in missing)
        raise ValueError(f"rationale_job: required values not set: {flags}")
    for name in import_modules:
        importlib.import_module(name)
    prompt = load_prompt(prompts_file, prompt_task or task)
    examples = read_examples(
        task=task, split=split, input_jsonl=input_jsonl, id_field=id_field, limit=limit
    )
    # build_provider's parameters are a subset of this function's, under the same names.
    provider_args = {name: settings[name] for name in inspect.signature(build_provider).parameters}
    beta = build_provider(**{**provider_args, "stop": tuple(stop)})
    with beta, RationaleStore.open_for_writing(store_dir, identity_for(beta, prompt)) as store:
        saved = {**settings, "base_url": _public_url(base_url), "stop": list(stop)}
        saved["import_modules"] = list(import_modules)
        store.write_job_config({"rationale_job": saved, "gin": gin.operative_config_str()})
        return generate_rationales(
            examples,
            task=task,
            split=split,
            prompt=prompt,
            provider=beta,
            store=store,
            retry_failed=retry_failed,
            progress=progress,
        )


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def generate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fiat-t5x rationales generate", description="β's rationales for a task split."
    )
    parser.add_argument("--gin_file", action="append", default=[], help="gin file; repeatable")
    parser.add_argument("--gin_bindings", action="append", default=[], help="gin binding")
    parser.add_argument("--verbose", action="store_true", help="log every retry")
    for dest, (flag, kwargs) in _FLAGS.items():
        parser.add_argument(flag, dest=dest, default=None, **kwargs)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # `gin/runs/rationales.gin` resolves in a checkout and in an installed package alike.
    gin.add_config_file_search_path(str(gin_files.gin_dir().parent))
    overrides = {dest: getattr(args, dest) for dest in _FLAGS if getattr(args, dest) is not None}
    macros = [f"{_MACROS[k]} = {v!r}" for k, v in overrides.items() if k in _MACROS]
    try:
        gin.parse_config_files_and_bindings(args.gin_file, [*args.gin_bindings, *macros])
    except (ValueError, OSError) as e:
        hint = ", ".join(f"{flag_macro} ({_FLAGS[k][0]})" for k, flag_macro in _MACROS.items())
        print(
            f"fiat-t5x rationales generate: gin: {e}\nSet required macros with --gin_bindings "
            f"\"NAME='value'\" or with the matching flag: {hint}",
            file=sys.stderr,
        )
        return 1
    for name in ("stop", "import_modules"):
        if name in overrides:
            overrides[name] = tuple(overrides[name])
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():
            summary = rationale_job(**overrides)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except TypeError as e:
        if "missing" not in str(e):
            raise
        names = [n for n in ("store_dir", "task", "prompts_file", "model") if n in str(e)]
        flags = ", ".join(_FLAGS[n][0] for n in names) or str(e)
        print(f"fiat-t5x rationales generate: missing {flags}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        print(f"fiat-t5x rationales generate: {e}", file=sys.stderr)
        return 1
    print(summary.describe())
    return 0 if summary.failed_permanent + summary.failed_transient == 0 else 3


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


def status_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fiat-t5x rationales status")
    parser.add_argument("--store", required=True, help="store directory")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    try:
        status = store_status(args.store)
    except (ValueError, OSError) as e:
        print(f"fiat-t5x rationales status: {e}", file=sys.stderr)
        return 1
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


def main(argv: list[str]) -> int:
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
