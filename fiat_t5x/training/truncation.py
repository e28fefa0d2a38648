"""Examples that TASK_FEATURE_LENGTHS would cut, found before training starts.

SeqIO trims `inputs` and `targets` to their lengths without a word: a target cut from
`positive` to `positiv` can never be decoded right (SeqIO accuracy 0 while token accuracy looks
fine), and an input cut at the end loses what FIAT puts there (the rationale). Training calls
`warn_if_truncated` at start-up, like the vocabulary check, with the count and the longest
example of every feature that overflows.

Lengths are measured on the `*_pretokenized` text the task keeps (re-encoded with the feature's
vocabulary, plus EOS when the feature adds one), because the token ids SeqIO hands out are
already trimmed.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Mapping

from fiat_t5x.training import data as data_lib

logger = logging.getLogger(__name__)

_SHOWN_CHARACTERS = 200


@dataclasses.dataclass(frozen=True)
class Truncation:
    """`truncated` of `checked` examples of `task` have a `feature` longer than `length` tokens;
    the longest has `longest` tokens (`longest_text`)."""

    task: str
    feature: str
    length: int
    checked: int
    truncated: int
    longest: int
    longest_text: str


def find_truncations(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    split: str = "train",
    max_examples: int = 2000,
    seed: int = data_lib.EVAL_SEED,
) -> list[Truncation]:
    """Per task and feature, the examples longer than their length, over the first
    `max_examples` examples of the split (shared out over a mixture's tasks, at least 20 each)."""
    tasks = [t for t in data_lib.leaf_tasks(mixture_or_task_name) if split in t.splits]
    per_task = max(20, max_examples // max(len(tasks), 1))
    found = []
    for task in tasks:
        features = {
            name: task.output_features[name]
            for name in task_feature_lengths
            if name in task.output_features
        }
        ds = task.get_dataset(
            dict(task_feature_lengths), split=split, shuffle=False, num_epochs=1, seed=seed
        )
        counts = {name: [0, 0, ""] for name in features}  # truncated, longest, longest text
        checked = 0
        for example in itertools.islice(ds.as_numpy_iterator(), per_task):
            checked += 1
            for name, feature in features.items():
                text = example.get(f"{name}_pretokenized")
                if text is None:
                    continue
                text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
                size = len(feature.vocabulary.encode(text)) + (1 if feature.add_eos else 0)
                entry = counts[name]
                if size > task_feature_lengths[name]:
                    entry[0] += 1
                if size > entry[1]:
                    entry[1], entry[2] = size, text
        for name, (truncated, longest, text) in counts.items():
            if truncated:
                found.append(
                    Truncation(
                        task.name,
                        name,
                        int(task_feature_lengths[name]),
                        checked,
                        truncated,
                        longest,
                        text,
                    )
                )
    return found


def warn_if_truncated(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    split: str = "train",
    max_examples: int = 2000,
    seed: int = data_lib.EVAL_SEED,
) -> list[Truncation]:
    """Logs one loud warning per task and feature that TASK_FEATURE_LENGTHS cuts; returns them."""
    found = find_truncations(mixture_or_task_name, task_feature_lengths, split, max_examples, seed)
    for t in found:
        shown = t.longest_text[:_SHOWN_CHARACTERS]
        if len(t.longest_text) > _SHOWN_CHARACTERS:
            shown += f"... ({len(t.longest_text)} characters)"
        consequence = (
            "their targets are cut, so the model learns and is scored against cut answers "
            "(SeqIO metrics can read 0 while token accuracy looks fine)"
            if t.feature == "targets"
            else "the end of their inputs is cut off"
        )
        logger.warning(
            "EXAMPLES LONGER THAN TASK_FEATURE_LENGTHS: %s/%s: %d of %d examples checked have "
            "%s longer than %d tokens; %s. The longest has %d tokens: %r. Raise "
            "TASK_FEATURE_LENGTHS['%s'] to at least %d (or shorten the examples).",
            t.task,
            split,
            t.truncated,
            t.checked,
            t.feature,
            t.length,
            consequence,
            t.longest,
            shown,
            t.feature,
            t.longest,
        )
    return found
