"""`fiat-t5x mixture-rates <mixture>`: every task's effective sampling share in a mixture.

Shares are normalised and multiplied through sub-mixtures (`mixtures.effective_rates`), so a
user sees the balance before launching a run. Task modules are imported first so that their
mixtures are registered (`--module`, default: every module of the `fiat_tasks` package); the
Flan CoT tasks need `FIAT_FLAN_COT_DIR` set to their data folder.

With `--inputs-length N`, few-shot Flan variants also show how many train examples are dropped
because no exemplar fits N tokens (or none matched the template): Flan drops them
(`filter_zero_shot_in_few_shot`) and so do we; this counts them (with `--seed`, default 0).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import pkgutil

from fiat_t5x import errors

logger = logging.getLogger(__name__)


def _import_task_modules(modules: list[str] | None) -> None:
    if modules:
        for name in modules:
            errors.import_module(name, "--module")
        return
    import fiat_tasks

    for info in pkgutil.iter_modules(fiat_tasks.__path__):
        name = f"fiat_tasks.{info.name}"
        try:
            importlib.import_module(name)
        except Exception as e:  # One broken task module must not hide the others' mixtures.
            logger.warning("could not import %s: %s", name, e)


def format_rates(
    mixture: str,
    shares: dict[str, float],
    raw: dict[str, float],
    drops: dict[str, tuple[int, int]] | None = None,
) -> str:
    """A table: task, rate inside its parent, effective share (descending), few-shot drops."""
    width = max(len("task"), *(len(t) for t in shares))
    header = f"{'task'.ljust(width)}  {'rate':>12}  {'share':>8}"
    lines = [f"mixture {mixture}: {len(shares)} tasks", header + ("  dropped" if drops else "")]
    for task, share in sorted(shares.items(), key=lambda kv: (-kv[1], kv[0])):
        rate = f"{raw[task]:.4g}" if task in raw else "-"
        line = f"{task.ljust(width)}  {rate:>12}  {100 * share:7.3f}%"
        if drops and task in drops:
            dropped, total = drops[task]
            line += f"  {dropped}/{total} ({100 * dropped / max(total, 1):.2f}%)"
        lines.append(line)
    return "\n".join(lines)


def few_shot_drop_counts(
    tasks: list[str], inputs_length: int, seed: int
) -> dict[str, tuple[int, int]]:
    """task -> (dropped, total) for the few-shot Flan variants among `tasks`."""
    from fiat_t5x.data.flan_variants import few_shot_drops, registered_variant

    counts = {}
    for task in tasks:
        variant = registered_variant(task)
        if variant is not None and variant.formatting.few_shot is not None:
            counts[task] = few_shot_drops(task, inputs_length, seed=seed)
    return counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fiat-t5x mixture-rates", description=__doc__.split("\n")[0]
    )
    parser.add_argument("mixture", help="registered mixture (or task) name")
    parser.add_argument(
        "--module", action="append", help="module registering the mixture (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="print {task: share} as JSON")
    parser.add_argument(
        "--inputs-length",
        type=int,
        help="also count the few-shot examples dropped at this inputs length (in tokens)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the drop count")
    args = parser.parse_args(argv)
    if args.inputs_length is not None and args.inputs_length < 1:
        print(
            f"fiat-t5x mixture-rates: --inputs-length={args.inputs_length}: give a positive length"
        )
        return 2
    _import_task_modules(args.module)

    import seqio

    from fiat_t5x.data.mixtures import effective_rates

    try:
        provider = seqio.get_mixture_or_task(args.mixture)
    except ValueError:
        known = sorted(seqio.MixtureRegistry.names())
        print(
            f"fiat-t5x mixture-rates: no mixture or task {args.mixture!r} is registered "
            f"(known mixtures: {', '.join(known) or 'none'}). Import its module with --module, "
            "or set its data variable (e.g. FIAT_FLAN_COT_DIR)."
        )
        return 2
    shares = effective_rates(provider)
    drops = None
    if args.inputs_length is not None:
        drops = few_shot_drop_counts(sorted(shares), args.inputs_length, args.seed)
    if args.json:
        if drops is None:
            print(json.dumps(shares, indent=1, sort_keys=True))
        else:
            dropped = {task: {"dropped": d, "total": t} for task, (d, t) in drops.items()}
            print(
                json.dumps({"shares": shares, "few_shot_drops": dropped}, indent=1, sort_keys=True)
            )
        return 0
    raw: dict[str, float] = {}
    if isinstance(provider, seqio.Mixture):
        for task in provider.tasks:
            raw[task.name] = provider.get_rate(task)
    print(format_rates(provider.name, shares, raw, drops))
    return 0
