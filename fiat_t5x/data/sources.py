"""Line-validated JSONL and TSV readers, and SeqIO data sources built from their records.

Every record remembers the file and 1-based line it came from, so a problem found at any
later stage (a missing field, an unknown language, a label that does not parse) can be
reported as `path:line: problem`. Readers either raise `MalformedLineError` on the first
bad line, or, with `skip_malformed=True`, drop bad lines, count them in a `SkipReport`
and log one warning per file with the counts and the first few locations.

Usage:

    records = read_jsonl(path, required=("question", "target"), non_empty=("question",))
    records = read_tsv(path, columns=("question", "answer", "chain_of_thought"),
                       unescape_newlines=True, skip_malformed=True, report=report)
    source = records_data_source(load_split, splits=("train", "validation"),
                                 output_signature={"id": tf.TensorSpec([], tf.string), ...})
    source = jsonl_data_source({"train": "data/train.jsonl", ...}, output_signature={...},
                               required=("question", "answer"), language_field="language")

Sources built with `skip_malformed=None` (the default of `jsonl_data_source` and
`hf_source.hf_data_source`) ask gin when they read: `--gin.malformed_lines.skip=True` skips
and counts bad lines for a whole run (and config.gin records that it did).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import gin
from fiat_t5x.errors import UsageError

logger = logging.getLogger(__name__)

# How many bad-line locations a report or warning lists before it says "and N more".
MAX_LISTED_LOCATIONS = 5


# How to skip bad lines, by who reads them: a reader called in code, or a data source that
# asks gin (`skip_malformed_lines`) when it reads.
READER_SKIP_HINT = "pass skip_malformed=True to the reader"
GIN_SKIP_HINT = "--gin.malformed_lines.skip=True"


class MalformedLineError(UsageError):
    """A line (or row) of a data file that cannot be turned into an example.

    The message names the file, the 1-based line, the field (when one is at fault) and the
    problem, and says how to proceed: fix the line, or skip bad lines (`skip_hint`: the
    option that does it where the file is read).
    """

    def __init__(
        self,
        path: str,
        line: int,
        problem: str,
        field: str | None = None,
        *,
        skip_hint: str = READER_SKIP_HINT,
        unit: str = "line",
    ) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        self.field = field
        self.skip_hint = skip_hint
        self.unit = unit
        where = f"{self.path}:{line}"
        what = f"field {field!r}: {problem}" if field else problem
        super().__init__(
            f"{where}: {what}. Fix this {unit}, or skip and count malformed {unit}s: {skip_hint}"
        )

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}"

    def with_skip_hint(self, skip_hint: str) -> MalformedLineError:
        """The same error, naming the option that skips bad lines where this file is read."""
        return MalformedLineError(
            self.path, self.line, self.problem, self.field, skip_hint=skip_hint, unit=self.unit
        )


def _skip_malformed_lines(skip: bool = False) -> bool:
    """Whether data sources built with `skip_malformed=None` skip (and count, and log) bad
    lines instead of failing on the first: `--gin.malformed_lines.skip=True`."""
    return bool(skip)


# Registered even when this module is first imported after a command locked its gin config.
with gin.unlock_config():
    skip_malformed_lines = gin.configurable("malformed_lines")(_skip_malformed_lines)


@dataclasses.dataclass(frozen=True)
class Record:
    """One example read from a data file: its fields and where it came from."""

    fields: Mapping[str, Any]
    path: str
    line: int

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}"

    def error(self, problem: str, field: str | None = None) -> MalformedLineError:
        """An error about this record, for checks done after reading (e.g. label parsing)."""
        return MalformedLineError(self.path, self.line, problem, field)

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]


@dataclasses.dataclass
class SkipReport:
    """Counts of lines read, kept and skipped, and where the skipped ones were.

    One report can collect several files (pass the same object to each reader call).
    `skipped` holds every bad line as (path, line, problem).
    """

    lines_read: int = 0
    kept: int = 0
    skipped: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def add_skip(self, error: MalformedLineError) -> None:
        what = f"field {error.field!r}: {error.problem}" if error.field else error.problem
        self.skipped.append((error.path, error.line, what))

    def summary(self, max_locations: int = MAX_LISTED_LOCATIONS) -> str:
        """One line: counts, then the first `max_locations` bad lines as path:line (problem)."""
        text = f"skipped {self.num_skipped} of {self.lines_read} lines (kept {self.kept})"
        if self.skipped:
            shown = "; ".join(f"{p}:{n} ({why})" for p, n, why in self.skipped[:max_locations])
            more = self.num_skipped - max_locations
            text += f"; first: {shown}" + (f"; and {more} more" if more > 0 else "")
        return text


Transform = Callable[[Record], Mapping[str, Any]]


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple, dict)):
        return len(value) == 0
    return False


def _validate(
    record: Record,
    required: Sequence[str],
    non_empty: Collection[str],
    language_field: str | None,
    languages: Collection[str] | None,
    transform: Transform | None,
) -> Record:
    for name in required:
        if name not in record.fields:
            raise record.error(
                "missing field (present: " + ", ".join(sorted(record.fields)) + ")", name
            )
    for name in non_empty:
        if name in record.fields and _is_empty(record.fields[name]):
            raise record.error("empty value", name)
    if language_field is not None:
        code = record.fields.get(language_field)
        if code is None:
            raise record.error("missing language code", language_field)
        if languages is not None and code not in languages:
            raise record.error(
                f"unknown language code {code!r} (expected one of {', '.join(sorted(languages))})",
                language_field,
            )
    if transform is None:
        return record
    try:
        fields = transform(record)
    except MalformedLineError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise record.error(f"{type(e).__name__}: {e}") from e
    return Record(fields=dict(fields), path=record.path, line=record.line)


# One row as read: (1-based line or row number, its fields, or the error that reading it gave).
NumberedRow = tuple[int, "Mapping[str, Any] | MalformedLineError"]


def validate_rows(
    path: str,
    rows: Iterable[NumberedRow],
    *,
    required: Sequence[str],
    non_empty: Collection[str],
    language_field: str | None,
    languages: Collection[str] | None,
    transform: Transform | None,
    skip_malformed: bool,
    report: SkipReport | None,
) -> list[Record]:
    """Validate every row of one file: raise on the first bad one, or skip, count and warn."""
    file_report = SkipReport()
    records: list[Record] = []
    for number, fields in rows:
        file_report.lines_read += 1
        try:
            if isinstance(fields, MalformedLineError):
                raise fields
            record = _validate(
                Record(fields=fields, path=path, line=number),
                required,
                non_empty,
                language_field,
                languages,
                transform,
            )
        except MalformedLineError as e:
            if not skip_malformed:
                raise
            file_report.add_skip(e)
            continue
        records.append(record)
    file_report.kept = len(records)
    if file_report.skipped:
        logger.warning("%s: %s", path, file_report.summary())
    if report is not None:
        report.lines_read += file_report.lines_read
        report.kept += file_report.kept
        report.skipped.extend(file_report.skipped)
    return records


def _read_validated(
    path: str | os.PathLike[str],
    parse_line: Callable[[str, str, int], Mapping[str, Any]],
    **validation: Any,
) -> list[Record]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no such data file; check the data directory you configured"
        )

    return validate_rows(path, parsed_lines(path, parse_line), **validation)


def parsed_lines(
    path: str, parse_line: Callable[[str, str, int], Mapping[str, Any]] | None = None
) -> Iterator[NumberedRow]:
    """(line number, fields or the line's error) of every non-blank line of a text file
    (JSON objects unless `parse_line` says otherwise)."""
    parse_line = parse_line or _parse_json_object
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.rstrip("\n").rstrip("\r")
            if not text.strip():
                continue  # Blank lines (e.g. a trailing newline) are not examples.
            try:
                yield number, parse_line(text, path, number)
            except MalformedLineError as e:
                yield number, e


def _parse_json_object(text: str, path: str, line: int) -> Mapping[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise MalformedLineError(path, line, f"bad JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(value, dict):
        raise MalformedLineError(path, line, f"expected a JSON object, got {type(value).__name__}")
    return value


def read_jsonl(
    path: str | os.PathLike[str],
    *,
    required: Sequence[str] = (),
    non_empty: Collection[str] = (),
    language_field: str | None = None,
    languages: Collection[str] | None = None,
    transform: Transform | None = None,
    skip_malformed: bool = False,
    report: SkipReport | None = None,
) -> list[Record]:
    """Reads a JSON-lines file (one object a line), validating every line.

    Args:
      path: the file.
      required: fields every object must have.
      non_empty: fields that, when present, must not be empty (blank string, null, []).
      language_field: a field holding a language code; `languages` lists the accepted codes.
      transform: maps a validated record to the fields to keep; a ValueError/KeyError/TypeError
        it raises becomes a MalformedLineError naming the line.
      skip_malformed: drop bad lines (counted in `report`, warned about) instead of raising.
      report: collects counts and locations of skipped lines across calls.

    Returns:
      The records in file order; blank lines are ignored and not counted.
    """
    return _read_validated(
        path,
        _parse_json_object,
        required=required,
        non_empty=non_empty,
        language_field=language_field,
        languages=languages,
        transform=transform,
        skip_malformed=skip_malformed,
        report=report,
    )


def read_tsv(
    path: str | os.PathLike[str],
    *,
    columns: Sequence[str],
    non_empty: Collection[str] = (),
    unescape_newlines: bool = False,
    language_field: str | None = None,
    languages: Collection[str] | None = None,
    transform: Transform | None = None,
    skip_malformed: bool = False,
    report: SkipReport | None = None,
) -> list[Record]:
    """Reads a headerless tab-separated file with exactly `len(columns)` columns a line.

    Args:
      columns: the field name of each column, in order.
      unescape_newlines: turn the two characters backslash-n into a newline in every field
        (the Flan CoT TSVs store multi-line questions this way).
      Other arguments as in `read_jsonl`.
    """
    columns = tuple(columns)

    def parse(text: str, file: str, line: int) -> Mapping[str, Any]:
        values = text.split("\t")
        if len(values) != len(columns):
            raise MalformedLineError(
                file,
                line,
                f"wrong column count: expected {len(columns)} tab-separated columns "
                f"({', '.join(columns)}), found {len(values)}",
            )
        if unescape_newlines:
            values = [v.replace("\\n", "\n") for v in values]
        return dict(zip(columns, values, strict=True))

    return _read_validated(
        path,
        parse,
        required=(),
        non_empty=non_empty,
        language_field=language_field,
        languages=languages,
        transform=transform,
        skip_malformed=skip_malformed,
        report=report,
    )


def iterate_fields(records: Sequence[Record]) -> Iterator[Mapping[str, Any]]:
    """The plain field dicts of `records` (what a SeqIO source yields)."""
    for record in records:
        yield record.fields


def records_data_source(
    load_split: Callable[[str], Sequence[Mapping[str, Any] | Record]],
    splits: Sequence[str],
    output_signature: Mapping[str, Any],
    *,
    num_input_examples: Mapping[str, int] | Callable[[str], int] | None = None,
):
    """A `seqio.FunctionDataSource` whose split `s` yields the examples `load_split(s)` returns.

    Files are read when a dataset is requested (not at registration), so tasks can be
    registered before their data directory exists or is configured; errors surface there.
    Examples come in the order `load_split` returns them (SeqIO shuffles examples downstream;
    `shuffle_files` has nothing to shuffle here).

    Args:
      load_split: split name -> examples (field dicts or `Record`s).
      splits: the split names the source offers.
      output_signature: field name -> `tf.TensorSpec` (e.g. `tf.TensorSpec([], tf.string)`,
        or `tf.TensorSpec([None], tf.string)` for a list of strings). Fields of an example
        that are not in the signature are dropped; a missing one is an error.
      num_input_examples: optional split -> count, reported by SeqIO; a function is called
        (once per split) when a count is first asked for.
    """
    import seqio
    import tensorflow as tf

    signature = dict(output_signature)

    def select(split: str, example: Mapping[str, Any] | Record) -> dict[str, Any]:
        fields = example.fields if isinstance(example, Record) else example
        missing = [name for name in signature if name not in fields]
        if missing:
            problem = f"lacks {missing}, which the source's output_signature lists"
            if isinstance(example, Record):
                raise example.error(problem)
            raise UsageError(f"split {split!r}: an example {problem} (fields: {sorted(fields)})")
        return {name: fields[name] for name in signature}

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # One in-memory list per split; SeqIO shuffles examples.
        if split not in splits:
            raise ValueError(f"unknown split {split!r}; this source offers {list(splits)}")
        # Read here, not inside the generator, so that file and configuration errors reach
        # the caller as themselves rather than wrapped in a TensorFlow op error.
        examples = [select(split, example) for example in load_split(split)]
        return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)

    if not callable(num_input_examples):
        return seqio.FunctionDataSource(
            dataset_fn=dataset_fn, splits=tuple(splits), num_input_examples=num_input_examples
        )
    count = functools.cache(num_input_examples)

    class CountingSource(seqio.FunctionDataSource):
        def num_input_examples(self, split: str) -> int:
            if split not in splits:
                raise UsageError(f"unknown split {split!r}; this source offers {list(splits)}")
            return count(split)

    return CountingSource(dataset_fn=dataset_fn, splits=tuple(splits))


def jsonl_data_source(
    files: Mapping[str, str | os.PathLike[str] | Sequence[str | os.PathLike[str]]],
    output_signature: Mapping[str, Any],
    *,
    required: Sequence[str] = (),
    non_empty: Collection[str] = (),
    language_field: str | None = None,
    languages: Collection[str] | None = None,
    transform: Transform | None = None,
    skip_malformed: bool | None = None,
):
    """A SeqIO source over JSON-lines files (one file, or a list, per split); every line is
    validated as by `read_jsonl` when a split is first read. `num_input_examples(split)`
    counts the split's non-blank lines (for mixture rates, without counting by hand).

    Args:
      files: split name -> path(s); relative paths are taken from the working directory.
      output_signature: field -> `tf.TensorSpec`, as in `records_data_source`; a list field
        (e.g. answer options) is `tf.TensorSpec([None], tf.string)`.
      required, non_empty, language_field, languages, transform: as in `read_jsonl`.
      skip_malformed: None asks gin when reading (`--gin.malformed_lines.skip=True`).
    """
    splits = tuple(files)

    def load_split(split: str) -> list[Record]:
        skip, hint = skip_policy(skip_malformed, "jsonl_data_source")
        records: list[Record] = []
        report = SkipReport()
        try:
            for path in as_paths(files[split]):
                records += read_jsonl(
                    path,
                    required=required,
                    non_empty=non_empty,
                    language_field=language_field,
                    languages=languages,
                    transform=transform,
                    skip_malformed=skip,
                    report=report,
                )
        except MalformedLineError as e:
            raise e.with_skip_hint(hint) from None
        return records

    def count(split: str) -> int:
        return sum(count_lines(path) for path in as_paths(files[split]))

    return records_data_source(load_split, splits, output_signature, num_input_examples=count)


def count_lines(path: str | os.PathLike[str]) -> int:
    """Non-blank lines of a text file: its examples, before any are found malformed. Cheap
    enough to call at registration (e.g. for examples-proportional mixture rates)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{os.fspath(path)}: no such data file; check the data directory you configured"
        )
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def skip_policy(skip_malformed: bool | None, source: str) -> tuple[bool, str]:
    """(skip?, how a user would ask for skipping) of a source built with `skip_malformed`."""
    if skip_malformed is None:
        return skip_malformed_lines(), GIN_SKIP_HINT
    return skip_malformed, f"pass skip_malformed=True to {source}"


