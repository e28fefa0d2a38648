"""A sweep binding must not erase what the variants' gin files set apart.

gin applies `--gin.NAME=VALUE` flags after every gin file, so a binding the sweep gives several
variants wins over whatever their own files say. When those files set NAME differently (the
ablation ladder starts "w/o instruction-tuned base" from `INITIAL_CHECKPOINT_PATH =
%BASE_CHECKPOINT_PATH` and "w/o PEFT" trains at `LEARNING_RATE = %FULL_FINETUNE_LEARNING_RATE`),
the binding silently makes them equal and the table compares a run with itself.
`check_bindings_keep_variants_apart` finds such bindings before anything runs.

The gin files are read statically (`fiat_t5x.gin_assignments`: nothing is imported or run), so
the check is cheap. A variant whose files are missing or do not parse is left to fail on its
own when it runs.
"""

from __future__ import annotations

from fiat_t5x.gin_assignments import Assignment, Reference, binding_key, last_assignments
from fiat_t5x.sweeps.spec import Sweep, SweepFileError, Variant, gin_literal

__all__ = ["check_bindings_keep_variants_apart"]


def _assignments(sweep: Sweep, variant: Variant) -> dict[str, Assignment] | None:
    """The variant's gin stack as last assignments, or None when it cannot be read (the
    variant then fails with gin's or the runner's own message when it runs)."""
    search = [str(p) for p in sweep.search_paths()]
    try:
        files = [str(f) for f in sweep.resolve_gin_files(variant)]
        return last_assignments(files, search)
    except (SweepFileError, OSError, SyntaxError, ValueError):
        return None


def check_bindings_keep_variants_apart(sweep: Sweep) -> None:
    """Raises SweepFileError, naming each file and line and the fix, when one shared binding
    (the sweep's top-level `bindings:`) reaches variants whose gin files set that binding to
    different values: applied after every file, it would make them equal. (Variants whose
    files do not set it are not compared: a macro no file sets is read by none, and
    `fiat-t5x train` refuses a binding nothing reads.)"""
    if not sweep.shared_bindings:
        return
    stacks = {v.name: _assignments(sweep, v) for v in sweep.variants}
    problems = []
    for key in sorted(sweep.shared_bindings):
        shared = gin_literal(sweep.shared_bindings[key])
        settings: dict[str, tuple[list[str], Assignment]] = {}
        for v in sweep.variants:
            # A variant's own binding of the name is a choice for that variant, not one value
            # spread over all of them (a smoke run may give every variant the same few steps).
            if gin_literal(v.bindings[key]) != shared:
                continue
            assignment = (stacks[v.name] or {}).get(binding_key(key))
            if assignment is not None:
                names, _ = settings.setdefault(repr(assignment.value), ([], assignment))
                names.append(v.name)
        if len(settings) > 1:
            problems.append(_problem(key, shared, list(settings.values())))
    if problems:
        raise SweepFileError(
            f"{sweep.path}: {' | '.join(problems)}. Bindings apply after every gin file, so "
            "these variants would run with one value and no longer differ there. Bind what "
            "their files derive it from, or set it in a gin file listed under the sweep's "
            "gin_files (read before each variant's own files), or per variant"
        )


def _problem(key: str, literal: str, settings: list[tuple[list[str], Assignment]]) -> str:
    where = "; ".join(
        f"{'variant' if len(names) == 1 else 'variants'} {', '.join(names)}: {a.describe()}"
        for names, a in settings
    )
    macros = sorted(
        {
            a.value.text[1:]
            for _, a in settings
            if isinstance(a.value, Reference) and a.value.text.startswith("%")
        }
    )
    derived = f" (derived from {', '.join(macros)})" if macros else ""
    return f"binding {key}={literal} would override what the variants' gin files set apart: {where}{derived}"
