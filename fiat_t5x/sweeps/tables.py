"""A small table type and its Markdown / CSV renderings (the report's output formats).

A cell is a number, optionally with its confidence interval and, in rows that compare two
methods, the p-value of a paired test and whether the difference is significant. Markdown
shows `80.0 [76.1, 83.9]`, and for a comparison `+5.2 [+2.0, +8.4] p=0.002` or
`+1.0 [-2.1, +4.0] not significant (p=0.52)`; CSV gives every part its own column.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Sequence

MISSING_CELL = "–"


@dataclasses.dataclass(frozen=True)
class CellTest:
    """A paired test's outcome for one cell of a comparison row."""

    p_value: float
    significant: bool


@dataclasses.dataclass(frozen=True)
class Row:
    """`values[i]` is column i's number (None: missing); `intervals[i]` its (low, high) and
    `tests[i]` its paired test, when known (both optional, one entry per column)."""

    label: str
    values: tuple[float | None, ...]
    is_gain: bool = False
    intervals: tuple[tuple[float, float] | None, ...] = ()
    tests: tuple[CellTest | None, ...] = ()

    def interval(self, column: int) -> tuple[float, float] | None:
        return self.intervals[column] if column < len(self.intervals) else None

    def test(self, column: int) -> CellTest | None:
        return self.tests[column] if column < len(self.tests) else None


@dataclasses.dataclass(frozen=True)
class Table:
    """Rows of numbers under a header; `None` is a missing cell."""

    title: str
    row_header: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()

    def row(self, row_label: str) -> Row:
        for row in self.rows:
            if row.label == row_label:
                return row
        raise KeyError(f"no row {row_label!r} in table {self.title!r}")

    def value(self, row_label: str, column: str) -> float | None:
        return self.row(row_label).values[self.columns.index(column)]

    def interval(self, row_label: str, column: str) -> tuple[float, float] | None:
        return self.row(row_label).interval(self.columns.index(column))

    @property
    def has_intervals(self) -> bool:
        return any(any(i is not None for i in r.intervals) for r in self.rows)

    @property
    def has_tests(self) -> bool:
        return any(any(t is not None for t in r.tests) for r in self.rows)


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_number(value: float | None, signed: bool = False) -> str:
    """One decimal like the paper's tables for scores ≥ 1, three significant digits below."""
    if _missing(value):
        return MISSING_CELL
    sign = "+" if signed else ""
    if abs(value) >= 1 or value == 0:
        return f"{value:{sign}.1f}"
    return f"{value:{sign}.3g}"


def format_p(p_value: float) -> str:
    if _missing(p_value):
        return "p=?"
    return "p<0.001" if p_value < 0.001 else f"p={p_value:.3f}"


def format_cell(row: Row, column: int) -> str:
    value = row.values[column]
    text = format_number(value, signed=row.is_gain)
    if _missing(value):
        return text
    interval = row.interval(column)
    if interval is not None and not any(map(_missing, interval)):
        low, high = (format_number(x, signed=row.is_gain) for x in interval)
        text += f" [{low}, {high}]"
    test = row.test(column)
    if test is not None:
        p = format_p(test.p_value)
        text += f" {p}" if test.significant else f" not significant ({p})"
    return text


def to_markdown(table: Table) -> str:
    header = [table.row_header, *table.columns]
    lines = [
        f"### {table.title}",
        "",
        _md_row(header),
        _md_row(["---"] + ["---:"] * len(table.columns)),
    ]
    for row in table.rows:
        cells = [format_cell(row, i) for i in range(len(table.columns))]
        label = f"*{row.label}*" if row.is_gain else row.label
        lines.append(_md_row([label, *cells]))
    if table.notes:
        lines.append("")
        lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """Full-precision values (repr of floats); missing cells are empty. With intervals, each
    column C is followed by `C low` and `C high`; with tests, by `C p` and `C significant`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    with_intervals, with_tests = table.has_intervals, table.has_tests
    header = [table.row_header]
    for column in table.columns:
        header.append(column)
        if with_intervals:
            header += [f"{column} low", f"{column} high"]
        if with_tests:
            header += [f"{column} p", f"{column} significant"]
    writer.writerow(header)
    for row in table.rows:
        cells = [row.label]
        for i, value in enumerate(row.values):
            cells.append(_csv_number(value))
            if with_intervals:
                interval = row.interval(i)
                cells += [_csv_number(x) for x in interval] if interval else ["", ""]
            if with_tests:
                test = row.test(i)
                cells += [_csv_number(test.p_value), str(test.significant)] if test else ["", ""]
        writer.writerow(cells)
    return out.getvalue()


def _csv_number(value: float | None) -> str:
    return "" if _missing(value) else repr(float(value))


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
