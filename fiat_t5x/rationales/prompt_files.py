"""Reading the Iβ and Iτ prompt files: one YAML/JSON layout, one set of error messages.

Both files are `{tasks: {<task>: {...}}}` (plus file-wide defaults for Iβ); the per-task keys
differ, the reading, the key checks and the errors that name file and field do not.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

import yaml

from fiat_t5x import gin_files

T = TypeVar("T")


def read_prompt_file(path: str | pathlib.Path, error: type[Exception], kind: str) -> Any:
    """The parsed content of a .yaml/.yml/.json prompt file; `error` names the file on failure."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"cannot read the {kind} file {path}: {e}") from e
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise error(f"{path}: cannot parse ({e})") from e


def task_entries(
    data: Any,
    source: str,
    *,
    allowed: Collection[str],
    required_strings: Collection[str],
    error: type[Exception],
) -> list[tuple[str, Mapping[str, Any], str]]:
    """(task, raw entry, location for messages) for every task of a parsed prompt file, after
    checking the layout, unknown keys and the required string fields (all checked up front)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("tasks"), Mapping):
        raise error(f"{source}: expected a mapping with a 'tasks' mapping at the top level")
    entries = []
    for task, raw in data["tasks"].items():
        where = f"{source}: tasks.{task}"
        if not isinstance(raw, Mapping):
            raise error(f"{where}: must be a mapping")
        unknown = set(raw) - set(allowed)
        if unknown:
            raise error(f"{where}: unknown keys {sorted(unknown)}; allowed {sorted(allowed)}")
        for key in required_strings:
            if not isinstance(raw.get(key), str):
                raise error(f"{where}.{key} is required and must be a string")
        entries.append((str(task), raw, where))
    return entries


def pick_task(
    entries: Mapping[str, T], task: str, path: Any, kind: str, error: type[Exception]
) -> T:
    """One task's entry; the error lists the tasks the file does define."""
    if task not in entries:
        raise error(f"{path} has no {kind} for task {task!r}; it defines {sorted(entries)}")
    return entries[task]


def resolve_path(path: str) -> str:
    """`path` as given when it exists, else a shipped file: gin files name `gin/fiat/itau/...`
    relative to the checkout or the installed package, wherever the command runs."""
    return gin_files.find(path) or path
