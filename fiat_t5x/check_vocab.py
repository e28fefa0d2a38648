"""`fiat-t5x check-vocab --task NAME --vocab PATH|byte`: unknown-token share per language.

Prints a table (per language: examples, characters, % of characters and tokens mapped to
unknown, the characters lost) and exits 1 when any language is above `--threshold`, so CI or a
launch script can stop before training on text the vocabulary cannot represent.

Your own task: `--module my_tasks` imports the module that registers it (repeatable; run from
the directory that holds my_tasks.py, or set PYTHONPATH). Languages are read from the
examples' `language` field (`--language_field` names another). Mistakes (an unknown module,
task, split or vocabulary file) exit 2 with one message.
"""

from __future__ import annotations

import argparse

from fiat_t5x import errors

DEFAULT_MODULES = ("fiat_tasks.xor_attriqa", "fiat_tasks.xtreme_up_qa")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fiat-t5x check-vocab", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--task", required=True, help="a registered SeqIO task or mixture")
    parser.add_argument("--vocab", required=True, help="a SentencePiece .model path, or 'byte'")
    parser.add_argument("--split", default="train")
    parser.add_argument("--max_examples", type=int, default=500, help="per task (default 500)")
    parser.add_argument("--threshold", type=float, default=0.01, help="unknown-character share")
    parser.add_argument(
        "--module",
        action="append",
        default=None,
        help=f"module(s) that register the task (default: {', '.join(DEFAULT_MODULES)})",
    )
    parser.add_argument(
        "--language_field", default="language", help="example field holding the language code"
    )
    parser.add_argument(
        "--gin_binding",
        action="append",
        default=[],
        help="e.g. \"xor_attriqa_data.data_dir='/data/xor_attriqa/in-language'\"",
    )
    return parser


@errors.command("fiat-t5x check-vocab")
def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    for module in args.module or DEFAULT_MODULES:
        errors.import_module(module, "--module")
    if args.gin_binding:
        from fiat_t5x.training import gin_cli

        gin_cli.parse_bindings(args.gin_binding, flag="--gin_binding")

    from fiat_t5x.data import vocab_coverage
    from fiat_t5x.data.metrics import breakdown
    from fiat_t5x.training.data import get_task_or_fail

    try:
        task = get_task_or_fail(args.task)
    except ValueError as e:
        raise errors.UsageError(f"--task: {e}".replace("MIXTURE_OR_TASK_NAME=", "")) from None
    leaves = getattr(task, "tasks", [task])
    if not any(args.split in leaf.splits for leaf in leaves):
        splits = sorted({s for leaf in leaves for s in leaf.splits})
        raise errors.UsageError(f"--split {args.split}: {args.task} has the splits {splits}")
    vocabulary = vocab_coverage.load_vocabulary(args.vocab)
    coverage = vocab_coverage.measure_coverage(
        vocabulary,
        vocab_coverage.task_examples(args.task, args.split, args.max_examples),
        language_field=args.language_field,
    )
    if not coverage:
        print(f"{args.task}/{args.split}: no examples")
        return 1
    print(f"{args.task} ({args.split}) with vocabulary {args.vocab}:\n")
    print(breakdown.rows_to_markdown([entry.as_row() for entry in coverage]))
    bad = [e.language for e in coverage if e.unknown_char_rate > args.threshold]
    if bad:
        print(
            f"\nPOORLY COVERED (> {100 * args.threshold:.1f}% unknown characters): "
            f"{', '.join(bad)}. Use a vocabulary that covers these scripts (mT5/umT5 or bytes)."
        )
        return 1
    return 0
