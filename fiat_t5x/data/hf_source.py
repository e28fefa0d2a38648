"""A SeqIO source over Hugging Face `datasets` on local disk, validated row by row.

Most multilingual datasets are distributed as Hugging Face datasets. This source reads them
from the local disk only (never the network): JSON-lines, Parquet or Arrow files per split,
a directory written by `Dataset(Dict).save_to_disk`, or a dataset repository already
downloaded (e.g. `huggingface-cli download --repo-type dataset NAME --local-dir DIR`).
Every row goes through the same checks as `sources.read_jsonl` (required and non-empty
fields, language codes, a transform), and a bad row is a `MalformedLineError` naming the file
and row, e.g. `data/train.parquet:17: field 'answer': empty value. ...`.

    source = hf_data_source({"train": "data/train.parquet", "validation": "data/dev.parquet"},
                            output_signature={...}, required=("question", "answer"))
    source = hf_data_source("/data/my_dataset_saved", splits=("train", "test"), ...)
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

from fiat_t5x.data import sources
from fiat_t5x.errors import UsageError

# File suffix -> the `datasets` builder that reads it.
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}

Files = Mapping[str, str | os.PathLike[str] | Sequence[str | os.PathLike[str]]]


def _datasets():
    try:
        import datasets
    except ImportError as e:  # an install without the dependency
        raise UsageError(
            "the Hugging Face source needs the `datasets` package: pip install datasets"
        ) from e
    return datasets


@contextlib.contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """No progress bars and no ERROR log lines from `datasets` itself while it reads local
    files: what went wrong is raised, with the file and row."""
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def _rows(dataset: Any) -> Iterator[sources.NumberedRow]:
    """(1-based row, fields) with null fields left out (so `required` reports them missing)."""
    for number, row in enumerate(dataset, start=1):
        yield number, {k: v for k, v in row.items() if v is not None}


def _file_rows(path: str, cache_dir: str | None) -> Iterator[sources.NumberedRow]:
    """The rows of one local file. A JSON-lines file `datasets` cannot parse is read line by
    line instead, so that its bad lines are named (or skipped) like any reader's."""
    datasets = _datasets()
    builder = BUILDERS.get(os.path.splitext(path)[1].lower())
    if builder is None:
        raise UsageError(
            f"{path}: unknown file type; the Hugging Face source reads {', '.join(BUILDERS)} "
            "files or a dataset directory"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such data file; check the path in your task module")
    try:
        with _quiet(datasets):
            dataset = datasets.load_dataset(
                builder, data_files=[path], split="train", cache_dir=cache_dir
            )
    except datasets.exceptions.DatasetGenerationError as e:
        if builder != "json":
            raise UsageError(
                f"{path}: `datasets` cannot read it as {builder}: {e.__cause__ or e}"
            ) from e
        return sources.parsed_lines(path)
    return _rows(dataset)


def _load_directory(path: str, split: str, cache_dir: str | None) -> Any:
    """Split `split` of a save_to_disk directory or of a downloaded dataset repository."""
    datasets = _datasets()
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such dataset directory")
    saved = any(
        os.path.isfile(os.path.join(path, name)) for name in ("dataset_dict.json", "state.json")
    )
    loaded = (
        datasets.load_from_disk(path) if saved else datasets.load_dataset(path, cache_dir=cache_dir)
    )
    if isinstance(loaded, datasets.Dataset):  # one saved Dataset: it is the only split
        return loaded
    if split not in loaded:
        raise UsageError(
            f"{path}: the dataset has no split {split!r}; it has {sorted(loaded)} (pass "
            "splits= with those names)"
        )
    return loaded[split]


def hf_data_source(
    data: Files | str | os.PathLike[str],
    output_signature: Mapping[str, Any],
    *,
    splits: Sequence[str] | None = None,
    required: Sequence[str] = (),
    non_empty: Collection[str] = (),
    language_field: str | None = None,
    languages: Collection[str] | None = None,
    transform: sources.Transform | None = None,
    skip_malformed: bool | None = None,
    cache_dir: str | None = None,
):
    """A SeqIO source over local Hugging Face data, read when a split is first built.

    Args:
      data: split name -> file(s) (.jsonl/.json, .parquet, .arrow), or a directory (a
        `save_to_disk` output, or a downloaded dataset repository whose files name their splits).
      output_signature: field -> `tf.TensorSpec` (a list field is `tf.TensorSpec([None], ...)`).
      splits: the splits a directory offers (default: train, validation, test).
      required, non_empty, language_field, languages, transform: as in `sources.read_jsonl`.
      skip_malformed: None asks gin when reading (`--gin.malformed_lines.skip=True`).
      cache_dir: where `datasets` keeps the Arrow copies of files it parses (default: its own).
    """
    if isinstance(data, (str, os.PathLike)):
        directory = os.fspath(data)
        split_names = tuple(splits or ("train", "validation", "test"))
    else:
        directory = None
        split_names = tuple(data)
        if splits is not None and set(splits) != set(split_names):
            raise UsageError(f"splits={list(splits)} differ from the files' splits {split_names}")
    validation = dict(
        required=required,
        non_empty=non_empty,
        language_field=language_field,
        languages=languages,
        transform=transform,
    )

    def load_split(split: str) -> list[sources.Record]:
        skip, hint = sources.skip_policy(skip_malformed, "hf_data_source")
        report = sources.SkipReport()
        if directory is not None:
            parts = [(f"{directory}[{split}]", _rows(_load_directory(directory, split, cache_dir)))]
        else:
            parts = [(p, _file_rows(p, cache_dir)) for p in sources.as_paths(data[split])]
        records: list[sources.Record] = []
        for label, rows in parts:
            try:
                records += sources.validate_rows(
                    label, rows, skip_malformed=skip, report=report, **validation
                )
            except sources.MalformedLineError as e:
                raise sources.MalformedLineError(
                    e.path, e.line, e.problem, e.field, skip_hint=hint, unit="row"
                ) from None
        return records

    return sources.records_data_source(load_split, split_names, output_signature)
