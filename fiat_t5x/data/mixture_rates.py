"""`fiat-t5x mixture-rates <mixture>`: every task's effective sampling share in a mixture.

Shares are normalised and multiplied through sub-mixtures (`mixtures.effective_rates`), so a
user sees the balance before launching a run. Task modules are imported first so that their
mixtures are registered (`--module`, default: every module of the `fiat_tasks` package); the
Flan CoT tasks need `FIAT_FLAN_COT_DIR` set to their data folder.
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


def format_rates(mixture: str, shares: dict[str, float], raw: dict[str, float]) -> str:
    """A table: task, rate inside its parent, effective share (descending)."""
    width = max(len("task"), *(len(t) for t in shares))
    lines = [
        f"mixture {mixture}: {len(shares)} tasks",
        f"{'task'.ljust(width)}  {'rate':>12}  {'share':>8}",
    ]
    for task, share in sorted(shares.items(), key=lambda kv: (-kv[1], kv[0])):
        rate = f"{raw[task]:.4g}" if task in raw else "-"
        lines.append(f"{task.ljust(width)}  {rate:>12}  {100 * share:7.3f}%")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fiat-t5x mixture-rates", description=__doc__.split("\n")[0]
    )
    parser.add_argument("mixture", help="registered mixture (or task) name")
    parser.add_argument(
        "--module", action="append", help="module registering the mixture (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="print {task: share} as JSON")
    args = parser.parse_args(argv)
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
    if args.json:
        print(json.dumps(shares, indent=1, sort_keys=True))
        return 0
    raw: dict[str, float] = {}
    if isinstance(provider, seqio.Mixture):
        for task in provider.tasks:
            raw[task.name] = provider.get_rate(task)
    print(format_rates(provider.name, shares, raw))
    return 0
