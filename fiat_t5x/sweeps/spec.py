"""Sweep files: a named set of variants (gin files + bindings) declared in YAML.

A sweep file (see `docs/sweeps.md` and `gin/sweeps/*.yaml`) looks like::

    name: demo_ablations
    gin_files: [gin/runs/finetune.gin]        # shared by every variant, listed first
    bindings: {TRAIN_STEPS: 200}              # shared bindings (a variant's own win)
    variants:
      fiat:   {label: FIAT, gin_files: [gin/fiat/demo.gin]}
      wo_cot: {label: w/o CoT, gin_files: [gin/ablations/wo_cot.gin]}
    grids:
      lora:                                   # expanded into one variant per grid point
        gin_files: [gin/fiat/demo.gin]
        axes: {LORA_RANK: [4, 8], LEARNING_RATE: [1e-3, 3e-4]}
    report: {...}                             # see fiat_t5x.sweeps.report_spec

Parsing checks structure only: a missing gin file is reported when that sweep is run
(`Sweep.resolve_gin_files`), so a sweep referring to configs another engineer has not
written yet still parses, lists and reports.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from fiat_t5x import gin_files
from fiat_t5x.sweeps.report_spec import ReportSpec, parse_report_spec
from fiat_t5x.sweeps.yaml_loader import SweepFileError, load_yaml

__all__ = [
    "DEFAULT_COMMAND",
    "Sweep",
    "SweepFileError",
    "Variant",
    "gin_literal",
    "load_sweep",
    "parse_sweep",
]

# The trainer entry point; "{python}" becomes the running interpreter.
DEFAULT_COMMAND: tuple[str, ...] = ("{python}", "-m", "fiat_t5x.train")
# Variant names become directory names under the sweep root.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")
_BINDING_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_./]*$")
_TOP_KEYS = {
    "name",
    "description",
    "command",
    "gin_search_paths",
    "gin_files",
    "bindings",
    "variants",
    "grids",
    "report",
}
_VARIANT_KEYS = {"label", "gin_files", "bindings", "command", "description"}
_GRID_KEYS = _VARIANT_KEYS | {"axes", "name"}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One run of a sweep: its own MODEL_DIR is `<root>/<name>`.

    Attributes:
      name: directory-safe identifier, unique in the sweep.
      label: how the variant is named in tables and plots (e.g. "w/o CoT").
      gin_files: gin files as written in the sweep file (shared ones first).
      bindings: gin bindings `NAME -> python value` (shared ones overridden by the variant's).
      command: argv prefix replacing `python -m fiat_t5x.train`; gin flags are appended.
      grid: name of the grid the variant was expanded from, if any.
      grid_point: the grid axes' values for this variant.
    """

    name: str
    label: str
    gin_files: tuple[str, ...]
    bindings: Mapping[str, Any]
    command: tuple[str, ...]
    grid: str | None = None
    grid_point: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A parsed sweep file."""

    name: str
    description: str
    path: pathlib.Path
    variants: tuple[Variant, ...]
    gin_search_paths: tuple[pathlib.Path, ...]
    report: ReportSpec

    @property
    def variant_names(self) -> list[str]:
        return [v.name for v in self.variants]

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"{self.path}: no variant named {name!r}; variants are {self.variant_names}")

    def select(self, names: Sequence[str] | None) -> list[Variant]:
        """The variants named (in sweep order), or all of them when `names` is empty."""
        if not names:
            return list(self.variants)
        unknown = sorted(set(names) - set(self.variant_names))
        if unknown:
            raise SweepFileError(
                f"{self.path}: unknown variant(s) {unknown}; variants are {self.variant_names}"
            )
        return [v for v in self.variants if v.name in set(names)]

    def search_paths(self) -> list[pathlib.Path]:
        """Where relative gin files are looked up: the file's own paths, cwd, the project, gin/.

        The trainer searches the project's gin/ too, so `models/byt5/tiny.gin` and
        `gin/models/byt5/tiny.gin` both work in a sweep file.
        """
        gin_dir = gin_files.gin_dir()  # the checkout's gin/ or the installed package's
        paths = [*self.gin_search_paths, pathlib.Path.cwd(), gin_dir.parent, gin_dir]
        unique: list[pathlib.Path] = []
        for p in paths:
            if p not in unique:
                unique.append(p)
        return unique

    def resolve_gin_files(self, variant: Variant) -> list[pathlib.Path]:
        """Absolute paths of the variant's gin files; raises naming every file that is missing."""
        resolved, missing = [], []
        for index, name in enumerate(variant.gin_files):
            found = _find_file(name, self.search_paths())
            if found is None:
                missing.append(f"gin_files[{index}] {name!r}")
            else:
                resolved.append(found)
        if missing:
            where = ", ".join(str(p) for p in self.search_paths())
            raise SweepFileError(
                f"{self.path}: variant {variant.name!r}: gin file(s) not found: "
                f"{'; '.join(missing)} (looked in {where}); create them or fix the sweep file"
            )
        return resolved

    def argv(self, variant: Variant, model_dir: str | pathlib.Path) -> list[str]:
        """The full command line that trains and evaluates `variant` into `model_dir`."""
        files = self.resolve_gin_files(variant)
        argv = [sys.executable if part == "{python}" else part for part in variant.command]
        argv += [f"--gin_file={f}" for f in files]
        argv.append(f"--gin_search_paths={','.join(str(p) for p in self.search_paths())}")
        bindings = {**variant.bindings, "MODEL_DIR": str(model_dir)}
        argv += [f"--gin.{key}={gin_literal(value)}" for key, value in bindings.items()]
        return argv


