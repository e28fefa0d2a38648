"""Strict YAML loading for sweep files.

PyYAML silently keeps the last of two equal keys (a second `fiat:` variant would replace
the first) and reads `1e-3` as a string (YAML 1.1 wants `1.0e-3`); both are traps in a file
full of learning rates, so this loader rejects duplicates (naming the line) and reads
exponent notation as floats.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import yaml

from fiat_t5x.errors import UsageError


class SweepFileError(UsageError):
    """A sweep file is malformed; the message names the file and the field."""


class _StrictLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise SweepFileError(
                f"{key_node.start_mark.name}:{line}: key {key!r} repeats the one on line "
                f"{seen[key]}; give it a distinct name"
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_FLOAT_RE = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def load_yaml(path: pathlib.Path) -> Any:
    """Parses `path`; a missing file or a syntax error is raised as a `SweepFileError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SweepFileError(f"{path}: cannot read the sweep file ({e.strerror})") from None
    return load_yaml_text(text, str(path))


def load_yaml_text(text: str, name: str = "<string>") -> Any:
    """Like `load_yaml` for in-memory text (tests, generated sweeps)."""
    loader = _StrictLoader(text)
    loader.name = name  # marks (and so error messages) carry the file name
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        raise SweepFileError(f"{where}: invalid YAML: {e.problem}") from None
    finally:
        loader.dispose()
