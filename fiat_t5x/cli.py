"""`fiat-t5x <command> ...`: one entry point that dispatches to each command's own module.

Commands are imported lazily so that `fiat-t5x score` does not pay for importing JAX or
TensorFlow it does not need. Each target is `module:function` where the function takes the
remaining argv (a list of strings) and returns an exit code. Every command runs under
`fiat_t5x.errors.command`: a user error is one message on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import sys

from fiat_t5x import errors

# name -> ("module:function", one-line help). Add a line here when a command lands.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("fiat_t5x.train:main", "train (LoRA or full fine-tuning) from gin files"),
    "eval": ("fiat_t5x.eval:main", "evaluate MODEL_DIR's newest checkpoint on a split"),
    "infer": ("fiat_t5x.infer:main", "decode a split with MODEL_DIR's newest checkpoint to JSONL"),
    "rationales": ("fiat_t5x.rationales.cli:main", "generate β's rationales; store status"),
    "sweep": ("fiat_t5x.sweeps.cli:main", "run sweeps of gin variants; tables and plots"),
    "score": ("fiat_t5x.scoring:main", "score a JSONL predictions file (AttriQA, XTREME-UP QA)"),
    "check-vocab": ("fiat_t5x.check_vocab:main", "share of a task's text a vocabulary loses"),
    "convert": (
        "fiat_t5x.convert:main",
        "convert checkpoints: T5X <-> Hugging Face, PEFT adapters",
    ),
    "preflight": (
        "fiat_t5x.preflight:main",
        "compile a train run ahead of time for a TPU slice: memory per chip, verdict",
    ),
    "fiat-infer": ("fiat_t5x.inference.two_stage:main", "FIAT inference: β's rationale, then τ"),
    "icl": ("fiat_t5x.inference.icl:main", "few-shot CoT ICL baseline: β alone, answers parsed"),
    "mixture-rates": (
        "fiat_t5x.data.mixture_rates:main",
        "effective sampling share of each task in a mixture",
    ),
}
# Commands that do not import TensorFlow (kept fast: nothing is imported for them up front).
_WITHOUT_TENSORFLOW = frozenset({"score"})


def _usage() -> str:
    width = max((len(name) for name in COMMANDS), default=0)
    lines = ["usage: fiat-t5x <command> [args...] [--debug]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in sorted(COMMANDS.items())]
    lines += [
        "",
        "`fiat-t5x <command> --help` explains a command. Mistakes are reported in one message",
        f"(exit code 2); {errors.DEBUG_FLAG} or {errors.DEBUG_ENV}=1 adds the traceback.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv, debug = errors.debug_requested(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"fiat-t5x: error: unknown command {name!r}{errors.closest(name, COMMANDS)}\n\n"
            f"{_usage()}",
            file=sys.stderr,
        )
        return 2
    if name not in _WITHOUT_TENSORFLOW and not debug:
        from fiat_t5x.training import tf_devices

        tf_devices.import_tensorflow_quietly()
    module_name, function_name = COMMANDS[name][0].split(":")
    command = getattr(importlib.import_module(module_name), function_name)
    if not hasattr(command, "guarded_prog"):
        command = errors.command(f"fiat-t5x {name}")(command)
    return command([errors.DEBUG_FLAG, *rest] if debug else rest)


if __name__ == "__main__":
    sys.exit(main())
