"""The sweep report: FIAT-paper-shaped tables (Markdown + CSV), per-language tables, plots.

Numbers come from each variant's `DONE` marker (its final metrics, as read from its own
metrics file by `fiat_t5x.sweeps.metrics`); learning curves read the full metric history.
Every number whose run wrote per-example records gets a bootstrap confidence interval, the
gain row and the comparisons table a paired test on the same examples
(`fiat_t5x.sweeps.intervals`); a cell without records keeps its number and the table's notes
say why it has no interval. Variants that are not done are listed with their state and log
path, and their cells stay empty, so a half-finished sweep still gives a report.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence

from fiat_t5x.sweeps.confidence import PairedTest, holm
from fiat_t5x.sweeps.intervals import Intervals, Unavailable
from fiat_t5x.sweeps.metrics import MetricPoint, key_pattern, lookup, read_metric_history
from fiat_t5x.sweeps.report_spec import Column, LanguageTable
from fiat_t5x.sweeps.runner import VariantStatus, variant_status
from fiat_t5x.sweeps.spec import Sweep
from fiat_t5x.sweeps.tables import CellTest, Row, Table, to_csv, to_markdown

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SweepResults:
    """The on-disk state of every variant of a sweep under `root`."""

    sweep: Sweep
    root: pathlib.Path
    statuses: dict[str, VariantStatus]
    _histories: dict[str, list[MetricPoint]] = dataclasses.field(default_factory=dict)
    _intervals: Intervals | None = None

    def metrics(self, name: str) -> Mapping[str, float]:
        """Final metrics of a finished variant; {} for any other."""
        return self.statuses[name].metrics

    def history(self, name: str) -> list[MetricPoint]:
        if name not in self._histories:
            self._histories[name] = read_metric_history(self.statuses[name].model_dir)
        return self._histories[name]

    def label(self, name: str) -> str:
        return self.sweep.variant(name).label

    @property
    def unfinished(self) -> list[VariantStatus]:
        return [s for s in self.statuses.values() if s.state != "done"]

    def row_names(self) -> list[str]:
        return list(self.sweep.report.rows or self.sweep.variant_names)

    @property
    def intervals(self) -> Intervals:
        """Bootstrap intervals and paired tests from the variants' per-example records."""
        if self._intervals is None:
            self._intervals = Intervals(
                lambda name: self.statuses[name].model_dir,
                self.history,
                self.sweep.report.bootstrap,
            )
        return self._intervals


def collect(sweep: Sweep, root: str | pathlib.Path) -> SweepResults:
    root = pathlib.Path(root)
    statuses = {v.name: variant_status(root, v.name) for v in sweep.variants}
    return SweepResults(sweep=sweep, root=root, statuses=statuses)


@dataclasses.dataclass(frozen=True)
class _Cell:
    """What one table cell reports: a value, the metric names behind it (several: a mean)."""

    value: float | None
    names: tuple[str, ...] = ()


CellFn = Callable[[str, Column], _Cell]


class _Notes:
    """Collects why cells have no interval, one line per column and reason."""

    def __init__(self) -> None:
        self._by_reason: dict[tuple[str, str], list[str]] = {}

    def add(self, column: Column, variant: str, reason: str) -> None:
        self._by_reason.setdefault((column.header, reason), []).append(variant)

    def lines(self) -> list[str]:
        return [
            f"{header}: no interval for {', '.join(variants)} ({reason})"
            for (header, reason), variants in self._by_reason.items()
        ]


def _table(
    results: SweepResults, title: str, columns: Sequence[Column], cell: CellFn, notes: list[str]
) -> Table:
    """Rows: the report's variants with intervals; then the gain row (paired test)."""
    why = _Notes()
    rows = []
    for name in results.row_names():
        values, intervals = [], []
        for column in columns:
            c = cell(name, column)
            values.append(c.value)
            intervals.append(_interval(results, name, column, c, why))
        rows.append(Row(results.label(name), tuple(values), intervals=tuple(intervals)))
    gain, gain_notes = _gain_row(results, columns, cell)
    if gain is not None:
        rows.append(gain)
    settings = results.sweep.report.bootstrap
    summary = (
        f"[low, high]: {settings.percent} bootstrap interval over the evaluated examples "
        f"({settings.resamples} resamples); the gain row's interval and p-value come from a "
        "paired bootstrap on the same examples"
    )
    return Table(
        title=title,
        row_header="Method",
        columns=tuple(c.header for c in columns),
        rows=tuple(rows),
        notes=tuple([summary, *gain_notes, *notes, *why.lines()]),
    )


