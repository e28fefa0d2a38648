"""What a stack of gin files sets, read without running it.

gin's own parser reads each file (following `include`s through the search paths, as gin does);
nothing is imported or called, so this is cheap and works before any configurable exists.
`last_assignments` gives, for every binding key (`MACRO` or `scope/configurable.param`), where
the stack last sets it and to what; references and macros keep their text (`%BASE_CHECKPOINT_PATH`).
Used to tell a misspelt `--gin.NAME` from a macro a file sets (`gin_cli.check_macros`), to find
sweep bindings that would erase what variants' files set apart (`sweeps.binding_check`), and to
catch a model's defaults loaded after a file that overrides them (`lost_to_model_defaults`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from fiat_t5x import gin_files
from gin import config_parser

__all__ = ["Assignment", "Reference", "binding_key", "last_assignments", "lost_to_model_defaults"]


@dataclasses.dataclass(frozen=True)
class Reference:
    """A `@configurable`, `@configurable()` or `%MACRO` as written (compared by its text)."""

    text: str

    def __repr__(self) -> str:
        return self.text


class _TextDelegate(config_parser.ParserDelegate):
    def configurable_reference(self, scoped_configurable_name: str, evaluate: bool) -> Reference:
        return Reference(f"@{scoped_configurable_name}{'()' if evaluate else ''}")

    def macro(self, macro_name: str) -> Reference:
        return Reference(f"%{macro_name}")


@dataclasses.dataclass(frozen=True)
class Assignment:
    """Where a gin stack last sets a binding key, and to what."""

    value: Any
    file: str
    line: int

    def describe(self) -> str:
        relative = os.path.relpath(self.file)
        shown = self.file if relative.startswith("..") else relative
        return f"{shown}:{self.line} sets it to {self.value!r}"


def binding_key(text: str) -> str:
    """`scope/selector.arg` (or `MACRO`) as gin parses a binding's left-hand side."""
    return _key(*config_parser.parse_binding_key(text.strip()))


def _key(scope: str, selector: str, arg_name: str) -> str:
    key = f"{scope}/{selector}" if scope else selector
    return f"{key}.{arg_name}" if arg_name else key


def last_assignments(files: Sequence[str], search_paths: Sequence[str]) -> dict[str, Assignment]:
    """Binding key -> its last assignment in `files` (in order, includes followed in place)."""
    found: dict[str, Assignment] = {}
    for file in files:
        _read(file, search_paths, found, ())
    return found


def _read(
    file: str, search_paths: Sequence[str], found: dict[str, Assignment], seen: tuple[str, ...]
) -> None:
    path = os.path.realpath(file)
    if path in seen:  # an include cycle: gin itself reports it when the variant runs
        return
    with open(path, encoding="utf-8") as f:
        statements = list(config_parser.ConfigParser(f, _TextDelegate()))
    for statement in statements:
        if isinstance(statement, config_parser.IncludeStatement):
            included = gin_files.find(statement.filename, search_paths)
            if included is None:
                raise FileNotFoundError(statement.filename)
            _read(included, search_paths, found, (*seen, path))
        elif isinstance(statement, config_parser.BindingStatement):
            key = _key(statement.scope, statement.selector, statement.arg_name)
            found[key] = Assignment(statement.value, file, statement.location.line_num)


def _is_model_defaults(file: str, models_dir: str) -> bool:
    """A model family's architecture or size file: fiat-t5x's gin/models/<family>/*.gin.

    (gin/models/pod_memory.gin sits directly in gin/models/: it overrides those defaults.)
    """
    return os.path.dirname(os.path.dirname(os.path.realpath(file))) == models_dir


def lost_to_model_defaults(
    files: Sequence[str], search_paths: Sequence[str]
) -> list[tuple[str, Assignment, Assignment]]:
    """(key, earlier, later) for each value an earlier file in `files` sets that a model's
    defaults, loaded by a later file, set back: the earlier setting is silently dead.

    gin keeps the last assignment, so a model file must come before the files that override it
    (`gin/partitioning/pod.gin` after `models/flan_t5/xxl.gin`). Overrides between other files
    (an ablation after its dataset file) are how gin stacks are meant to work and are not listed.
    """
    models_dir = os.path.realpath(os.path.join(gin_files.gin_dir(), "models"))
    earlier: dict[str, Assignment] = {}
    lost = []
    for file in files:
        stack: dict[str, Assignment] = {}
        _read(file, search_paths, stack, ())
        for key, later in stack.items():
            before = earlier.get(key)
            if (
                before is not None
                and _is_model_defaults(later.file, models_dir)
                and not _is_model_defaults(before.file, models_dir)
                and repr(before.value) != repr(later.value)
            ):
                lost.append((key, before, later))
        earlier.update(stack)
    return lost
