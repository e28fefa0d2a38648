"""How much of a task's text a vocabulary maps to the unknown token, per language.

Why: Flan-T5's SentencePiece vocabulary has no byte fallback, so Bengali, Telugu or Japanese
text becomes `<unk>`; a model tuned on it learns from nothing. `measure_coverage` counts, per
language, the share of characters and of tokens that are unknown and lists the characters
lost; `warn_if_poorly_covered` is what training calls to warn loudly before it starts.

A character counts as unknown when encoding it alone yields the vocabulary's unknown id
(whitespace is not counted). Byte-level vocabularies never lose a character.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

# Fields never measured: they are metadata, not text the model reads.
_METADATA_FIELDS = frozenset({"id", "language", "rank_candidate", "rank_gold"})
_TEXT_FIELDS = ("inputs_pretokenized", "targets_pretokenized")


@dataclasses.dataclass(frozen=True)
class LanguageCoverage:
    """Counts for one language. Rates are in [0, 1]."""

    language: str
    num_examples: int
    num_chars: int
    unknown_chars: int
    num_tokens: int
    unknown_tokens: int
    lost_characters: tuple[tuple[str, int], ...]  # most frequent unknown characters, counts

    @property
    def unknown_char_rate(self) -> float:
        return self.unknown_chars / self.num_chars if self.num_chars else 0.0

    @property
    def unknown_token_rate(self) -> float:
        return self.unknown_tokens / self.num_tokens if self.num_tokens else 0.0

    def as_row(self) -> dict[str, Any]:
        return {
            "language": self.language,
            "examples": self.num_examples,
            "chars": self.num_chars,
            "unknown_chars_pct": 100 * self.unknown_char_rate,
            "tokens": self.num_tokens,
            "unknown_tokens_pct": 100 * self.unknown_token_rate,
            "lost": " ".join(ch for ch, _ in self.lost_characters),
        }


def load_vocabulary(spec: str):
    """`"byte"` -> seqio.ByteVocabulary; otherwise the path of a SentencePiece model."""
    import seqio

    if spec == "byte":
        return seqio.ByteVocabulary()
    import os

    if not os.path.isfile(spec):
        raise FileNotFoundError(
            f"vocabulary {spec!r}: no such SentencePiece model file; pass a .model path or 'byte'"
        )
    return seqio.SentencePieceVocabulary(spec)


def _unknown_id(vocabulary) -> int | None:
    import seqio

    if isinstance(vocabulary, seqio.ByteVocabulary):
        return None  # Every byte has an id; the reserved unk id is never produced.
    return vocabulary.unk_id


def example_texts(example: Mapping[str, Any]) -> list[str]:
    """The text a model reads from an example: inputs/targets if tokenized, else raw fields."""
    fields = [f for f in _TEXT_FIELDS if f in example]
    if not fields:
        fields = [
            name
            for name, value in example.items()
            if name not in _METADATA_FIELDS
            and not name.endswith("_pretokenized")
            and isinstance(value, (str, bytes))
        ]
    texts = []
    for name in fields:
        value = example[name]
        texts.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
    return texts


def measure_coverage(
    vocabulary,
    examples: Iterable[Mapping[str, Any]],
    *,
    max_lost_characters: int = 10,
    language_field: str = "language",
) -> list[LanguageCoverage]:
    """Coverage per language (the example's `language_field`, else "all"), sorted by language."""
    unk = _unknown_id(vocabulary)
    char_is_unknown: dict[str, bool] = {}
    stats: dict[str, dict[str, Any]] = {}
    for example in examples:
        language = example.get(language_field, "all")
        language = language.decode("utf-8") if isinstance(language, bytes) else str(language)
        entry = stats.setdefault(
            language,
            {"examples": 0, "chars": 0, "unk_chars": 0, "tokens": 0, "unk_tokens": 0,
             "lost": collections.Counter()},
        )  # fmt: skip
        entry["examples"] += 1
        for text in example_texts(example):
            ids = list(vocabulary.encode(text))
            entry["tokens"] += len(ids)
            if unk is None:
                entry["chars"] += sum(1 for ch in text if not ch.isspace())
                continue
            entry["unk_tokens"] += sum(1 for i in ids if i == unk)
            for ch in text:
                if ch.isspace():
                    continue
                entry["chars"] += 1
                if ch not in char_is_unknown:
                    char_is_unknown[ch] = unk in vocabulary.encode(ch)
                if char_is_unknown[ch]:
                    entry["unk_chars"] += 1
                    entry["lost"][ch] += 1
    return [
        LanguageCoverage(
            language=language,
            num_examples=s["examples"],
            num_chars=s["chars"],
            unknown_chars=s["unk_chars"],
            num_tokens=s["tokens"],
            unknown_tokens=s["unk_tokens"],
            lost_characters=tuple(s["lost"].most_common(max_lost_characters)),
        )
        for language, s in sorted(stats.items())
    ]


def task_examples(task_or_mixture_name: str, split: str, max_examples: int | None):
    """Up to `max_examples` examples of every task in a task or mixture, in order."""
    import seqio

    provider = seqio.get_mixture_or_task(task_or_mixture_name)
    tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
    for task in tasks:
        if split not in task.splits:
            continue
        dataset = task.get_dataset(None, split=split, shuffle=False)
        yield from itertools.islice(dataset.as_numpy_iterator(), max_examples)


def task_vocabulary(task_or_mixture_name: str):
    """The vocabulary of a task's inputs (its targets' when it has no inputs)."""
    import seqio

    features = seqio.get_mixture_or_task(task_or_mixture_name).output_features
    return (features.get("inputs") or features["targets"]).vocabulary


def warn_if_poorly_covered(
    task_or_mixture_name: str,
    split: str = "train",
    threshold: float = 0.01,
    max_examples: int | None = 200,
    vocabulary=None,
) -> list[LanguageCoverage]:
    """Logs a loud warning for every language whose unknown-character share exceeds `threshold`.

    Training calls this before its first step. `vocabulary` defaults to the task's own (the
    one its examples are tokenized with); returns the coverage of every language.
    """
    vocabulary = vocabulary or task_vocabulary(task_or_mixture_name)
    coverage = measure_coverage(
        vocabulary, task_examples(task_or_mixture_name, split, max_examples)
    )
    for entry in coverage:
        if entry.unknown_char_rate > threshold:
            lost = " ".join(f"{ch!r}x{n}" for ch, n in entry.lost_characters[:5])
            logger.warning(
                "VOCABULARY DOES NOT COVER THE DATA: %s/%s language %r: %.1f%% of characters "
                "(%d of %d) and %.1f%% of tokens map to <unk> (threshold %.1f%%); lost: %s. "
                "The model cannot read this text: use a vocabulary that covers the script "
                "(mT5/umT5, or a byte-level model). Check with `fiat-t5x check-vocab`.",
                task_or_mixture_name,
                split,
                entry.language,
                100 * entry.unknown_char_rate,
                entry.unknown_chars,
                entry.num_chars,
                100 * entry.unknown_token_rate,
                100 * threshold,
                lost,
            )
    return coverage