def _interval(
    results: SweepResults, name: str, column: Column, cell: _Cell, why: _Notes
) -> tuple[float, float] | None:
    if cell.value is None or not cell.names or math.isnan(cell.value):
        return None
    found = results.intervals.mean_estimate(name, cell.names, cell.value)
    if isinstance(found, Unavailable):
        why.add(column, name, found.reason)
        return None
    return (found.low, found.high)


def main_table(results: SweepResults) -> Table:
    """Rows: methods/ablation steps; columns: task × metric; plus the gain over the best baseline."""
    columns = list(results.sweep.report.columns) or _default_columns(results)
    notes = _absent_metric_notes(results, results.row_names(), [c.key for c in columns])
    return _table(
        results,
        f"{results.sweep.name}: final metrics",
        columns,
        lambda name, column: _main_cell(results, name, column),
        notes,
    )


def language_metrics(results: SweepResults, spec: LanguageTable, name: str) -> dict[str, float]:
    """`{language: value}` of one variant for a per-language key such as `acc/{language}`."""
    return {lang: value for lang, (value, _) in language_entries(results, spec, name).items()}


def language_entries(
    results: SweepResults, spec: LanguageTable, name: str
) -> dict[str, tuple[float, str]]:
    """`{language: (value, metric name)}` of one variant."""
    pattern = key_pattern(spec.key)
    found = {}
    for key, value in results.metrics(name).items():
        match = pattern.fullmatch(key)
        if match and (not spec.languages or match["language"] in spec.languages):
            found[match["language"]] = (value, key)
    return found


def language_table(results: SweepResults, spec: LanguageTable) -> Table:
    """Rows: variants; columns: languages and their mean; plus the gain row."""
    names = results.row_names()
    per_variant = {n: language_entries(results, spec, n) for n in names}
    languages = list(spec.languages) or sorted({lang for m in per_variant.values() for lang in m})
    columns = [Column(task=lang, metric="", key=lang) for lang in languages]
    columns.append(Column(task="mean", metric="", key="mean"))

    def cell(name: str, column: Column) -> _Cell:
        entries = per_variant[name]
        if column.key == "mean":
            if not languages or any(lang not in entries for lang in languages):
                return _Cell(None)
            values = [entries[lang][0] for lang in languages]
            return _Cell(sum(values) / len(values), tuple(entries[lang][1] for lang in languages))
        if column.key not in entries:
            return _Cell(None)
        value, key = entries[column.key]
        return _Cell(value, (key,))

    title = " ".join(p for p in (spec.task, spec.metric) if p) or spec.key
    return _table(results, f"{title} per language", columns, cell, [])


def comparisons_table(results: SweepResults) -> Table | None:
    """The method against every baseline, per main-table column: the paired difference, its
    interval, and Holm-adjusted p-values (one family per column: the method vs the baselines)."""
    report = results.sweep.report
    if report.method is None or not report.baselines:
        return None
    method = results.label(report.method)
    pairs = [(report.method, b, f"{method} vs {results.label(b)}") for b in report.baselines]
    return _paired_table(
        results,
        f"{results.sweep.name}: {method} against each baseline",
        "Comparison",
        pairs,
        "difference (method − baseline; baseline − method where lower is better)",
    )


def ladder_table(results: SweepResults) -> Table | None:
    """Each step of an ablation ladder: what removing one more ingredient costs, per column
    (previous rung − this rung, paired), Holm-adjusted over the steps of each column."""
    ladder = results.sweep.report.ladder
    if len(ladder) < 2:
        return None
    pairs = [
        (a, b, f"{results.label(a)} → {results.label(b)}")
        for a, b in zip(ladder, ladder[1:], strict=False)
    ]
    return _paired_table(
        results,
        f"{results.sweep.name}: what each step of the ladder costs",
        "Step",
        pairs,
        "the rung before minus the rung after (after minus before where lower is better): "
        "positive when the removed ingredient helped",
    )


