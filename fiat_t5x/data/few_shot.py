"""Few-shot prompts as the Flan Collection builds them: two kinds, FLAN's delimiters, pruning.

An exemplar is written `inputs_prefix + inputs + x_y_delimiter + targets_prefix + targets`;
exemplars are joined with the example separator and followed by the example itself,
`inputs_prefix + inputs + x_y_delimiter + targets_prefix` with trailing spaces removed (so a
"Q:/A:" prompt ends with "A:").

Two kinds of few-shot prompt (Flan registers both for every task, at equal rates):
- same template ("x-shot"): 25 candidate exemplars are drawn from the train split, each with its
  own template; only those whose template is the example's are kept (on average 25 / number of
  templates, e.g. 2.5 for ten). One delimiter pair and one prefix pair serve the whole prompt.
- mixed templates ("five-shot"): 5 exemplars, each with its own template, its own delimiter and
  prefix pair; one separator for the prompt, drawn from "\\n", "\\n\\n", "\\n\\n\\n".

Delimiter pairs (x_y_delimiter, example_separator) are drawn with the frequencies of FLAN's
seventy CoT few-shot templates (`FLAN_DELIMITERS`: "\\n" / "\\n\\n" in 49 of 70, ...), and prefix
pairs with FLAN's share of unlabelled templates (17 of 70) against labelled ones (`PREFIXES`).
A template that writes its own labels ("Q: {question}", a last line "A: Let's see.", targets
"Q: {question}\\nA: {answer}") gets no prefix pair: stacking would double them ("Q: Q: ...").

Exemplars are then dropped from the end until the whole prompt, tokenized with the task's own
vocabulary, fits the inputs length (less one token for EOS). An example left with no exemplar
(none matched its template, or none fits) is dropped, as FLAN's `filter_zero_shot_in_few_shot`
does; `fiat-t5x mixture-rates --inputs-length` counts them. An example is never its own exemplar.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from fiat_t5x.data.templates import Template

logger = logging.getLogger(__name__)

SAME_TEMPLATE = "same"
MIXED_TEMPLATES = "mixed"


@dataclasses.dataclass(frozen=True)
class Delimiters:
    """What follows an exemplar's inputs, and what separates exemplars; `weight` is its count."""

    x_y_delimiter: str
    example_separator: str
    weight: int = 1


@dataclasses.dataclass(frozen=True)
class Prefixes:
    """Labels before an exemplar's inputs and targets ("Q: " / "A: "); `weight` is its count."""

    inputs_prefix: str
    targets_prefix: str
    weight: int = 1

    @property
    def labelled(self) -> bool:
        return bool(self.inputs_prefix or self.targets_prefix)


# (x_y_delimiter, example_separator) counts over FLAN's 70 CoT few-shot templates
# (gsm8k, strategyqa, creak, qasc, ecqa, sensemaking, aqua; 10 each).
FLAN_DELIMITERS: tuple[Delimiters, ...] = (
    Delimiters("\n", "\n\n", 49),
    Delimiters("\n", "\n\n\n", 6),
    Delimiters("\n\n", "\n\n", 3),
    Delimiters("\n", "\n--\n", 3),
    Delimiters("\n\n", "\n\n\n", 2),
    Delimiters("\n", "\n---\n", 1),
    Delimiters("\n", "\n****\n", 1),
    Delimiters("\n--\n", "\n\n\n", 1),
    Delimiters("\n--\n", "\n------\n", 1),
    Delimiters("\n", "\n\n\n\n", 1),
    Delimiters("\n", "\n", 1),
    Delimiters("\n--\n", "\n-----\n", 1),
)
# FLAN: 17 of its 70 CoT few-shot templates have no labels, 53 have a label pair (Q:/A: being the
# most common). Our pairs share those 53 counts.
PREFIXES: tuple[Prefixes, ...] = (
    Prefixes("", "", 17),
    Prefixes("Q: ", "A: ", 7),
    Prefixes("Question: ", "Answer: ", 6),
    Prefixes("q: ", "a: ", 5),
    Prefixes("QUESTION: ", "ANSWER: ", 4),
    Prefixes("[Q]: ", "[A]: ", 3),
    Prefixes("Problem: ", "Solution: ", 3),
    Prefixes("Input: ", "Output: ", 3),
    Prefixes("Query: ", "Reply: ", 3),
    Prefixes("Teacher: ", "Student: ", 3),
    Prefixes("Task: ", "Response: ", 3),
    Prefixes("Q. ", "A. ", 3),
    Prefixes("Question:\n", "Answer:\n", 3),
    Prefixes("### Question\n", "### Answer\n", 2),
    Prefixes("Puzzle: ", "Worked answer: ", 2),
    Prefixes("Exercise: ", "My solution: ", 2),
    Prefixes("Prompt: ", "Completion: ", 1),
)
MIXED_SEPARATORS: tuple[str, ...] = ("\n", "\n\n", "\n\n\n")

