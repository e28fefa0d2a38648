"""Helpers for registering dataset tasks whose files live outside the repo, one task per language.

A registration module (tasks/xor_attriqa.py, tasks/xtreme_up_qa.py) registers at import time,
before anyone can say where the data is; the source therefore looks the data directory up
(gin or an environment variable) only when a split is read. Registering again replaces the
earlier tasks, so a test or a notebook can point them at other files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

from fiat_t5x.data import sources


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """Where the released files are and what to do with malformed lines."""

    data_dir: str
    skip_malformed: bool = False


def replace_task(name: str, **kwargs: Any) -> str:
    """`seqio.TaskRegistry.add`, replacing a task of the same name; returns the name."""
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, **kwargs)
    return name


def replace_mixture(name: str, tasks: Sequence[str], default_rate: float = 1.0) -> str:
    """`seqio.MixtureRegistry.add`, replacing a mixture of the same name; returns the name."""
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, list(tasks), default_rate=default_rate)
    return name


def language_source(
    load_examples: Callable[..., list[dict[str, Any]]],
    configured: Callable[[], DataOptions],
    languages: Sequence[str],
    splits: Sequence[str],
    output_signature: Mapping[str, tf.TensorSpec],
    *,
    data_dir: str | None = None,
    skip_malformed: bool | None = None,
) -> seqio.DataSource:
    """A source of `languages`' examples, read when a split is first built.

    `load_examples(data_dir, split, languages, skip_malformed=...)` reads the files; the
    directory is `data_dir` when given, else `configured()` (the dataset's gin/env options);
    `skip_malformed=None` takes the configured setting.
    """

    def load_split(split: str) -> list[dict[str, Any]]:
        options = DataOptions(data_dir, bool(skip_malformed)) if data_dir else configured()
        skip = options.skip_malformed if skip_malformed is None else skip_malformed
        try:
            return load_examples(options.data_dir, split, languages, skip_malformed=skip)
        except sources.MalformedLineError as e:
            if skip_malformed is not None:
                raise
            # Name the switch a user has: the dataset's gin options (`xtreme_up_qa_data`...).
            name = getattr(configured, "__name__", "the dataset's options")
            raise e.with_skip_hint(f"--gin.{name}.skip_malformed=True") from None

    return sources.records_data_source(load_split, splits, output_signature)


def labelled_inputs(
    *fields: tuple[str, str],
) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    """A preprocessor setting `inputs` to "label: {field} label: {field} ..." for the given
    (label, field) pairs, e.g. ("question", "query") -> "question: <query>"."""
    if not fields:
        raise ValueError("labelled_inputs needs at least one (label, field) pair")

    def add(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        parts: list[Any] = []
        for i, (label, field) in enumerate(fields):
            parts += [f"{' ' if i else ''}{label}: ", example[field]]
        return {**example, "inputs": tf.strings.join(parts)}

    def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
        return dataset.map(add, num_parallel_calls=tf.data.AUTOTUNE)

    return preprocess