def _paired_table(
    results: SweepResults,
    title: str,
    row_header: str,
    pairs: Sequence[tuple[str, str, str]],
    what: str,
) -> Table:
    """Rows: paired differences `a − b` of `pairs` (a, b, label) per main-table column, with
    intervals and p-values Holm-adjusted over the pairs of each column."""
    report = results.sweep.report
    columns = list(report.columns) or _default_columns(results)
    settings = report.bootstrap
    why = _Notes()
    tests = [
        [
            _compare(results, a, _main_cell(results, a, c), b, _main_cell(results, b, c), c, why)
            for c in columns
        ]
        for a, b, _ in pairs
    ]
    adjusted: list[list[float | None]] = [[None] * len(columns) for _ in pairs]
    for i in range(len(columns)):
        present = [k for k in range(len(pairs)) if tests[k][i] is not None]
        for k, p in zip(present, holm([tests[k][i].p_value for k in present]), strict=True):
            adjusted[k][i] = p
    alpha = 1.0 - settings.confidence
    rows = []
    for k, (_, _, label) in enumerate(pairs):
        cells = tests[k]
        rows.append(
            Row(
                label,
                tuple(None if t is None else t.difference.value for t in cells),
                is_gain=True,
                intervals=tuple(
                    None if t is None else (t.difference.low, t.difference.high) for t in cells
                ),
                tests=tuple(
                    None if t is None else CellTest(adjusted[k][i], adjusted[k][i] < alpha)
                    for i, t in enumerate(cells)
                ),
            )
        )
    return Table(
        title=title,
        row_header=row_header,
        columns=tuple(c.header for c in columns),
        rows=tuple(rows),
        notes=(
            f"{what}, with its {settings.percent} paired-bootstrap interval "
            f"({settings.resamples} resamples of the same examples); p: two-sided, "
            f"Holm-adjusted over the {len(pairs)} rows of each column (the smallest p "
            f"{settings.resamples} resamples can give is {2 / (settings.resamples + 1):.2g} "
            f"before adjustment); significant when p < {alpha:g}",
            *why.lines(),
        ),
    )


def _main_cell(results: SweepResults, name: str, column: Column) -> _Cell:
    value, matched = lookup(results.metrics(name), column.key)
    return _Cell(value, tuple(matched) if value is not None else ())


def _compare(
    results: SweepResults,
    method: str,
    method_cell: _Cell,
    baseline: str,
    baseline_cell: _Cell,
    column: Column,
    why: _Notes | None,
) -> PairedTest | None:
    """The paired test of two cells; None (and a note in `why`, when given) if impossible."""
    if method_cell.value is None or baseline_cell.value is None:
        return None
    if math.isnan(method_cell.value) or math.isnan(baseline_cell.value):
        return None
    if not method_cell.names or not baseline_cell.names:
        return None
    test = results.intervals.compare(
        (method, method_cell.names, method_cell.value),
        (baseline, baseline_cell.names, baseline_cell.value),
        column.higher_is_better,
    )
    if isinstance(test, Unavailable):
        if why is not None:
            why.add(column, f"{method} vs {baseline}", test.reason)
        return None
    return test


def missing_section(results: SweepResults) -> str:
    """Markdown list of the variants without results, with what to look at."""
    if not results.unfinished:
        return ""
    lines = [f"### Missing variants ({len(results.unfinished)} of {len(results.statuses)})", ""]
    for s in results.unfinished:
        detail = f": {s.detail}" if s.detail else ""
        log = f" (log: {s.log_path})" if s.log_path.is_file() else ""
        lines.append(f"- `{s.name}` is {s.state}{detail}{log}")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class ReportFiles:
    markdown: pathlib.Path
    tables: dict[str, tuple[pathlib.Path, pathlib.Path]]  # title -> (md, csv)
    plots: list[pathlib.Path]
    missing: list[str]