# A label: a short run of text ending in ":" at the start of a line, before any placeholder.
_LABEL = re.compile(r"^[^\n{]{1,30}:(?:[ \n]|$)")


def writes_own_labels(template: Template) -> bool:
    """Whether the template labels its own parts: its inputs start with a label ("Q: ..."),
    its inputs end on a label line ("A: Let's see."), or its targets start with one."""
    last_line = template.inputs.rsplit("\n", 1)[-1]
    return any(_LABEL.match(text) for text in (template.inputs, last_line, template.targets))


@dataclasses.dataclass(frozen=True)
class FewShotConfig:
    """Few-shot settings of a task.

    Attributes:
      candidates: same-template kind: exemplars drawn before keeping those with the template.
      max_same_template_shots: at most this many matching candidates are rendered (25 draws
        with 10 templates exceed 8 matches with probability 0.002).
      mixed_shots: mixed-templates kind: the number of exemplars.
      mixed_separators: the separators of the mixed kind (one drawn per prompt, uniformly).
      delimiters / prefixes: weighted tables, one entry drawn per prompt (per exemplar in the
        mixed kind).
      pool_seed: seed of the fixed permutation of the exemplar pool.
    """

    candidates: int = 25
    max_same_template_shots: int = 8
    mixed_shots: int = 5
    mixed_separators: tuple[str, ...] = MIXED_SEPARATORS
    delimiters: tuple[Delimiters, ...] = FLAN_DELIMITERS
    prefixes: tuple[Prefixes, ...] = PREFIXES
    pool_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("candidates", "max_same_template_shots", "mixed_shots"):
            if getattr(self, name) < 1:
                raise ValueError(f"FewShotConfig.{name}={getattr(self, name)}: must be >= 1")
        if not (self.delimiters and self.prefixes and self.mixed_separators):
            raise ValueError("FewShotConfig: delimiters, prefixes and mixed_separators must be set")
        if self.prefixes[0].labelled:
            raise ValueError(
                "FewShotConfig.prefixes[0] must be the unlabelled pair Prefixes('', ''): "
                "templates that write their own labels fall back to it"
            )

    def max_shots(self, kind: str) -> int:
        return self.max_same_template_shots if kind == SAME_TEMPLATE else self.mixed_shots


def exemplar_head(inputs: str, delimiters: Delimiters, prefixes: Prefixes) -> str:
    """Everything of an exemplar before its targets."""
    return prefixes.inputs_prefix + inputs + delimiters.x_y_delimiter + prefixes.targets_prefix


def assemble_prompt(exemplars: Sequence[tuple[str, str]], final_head: str, separator: str) -> str:
    """`separator.join(head + targets for each exemplar, final head without trailing spaces)`."""
    parts = [head + targets for head, targets in exemplars] + [final_head.rstrip(" ")]
    return separator.join(parts)


def longest_fitting(
    exemplars: Sequence[tuple[str, str]],
    final_head: str,
    separator: str,
    count_tokens: Callable[[str], int] | None,
    budget: int | None,
) -> tuple[str, int]:
    """`(prompt, n)` with the most leading exemplars whose prompt fits (n may be 0)."""
    for n in range(len(exemplars), -1, -1):
        prompt = assemble_prompt(exemplars[:n], final_head, separator)
        if count_tokens is None or budget is None or count_tokens(prompt) <= budget or n == 0:
            return prompt, n
    raise AssertionError("unreachable")


