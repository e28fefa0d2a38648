"""The `report:` section of a sweep file: which metrics become which tables and plots.

    report:
      method: fiat                         # the row compared with the best baseline
      baselines: [icl, finetune, distilled_cot]
      rows: [icl, finetune, distilled_cot, fiat]   # optional order (default: sweep order)
      ladder: [fiat, wo_cot, wo_instruction]       # optional: an ablation ladder, one step
                                                   # per pair of neighbours (paired tests)
      columns:                             # tasks × metrics of the main table
        - {task: Demo, metric: Acc, key: "fiat_demo/accuracy"}
      languages:                           # one per-language table each
        - {task: Demo, metric: Acc, key: "fiat_demo/accuracy/{language}"}
      cot_gain:                            # Figure 3: gain vs baseline score per language
        - {with_cot: fiat, without_cot: wo_cot, key: "fiat_demo/accuracy/{language}"}
      curves:                              # Figure 5: metric vs training step
        - {key: "fiat_demo/accuracy", variants: [fiat, wo_cot]}
      bootstrap: {resamples: 1000, confidence: 0.95, seed: 0}   # optional (these defaults)

`key` is a metric name as the trainer writes it (see `fiat_t5x.sweeps.metrics`);
`{language}` marks where a language code sits in per-language metric names.
Every cell whose run wrote per-example records gets a bootstrap confidence interval, and the
method is compared with each baseline by a paired bootstrap test (`fiat_t5x.sweeps.confidence`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from fiat_t5x.sweeps.confidence import BootstrapSettings
from fiat_t5x.sweeps.yaml_loader import SweepFileError

LANGUAGE_FIELD = "{language}"


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of the main table: `task` and `metric` head it, `key` finds the value."""

    task: str
    metric: str
    key: str
    higher_is_better: bool = True

    @property
    def header(self) -> str:
        return f"{self.task} {self.metric}".strip()


@dataclasses.dataclass(frozen=True)
class LanguageTable:
    """Rows: variants; columns: languages found under `key` (or the listed ones)."""

    task: str
    metric: str
    key: str
    languages: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class CotGainPlot:
    """FIAT's Figure 3: x = `without_cot` score per language, y = `with_cot` − that score."""

    with_cot: str
    without_cot: str
    key: str
    title: str = ""


@dataclasses.dataclass(frozen=True)
class CurvePlot:
    """FIAT's Figure 5: `key` against training step, one line per variant."""

    key: str
    variants: tuple[str, ...]
    title: str = ""


@dataclasses.dataclass(frozen=True)
class ReportSpec:
    method: str | None = None
    baselines: tuple[str, ...] = ()
    rows: tuple[str, ...] = ()
    ladder: tuple[str, ...] = ()
    columns: tuple[Column, ...] = ()
    languages: tuple[LanguageTable, ...] = ()
    cot_gain: tuple[CotGainPlot, ...] = ()
    curves: tuple[CurvePlot, ...] = ()
    bootstrap: BootstrapSettings = BootstrapSettings()


_KEYS = {
    "method",
    "baselines",
    "rows",
    "ladder",
    "columns",
    "languages",
    "cot_gain",
    "curves",
    "bootstrap",
}
_BOOTSTRAP_KEYS = {"resamples", "confidence", "seed"}