def gin_literal(value: Any) -> str:
    """A YAML value as gin source text.

    Strings are quoted, except references (`@configurable`, `@fn()`, `%MACRO`), which pass
    through so a sweep can bind `OPTIMIZER: "@adamw"`. Lists become gin lists, mappings dicts.
    """
    if isinstance(value, str):
        return value if value.startswith(("@", "%")) else repr(value)
    if isinstance(value, bool) or value is None or isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        inner = ", ".join(gin_literal(v) for v in value)
        return f"({inner},)" if isinstance(value, tuple) and len(value) == 1 else f"[{inner}]"
    if isinstance(value, Mapping):
        return (
            "{" + ", ".join(f"{gin_literal(k)}: {gin_literal(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(f"cannot write {type(value).__name__} value {value!r} as gin")


def load_sweep(path: str | pathlib.Path) -> Sweep:
    """Reads and validates a sweep file; errors name the file and the offending field."""
    path = pathlib.Path(path)
    return parse_sweep(load_yaml(path), path)


def parse_sweep(data: Any, path: pathlib.Path) -> Sweep:
    """Validates already-loaded YAML (`path` is used for messages and relative paths)."""
    where = str(path)
    if not isinstance(data, Mapping):
        raise SweepFileError(f"{where}: a sweep file must be a mapping with 'name' and 'variants'")
    _check_keys(data, _TOP_KEYS, where)
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SweepFileError(f"{where}: field 'name' must be a directory-safe string, got {name!r}")
    base = _VariantFields(
        gin_files=_str_list(data.get("gin_files", []), f"{where}: field 'gin_files'"),
        bindings=_bindings(data.get("bindings", {}), f"{where}: field 'bindings'"),
        command=_command(data.get("command", list(DEFAULT_COMMAND)), f"{where}: field 'command'"),
    )
    search = _str_list(data.get("gin_search_paths", []), f"{where}: field 'gin_search_paths'")
    search_paths = tuple((path.parent / p).resolve() for p in search)

    variants: list[Variant] = []
    raw_variants = data.get("variants", {}) or {}
    if not isinstance(raw_variants, Mapping):
        raise SweepFileError(f"{where}: field 'variants' must map variant names to settings")
    for vname, raw in raw_variants.items():
        variants.append(_parse_variant(str(vname), raw, base, f"{where}: variants.{vname}"))
    raw_grids = data.get("grids", {}) or {}
    if not isinstance(raw_grids, Mapping):
        raise SweepFileError(f"{where}: field 'grids' must map grid names to settings")
    for gname, raw in raw_grids.items():
        variants.extend(_expand_grid(str(gname), raw, base, f"{where}: grids.{gname}"))
    if not variants:
        raise SweepFileError(f"{where}: the sweep has no variants; add 'variants' or 'grids'")
    seen: dict[str, int] = {}
    for v in variants:
        seen[v.name] = seen.get(v.name, 0) + 1
    duplicates = sorted(n for n, c in seen.items() if c > 1)
    if duplicates:
        raise SweepFileError(f"{where}: variant names {duplicates} are defined more than once")

    report = parse_report_spec(data.get("report", {}) or {}, [v.name for v in variants], where)
    return Sweep(
        name=name,
        description=str(data.get("description", "")),
        path=path,
        variants=tuple(variants),
        gin_search_paths=search_paths,
        report=report,
    )


@dataclasses.dataclass(frozen=True)
class _VariantFields:
    gin_files: list[str]
    bindings: dict[str, Any]
    command: tuple[str, ...]


def _parse_variant(name: str, raw: Any, base: _VariantFields, where: str) -> Variant:
    if not _NAME_RE.match(name):
        raise SweepFileError(f"{where}: variant name {name!r} is not directory-safe")
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise SweepFileError(f"{where}: must be a mapping (label, gin_files, bindings, command)")
    _check_keys(raw, _VARIANT_KEYS, where)
    fields = _merge(base, raw, where)
    return Variant(
        name=name,
        label=str(raw.get("label", name)),
        gin_files=tuple(fields.gin_files),
        bindings=fields.bindings,
        command=fields.command,
    )


def _expand_grid(gname: str, raw: Any, base: _VariantFields, where: str) -> list[Variant]:
    """One variant per point of the cartesian product of `axes` (first axis varies slowest)."""
    if not isinstance(raw, Mapping):
        raise SweepFileError(f"{where}: must be a mapping with 'axes'")
    _check_keys(raw, _GRID_KEYS, where)
    axes = raw.get("axes")
    if not isinstance(axes, Mapping) or not axes:
        raise SweepFileError(f"{where}: field 'axes' must map binding names to lists of values")
    for axis, values in axes.items():
        if not _BINDING_RE.match(str(axis)):
            raise SweepFileError(f"{where}.axes: {axis!r} is not a gin binding name")
        if not isinstance(values, list) or not values:
            raise SweepFileError(f"{where}.axes.{axis}: must be a non-empty list of values")
    fields = _merge(base, raw, where)
    template = raw.get("name")
    label_template = raw.get("label")
    variants = []
    for point_values in itertools.product(*axes.values()):
        point = dict(zip(axes.keys(), point_values, strict=True))
        if template is None:
            parts = [f"{_short_axis(a)}{_value_text(v)}" for a, v in point.items()]
            name = "_".join([gname, *parts])
        else:
            name = _format(str(template), point, f"{where}.name")
        label = (
            _format(str(label_template), point, f"{where}.label")
            if label_template is not None
            else name
        )
        if not _NAME_RE.match(name):
            raise SweepFileError(f"{where}: expanded variant name {name!r} is not directory-safe")
        variants.append(
            Variant(
                name=name,
                label=label,
                gin_files=tuple(fields.gin_files),
                bindings={**fields.bindings, **point},
                command=fields.command,
                grid=gname,
                grid_point=point,
            )
        )
    return variants


def _merge(base: _VariantFields, raw: Mapping, where: str) -> _VariantFields:
    own_files = _str_list(raw.get("gin_files", []), f"{where}.gin_files")
    own_bindings = _bindings(raw.get("bindings", {}), f"{where}.bindings")
    command = _command(raw["command"], f"{where}.command") if "command" in raw else base.command
    return _VariantFields(
        gin_files=[*base.gin_files, *own_files],
        bindings={**base.bindings, **own_bindings},
        command=command,
    )


def _short_axis(axis: str) -> str:
    """LORA_RANK -> lora_rank; a.b/C -> c (the last dotted component, lower-cased)."""
    return re.split(r"[./]", axis)[-1].lower()


def _value_text(value: Any) -> str:
    text = str(value).replace("/", "-").replace(" ", "")
    return re.sub(r"[^A-Za-z0-9_.=+-]", "", text)


def _format(template: str, point: Mapping[str, Any], where: str) -> str:
    try:
        return template.format(**point)
    except (KeyError, IndexError, ValueError) as e:
        raise SweepFileError(
            f"{where}: template {template!r} uses {e}; only the axes {list(point)} are available"
        ) from None


def _check_keys(raw: Mapping, allowed: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise SweepFileError(
            f"{where}: unknown field(s) {unknown}; allowed fields are {sorted(allowed)}"
        )


def _str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SweepFileError(f"{where} must be a list of non-empty strings, got {value!r}")
    return list(value)


def _bindings(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SweepFileError(f"{where} must map gin names to values, got {value!r}")
    for key, v in value.items():
        if not isinstance(key, str) or not _BINDING_RE.match(key):
            raise SweepFileError(f"{where}: {key!r} is not a gin binding name (NAME or a.b)")
        try:
            gin_literal(v)
        except TypeError as e:
            raise SweepFileError(f"{where}.{key}: {e}") from None
    return dict(value)


def _command(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise SweepFileError(f"{where} must be a non-empty list of strings (an argv prefix)")
    return tuple(value)


def _find_file(name: str, search_paths: Sequence[pathlib.Path]) -> pathlib.Path | None:
    candidate = pathlib.Path(name)
    if candidate.is_absolute():
        return candidate if candidate.is_file() else None
    for base in search_paths:
        if (base / candidate).is_file():
            return (base / candidate).resolve()
    return None


def dump_variant(variant: Variant) -> str:
    """The variant as YAML (written beside its run for reproducibility)."""
    data = dataclasses.asdict(variant)
    data["gin_files"] = list(variant.gin_files)
    data["command"] = list(variant.command)
    data["bindings"] = dict(variant.bindings)
    data["grid_point"] = dict(variant.grid_point)
    return yaml.safe_dump(data, sort_keys=False)