def assemble_prompt_tf(
    heads: tf.Tensor,
    targets: tf.Tensor,
    final_head: tf.Tensor,
    separator: tf.Tensor,
    count_tokens: Callable[[tf.Tensor], tf.Tensor] | None,
    budget: int | None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """The tf.data version of `longest_fitting`: `(prompt, n)` as scalars.

    Args:
      heads / targets: [k] tf.string, the exemplars in order (k may be 0).
      final_head: the example's head; separator: scalar tf.string.
      count_tokens: scalar string -> int32 token count with the task's vocabulary (None: no limit).
      budget: the token budget for the inputs (None: no limit).
    """
    pieces = tf.strings.join([heads, targets])  # [k]
    final = tf.strings.regex_replace(final_head, " +$", "")
    k = tf.size(pieces)

    def prompt(n: tf.Tensor) -> tf.Tensor:
        # reduce_join's separator must be a constant: append the drawn one to each exemplar.
        head = tf.strings.reduce_join(tf.strings.join([pieces[:n], separator]))
        return tf.strings.join([head, final])

    if count_tokens is None or budget is None:
        return prompt(k), k
    counts = tf.map_fn(
        lambda n: count_tokens(prompt(n)), tf.range(k + 1), fn_output_signature=tf.int32
    )
    fits = tf.logical_or(counts <= budget, tf.equal(tf.range(k + 1), 0))
    n = tf.reduce_max(tf.where(fits, tf.range(k + 1), 0))
    return prompt(n), n


class ExemplarPool:
    """The train split as in-memory tensors, loaded on first use and then reused.

    Args:
      load: returns the dataset of exemplar candidates (the train split after the task's
        deterministic preprocessors), with scalar string fields and optional list fields.
      id_field: the field that identifies an example (unique in the split).
      list_fields: fields that are lists (e.g. the answer options), kept as ragged rows.
      seed: seed of the fixed permutation.
    """

    def __init__(
        self,
        load: Callable[[], tf.data.Dataset],
        *,
        id_field: str,
        list_fields: Sequence[str] = (),
        seed: int = 0,
    ) -> None:
        self._load = load
        self._id_field = id_field
        self._list_fields = tuple(list_fields)
        self._seed = seed
        self._rows: list[dict] | None = None
        self._tensors: dict[str, tf.Tensor | tf.RaggedTensor] | None = None

    def rows(self) -> list[dict]:
        """The pool in its fixed order, as plain dicts (str values, lists for list fields)."""
        if self._rows is None:
            loaded = dataset_rows(self._load())
            if loaded and self._id_field not in loaded[0]:
                raise ValueError(
                    f"exemplar pool: examples lack the id field {self._id_field!r}; "
                    f"fields: {sorted(loaded[0])}"
                )
            ids = [row[self._id_field] for row in loaded]
            if len(set(ids)) != len(ids):
                raise ValueError(f"exemplar pool: the id field {self._id_field!r} is not unique")
            order = np.random.default_rng(self._seed).permutation(len(loaded))
            self._rows = [loaded[i] for i in order]
            logger.info("exemplar pool: %d examples", len(self._rows))
        return self._rows

    def tensors(self) -> Mapping[str, tf.Tensor | tf.RaggedTensor]:
        """field -> [pool_size] tensor (or [pool_size, None] ragged for list fields)."""
        if self._tensors is None:
            rows = self.rows()
            tensors: dict[str, tf.Tensor | tf.RaggedTensor] = {}
            for name in rows[0] if rows else (self._id_field,):
                values = [row[name] for row in rows]
                if name in self._list_fields:
                    tensors[name] = tf.RaggedTensor.from_row_lengths(
                        tf.constant([v for row in values for v in row], tf.string),
                        tf.constant([len(row) for row in values], tf.int64),
                    )
                elif values and not isinstance(values[0], str):
                    tensors[name] = tf.constant(np.asarray(values))
                else:
                    tensors[name] = tf.constant(values, tf.string, shape=[len(values)])
            self._tensors = tensors
        return self._tensors

    def size(self) -> int:
        return len(self.rows())


def dataset_rows(dataset: tf.data.Dataset, batch_size: int = 4096) -> list[dict]:
    """A finite dataset of examples as plain dicts (str for text, lists for vectors)."""
    rows: list[dict] = []
    for batch in dataset.ragged_batch(batch_size).as_numpy_iterator():
        columns = {
            name: [_to_python(v) for v in (value.to_list() if hasattr(value, "to_list") else value)]
            for name, value in batch.items()
        }
        rows.extend(
            dict(zip(columns, values, strict=True))
            for values in zip(*columns.values(), strict=True)
        )
    return rows


def _to_python(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_to_python(v) for v in value.tolist()]
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def choose_exemplars(
    pool_ids: tf.Tensor, example_ids: tf.Tensor, starts: tf.Tensor, k: int
) -> tf.Tensor:
    """[N, k] pool indices: k consecutive entries from each start (wrapping), skipping the
    example's own id.

    Args:
      pool_ids: [pool_size] tf.string, unique; must hold more than k examples.
      example_ids: [N] tf.string.
      starts: [N] int32 in [0, pool_size).
    """
    size = tf.shape(pool_ids)[0]
    window = tf.math.floormod(starts[:, None] + tf.range(k + 1)[None, :], size)  # [N, k+1]
    is_self = tf.equal(tf.gather(pool_ids, window), example_ids[:, None])
    # Ids are unique, so at most one position is skipped: shift the rest left past it.
    first_self = tf.argmax(tf.cast(is_self, tf.int32), axis=1, output_type=tf.int32)
    skipped = tf.where(tf.reduce_any(is_self, axis=1), first_self, k + 1)  # [N]
    positions = tf.range(k)[None, :] + tf.cast(tf.range(k)[None, :] >= skipped[:, None], tf.int32)
    return tf.gather(window, positions, batch_dims=1)