def write_report(
    sweep: Sweep, root: str | pathlib.Path, out_dir: str | pathlib.Path, *, plots: bool = True
) -> ReportFiles:
    """Writes `report.md` (everything), one .md and .csv per table, and the PNG plots."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = collect(sweep, root)
    tables = [("main", main_table(results))]
    for stem, extra in (("comparisons", comparisons_table), ("ladder", ladder_table)):
        table = extra(results)
        if table is not None:
            tables.append((stem, table))
    tables += [
        (
            f"languages_{_slug(spec.task or spec.key)}_{_slug(spec.metric)}".rstrip("_"),
            language_table(results, spec),
        )
        for spec in sweep.report.languages
    ]
    written: dict[str, tuple[pathlib.Path, pathlib.Path]] = {}
    sections = [f"# Sweep report: {sweep.name}", ""]
    if sweep.description:
        sections += [sweep.description, ""]
    done = len(results.statuses) - len(results.unfinished)
    sections += [
        f"{done} of {len(results.statuses)} variants finished (root: `{results.root}`).",
        "",
    ]
    missing = missing_section(results)
    if missing:
        sections.append(missing)
    for stem, table in tables:
        md_path, csv_path = out / f"{stem}.md", out / f"{stem}.csv"
        md_path.write_text(to_markdown(table), encoding="utf-8")
        csv_path.write_text(to_csv(table), encoding="utf-8")
        written[table.title] = (md_path, csv_path)
        sections.append(to_markdown(table))
    plot_paths: list[pathlib.Path] = []
    if plots:
        from fiat_t5x.sweeps import plots as plots_lib  # matplotlib only when plotting

        plot_paths = plots_lib.write_plots(results, out)
        sections += [f"![{p.stem}]({p.name})\n" for p in plot_paths]
    report_md = out / "report.md"
    report_md.write_text("\n".join(sections), encoding="utf-8")
    return ReportFiles(
        markdown=report_md,
        tables=written,
        plots=plot_paths,
        missing=[s.name for s in results.unfinished],
    )


def _default_columns(results: SweepResults) -> list[Column]:
    keys = sorted({k for n in results.statuses for k in results.metrics(n)})
    return [Column(task="", metric=k, key=k) for k in keys]


def _gain_row(
    results: SweepResults, columns: Sequence[Column], cell: CellFn
) -> tuple[Row | None, list[str]]:
    """`method − best baseline` per column (best = max, or min where lower is better), with
    the paired test's interval and p-value; "not significant" when the interval holds 0."""
    report = results.sweep.report
    if report.method is None or not report.baselines:
        return None, []
    values, intervals, tests, best = [], [], [], []
    for column in columns:
        method_cell = cell(report.method, column)
        candidates = [
            (c, b)
            for b in report.baselines
            if (c := cell(b, column)).value is not None and not math.isnan(c.value)
        ]
        if method_cell.value is None or not candidates:
            values.append(None)
            intervals.append(None)
            tests.append(None)
            continue
        pick = max if column.higher_is_better else min
        best_cell, best_name = pick(candidates, key=lambda c: c[0].value)
        gain = (
            method_cell.value - best_cell.value
            if column.higher_is_better
            else best_cell.value - method_cell.value
        )
        values.append(gain)
        best.append(f"{column.header}: {results.label(best_name)}")
        # A missing test here is explained by the rows' own notes.
        test = _compare(results, report.method, method_cell, best_name, best_cell, column, None)
        intervals.append(None if test is None else (test.difference.low, test.difference.high))
        tests.append(None if test is None else CellTest(test.p_value, test.significant))
    label = f"{results.label(report.method)}: gain over best baseline"
    notes = [f"best baseline per column: {'; '.join(best)}"] if best else []
    row = Row(label, tuple(values), is_gain=True, intervals=tuple(intervals), tests=tuple(tests))
    return row, notes


def _absent_metric_notes(
    results: SweepResults, names: Sequence[str], keys: Sequence[str]
) -> list[str]:
    notes = []
    for name in names:
        metrics = results.metrics(name)
        if results.statuses[name].state != "done":
            continue
        for key in keys:
            value, matched = lookup(metrics, key)
            if len(matched) > 1:
                notes.append(f"{name}: {key!r} is ambiguous, it matches {matched}")
            elif value is None:
                notes.append(
                    f"{name}: no metric {key!r} (it logged {sorted(metrics)[:12]}); check the "
                    "report's keys"
                )
    return notes


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