def as_paths(value: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """One path or a sequence of paths, as a list of strings."""
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    return [os.fspath(v) for v in value]


def content_id(fields: Mapping[str, Any], names: Sequence[str], prefix: str = "") -> str:
    """A stable id from the content of `names` (SHA-256 of their JSON, first 16 hex digits).

    Identical on every run and machine, so rationales stored under it can be joined back.
    """
    payload = json.dumps([fields.get(name) for name in names], ensure_ascii=False, sort_keys=True)
    digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
    return f"{prefix}{digest}"


def assign_ids(
    examples: Sequence[dict[str, Any]],
    content_fields: Sequence[str],
    *,
    id_field: str = "id",
    prefix: str = "",
) -> list[dict[str, Any]]:
    """Gives every example a stable `id_field`: its own when present, else a content hash.

    Repeated ids (identical content lines) get `-2`, `-3`, ... in file order, so ids stay
    unique within a split and still identical across runs.
    """
    seen: dict[str, int] = {}
    out = []
    for example in examples:
        own = example.get(id_field)
        base = str(own) if own not in (None, "") else content_id(example, content_fields, prefix)
        seen[base] = seen.get(base, 0) + 1
        out.append({**example, id_field: base if seen[base] == 1 else f"{base}-{seen[base]}"})
    return out