def parse_report_spec(raw: Any, variant_names: Sequence[str], where: str) -> ReportSpec:
    """Validates the `report:` mapping against the sweep's variant names."""
    where = f"{where}: report"
    if not isinstance(raw, Mapping):
        raise SweepFileError(f"{where} must be a mapping")
    unknown = sorted(set(map(str, raw)) - _KEYS)
    if unknown:
        raise SweepFileError(f"{where}: unknown field(s) {unknown}; allowed are {sorted(_KEYS)}")
    names = set(variant_names)

    def variant_list(field: str, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SweepFileError(f"{where}.{field} must be a list of variant names")
        missing = [v for v in value if v not in names]
        if missing:
            raise SweepFileError(
                f"{where}.{field}: {missing} are not variants of this sweep ({sorted(names)})"
            )
        return tuple(value)

    method = raw.get("method")
    if method is not None and method not in names:
        raise SweepFileError(f"{where}.method: {method!r} is not a variant ({sorted(names)})")
    baselines = variant_list("baselines", raw.get("baselines"))
    if baselines and method is None:
        raise SweepFileError(f"{where}: 'baselines' needs 'method' (the row compared with them)")
    columns = tuple(
        Column(
            task=str(_get(c, "task", f"{where}.columns[{i}]", "")),
            metric=str(_get(c, "metric", f"{where}.columns[{i}]", "")),
            key=_key(c, f"{where}.columns[{i}]", language=False),
            higher_is_better=bool(_get(c, "higher_is_better", f"{where}.columns[{i}]", True)),
        )
        for i, c in enumerate(_list(raw.get("columns"), f"{where}.columns"))
    )
    languages = tuple(
        LanguageTable(
            task=str(_get(c, "task", f"{where}.languages[{i}]", "")),
            metric=str(_get(c, "metric", f"{where}.languages[{i}]", "")),
            key=_key(c, f"{where}.languages[{i}]", language=True),
            languages=tuple(map(str, _get(c, "languages", f"{where}.languages[{i}]", []) or [])),
        )
        for i, c in enumerate(_list(raw.get("languages"), f"{where}.languages"))
    )
    cot_gain = []
    for i, c in enumerate(_list(raw.get("cot_gain"), f"{where}.cot_gain")):
        here = f"{where}.cot_gain[{i}]"
        pair = variant_list(
            f"cot_gain[{i}]", [_get(c, "with_cot", here), _get(c, "without_cot", here)]
        )
        cot_gain.append(
            CotGainPlot(
                with_cot=pair[0],
                without_cot=pair[1],
                key=_key(c, here, language=True),
                title=str(_get(c, "title", here, "")),
            )
        )
    curves = tuple(
        CurvePlot(
            key=_key(c, f"{where}.curves[{i}]", language=False),
            variants=variant_list(f"curves[{i}].variants", _get(c, "variants", f"{where}.curves")),
            title=str(_get(c, "title", f"{where}.curves[{i}]", "")),
        )
        for i, c in enumerate(_list(raw.get("curves"), f"{where}.curves"))
    )
    return ReportSpec(
        bootstrap=_bootstrap(raw.get("bootstrap"), f"{where}.bootstrap"),
        method=method,
        baselines=baselines,
        rows=variant_list("rows", raw.get("rows")),
        ladder=variant_list("ladder", raw.get("ladder")),
        columns=columns,
        languages=languages,
        cot_gain=tuple(cot_gain),
        curves=curves,
    )


_MISSING = object()


def _bootstrap(raw: Any, where: str) -> BootstrapSettings:
    if raw is None:
        return BootstrapSettings()
    if not isinstance(raw, Mapping):
        raise SweepFileError(f"{where} must be a mapping with {sorted(_BOOTSTRAP_KEYS)}")
    unknown = sorted(set(map(str, raw)) - _BOOTSTRAP_KEYS)
    if unknown:
        raise SweepFileError(
            f"{where}: unknown field(s) {unknown}; allowed are {sorted(_BOOTSTRAP_KEYS)}"
        )
    try:
        return BootstrapSettings(
            resamples=int(raw.get("resamples", BootstrapSettings.resamples)),
            confidence=float(raw.get("confidence", BootstrapSettings.confidence)),
            seed=int(raw.get("seed", BootstrapSettings.seed)),
        )
    except (TypeError, ValueError) as e:
        raise SweepFileError(f"{where}: {e}") from None


def _list(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SweepFileError(f"{where} must be a list")
    return value


def _get(entry: Any, field: str, where: str, default: Any = _MISSING) -> Any:
    if not isinstance(entry, Mapping):
        raise SweepFileError(f"{where} must be a mapping, got {entry!r}")
    if field not in entry:
        if default is _MISSING:
            raise SweepFileError(f"{where}: field {field!r} is required")
        return default
    return entry[field]


def _key(entry: Any, where: str, language: bool) -> str:
    key = _get(entry, "key", where)
    if not isinstance(key, str) or not key:
        raise SweepFileError(f"{where}.key must be a metric name")
    if language and LANGUAGE_FIELD not in key:
        raise SweepFileError(f"{where}.key {key!r} must contain {LANGUAGE_FIELD}")
    if not language and LANGUAGE_FIELD in key:
        raise SweepFileError(f"{where}.key {key!r} is per-language; use it under 'languages'")
    return key
