"""A small, generic, Flan-style instruction mixture: how the demo builds an "instruction-tuned" τ.

FIAT's τ starts from an instruction-tuned checkpoint (Flan-PaLM-2 / Flan-T5). The demo cannot
download one, so it makes its own: the demo's tiny model is first fully fine-tuned on this
mixture (`gin/fiat/demo_base.gin`), and the FIAT variants start from that checkpoint. "w/o
instruction-tuned base" starts from the random initialisation instead.

The skills are deliberately generic and are NOT the demo's task (no word problems, no
addition or subtraction, nothing about being right or wrong): give the first or the last
number of a text, answer yes/no about a text (does it contain a word / a number?), and give
the final answer of a chain of thought (a text ending "So the answer is X." or "..., so the
answer is X.", X a yes/no/true/false word or a name, sometimes after a question; Flan-T5 is
trained on exactly such CoT targets).
Texts are random words of the demo's four languages mixed with numbers, on one to three lines,
so that the prompts have the shape of real instructions over real-looking text. Each skill has
a few instruction templates (Flan's habit), picked per example, with the instruction before or
after the text.

Everything is generated deterministically (seeded per skill and split): no download, the same
examples on every machine. Tasks: `demo_instructions_<skill>`; the mixture
`demo_instructions` mixes them examples-proportionally (`fiat_t5x.data.mixtures`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np
import seqio
import tensorflow as tf

from fiat_t5x.data.mixtures import examples_proportional_rates, register_rates_mixture
from fiat_tasks import demo_vocab

VOCABULARY = demo_vocab.vocabulary()
SPLIT_SIZES = {"train": 2000, "validation": 64}
# Training examples per skill; the mixture samples examples-proportionally (Flan's rule).
TRAIN_SIZES = {
    "last_number": 3000,
    "first_number": 3000,
    "contains_word": 3000,
    "contains_number": 2000,
    "cot_answer": 8000,
}
MIXTURE = "demo_instructions"
TASK_PREFIX = "demo_instructions_"

# Everyday words of the demo's languages (en, de, fr, sw); texts mix them with numbers.
_WORDS = (
    "the cat sees a red house near water and walks home today with friends "
    "der Hund sieht ein blaues Auto am Markt und geht heute nach Hause mit Freunden "
    "le chat voit une maison rouge près de la rivière et rentre avec ses amis "
    "mtoto anaona nyumba nyekundu karibu na mto na anarudi nyumbani leo pamoja"
).split()

Generator = Callable[[np.random.Generator], tuple[str, str]]


def _number(rng: np.random.Generator) -> str:
    return str(int(rng.integers(0, 200)))


def random_text(
    rng: np.random.Generator, min_numbers: int = 0, max_numbers: int = 3, max_words: int = 14
) -> str:
    """Words and numbers on 1-3 lines, some ending with a full stop (~10 bytes a word)."""
    n_numbers = int(rng.integers(min_numbers, max_numbers + 1))
    n_words = int(rng.integers(3, max_words + 1))
    tokens = [str(rng.choice(_WORDS)) for _ in range(n_words)]
    for _ in range(n_numbers):
        tokens.insert(int(rng.integers(0, len(tokens) + 1)), _number(rng))
    lines = int(rng.integers(1, 4))
    cuts = sorted(rng.choice(np.arange(1, len(tokens)), size=min(lines - 1, len(tokens) - 1)))
    parts, start = [], 0
    for cut in [*cuts, len(tokens)]:
        parts.append(" ".join(tokens[start:cut]))
        start = cut
    parts = [p + "." if rng.random() < 0.5 else p for p in parts if p]
    return "\n".join(parts)


def _numbers(text: str) -> list[str]:
    return re.findall(r"\d+", text)


def _template(rng: np.random.Generator, templates: tuple[str, ...], **fields: str) -> str:
    return templates[int(rng.integers(len(templates)))].format(**fields)


_LAST_NUMBER = (
    "What is the last number in this text?\n{text}",
    "Text:\n{text}\nWhich number comes last in the text?",
    "Give the final number mentioned below.\n{text}",
    "{text}\nAnswer with the last number above.",
)
_FIRST_NUMBER = (
    "What is the first number in this text?\n{text}",
    "Text:\n{text}\nWhich number comes first in the text?",
    "{text}\nAnswer with the first number above.",
)
_CONTAINS_WORD = (
    'Does the text contain the word "{word}"? Answer yes or no.\n{text}',
    '{text}\nIs the word "{word}" in the text above? yes or no?',
)
_CONTAINS_NUMBER = (
    "Is there a number in this text? Answer yes or no.\n{text}",
    "{text}\nDoes the text above mention any number? yes or no?",
)
_COT_ANSWER = (
    "Read the reasoning and give its final answer.\n{text}",
    "{text}\nWhat answer does the reasoning above reach?",
    "Reasoning: {text}\nAnswer:",
    "Answer the question.\nQ: {question}\nR: {text}",
    "Q: {question}\nReasoning: {text}\nGive the final answer.",
)
# Final answers of the chain-of-thought skill: verdict words and names, not numbers.
_ANSWER_WORDS = ("yes", "no", "true", "false", "Ana", "Juma", "Marie", "Lena", "Tom")


def last_number(rng: np.random.Generator) -> tuple[str, str]:
    text = random_text(rng, min_numbers=1, max_numbers=4, max_words=12)
    return _template(rng, _LAST_NUMBER, text=text), _numbers(text)[-1]


def first_number(rng: np.random.Generator) -> tuple[str, str]:
    text = random_text(rng, min_numbers=1, max_numbers=4, max_words=12)
    return _template(rng, _FIRST_NUMBER, text=text), _numbers(text)[0]


def contains_word(rng: np.random.Generator) -> tuple[str, str]:
    text = random_text(rng)
    present = bool(rng.integers(2))
    words = re.findall(r"[^\W\d]+", text)
    word = str(rng.choice(words)) if present and words else str(rng.choice(_WORDS))
    answer = "yes" if word in words else "no"
    return _template(rng, _CONTAINS_WORD, text=text, word=word), answer


def contains_number(rng: np.random.Generator) -> tuple[str, str]:
    text = random_text(rng, min_numbers=0, max_numbers=1)
    return _template(rng, _CONTAINS_NUMBER, text=text), "yes" if _numbers(text) else "no"


def _sentence(rng: np.random.Generator, max_words: int = 8) -> str:
    return random_text(rng, max_numbers=1, max_words=max_words).replace("\n", " ").rstrip(".")


def cot_answer(rng: np.random.Generator) -> tuple[str, str]:
    """A generic chain of thought of one to four sentences ending in "So the answer is X." or
    "..., so the answer is X."; half of them mention another answer word earlier, so the
    final one must be read. Some come with a question before the reasoning (Q: ... R: ...)."""
    answer = str(rng.choice(_ANSWER_WORDS))
    sentences = [_sentence(rng) for _ in range(int(rng.integers(1, 5)))]
    if rng.random() < 0.5:
        words = sentences[-1].split()
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(_ANSWER_WORDS)))
        sentences[-1] = " ".join(words)
    reasoning = ". ".join(sentences)
    if rng.random() < 0.5:
        text = f"{reasoning}, so the answer is {answer}."
    else:
        text = f"{reasoning}. So the answer is {answer}."
    question = _sentence(rng, max_words=6) + "?"
    return _template(rng, _COT_ANSWER, text=text, question=question), answer


SKILLS: dict[str, Generator] = {
    "last_number": last_number,
    "first_number": first_number,
    "contains_word": contains_word,
    "contains_number": contains_number,
    "cot_answer": cot_answer,
}


@dataclasses.dataclass(frozen=True)
class InstructionExample:
    id: str
    inputs: str
    targets: str


def generate(skill: str, split: str) -> list[InstructionExample]:
    """The examples of one skill and split; identical on every machine and every call."""
    if skill not in SKILLS:
        raise ValueError(
            f"unknown demo instruction skill {skill!r}; expected one of {list(SKILLS)}"
        )
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SIZES)}")
    seed = [sorted(SKILLS).index(skill), sorted(SPLIT_SIZES).index(split), 20230517]
    rng = np.random.default_rng(seed)
    return [
        InstructionExample(f"{skill}-{split}-{i:05d}", *SKILLS[skill](rng))
        for i in range(_split_size(skill, split))
    ]


def _split_size(skill: str, split: str) -> int:
    return TRAIN_SIZES[skill] if split == "train" else SPLIT_SIZES[split]


def exact_match(targets: list[str], predictions: list[str]) -> dict[str, float]:
    """Accuracy (×100) of exact string matches."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    hits = [t.strip() == p.strip() for t, p in zip(targets, predictions, strict=True)]
    return {"accuracy": 100.0 * float(np.mean(hits)) if hits else 0.0}


def _source(skill: str) -> seqio.FunctionDataSource:
    def dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None):
        del shuffle_files, seed  # In memory and deterministic; SeqIO shuffles examples.
        rows = generate(skill, split)
        return tf.data.Dataset.from_tensor_slices(
            {
                "id": [r.id for r in rows],
                "inputs": [r.inputs for r in rows],
                "targets": [r.targets for r in rows],
            }
        )

    return seqio.FunctionDataSource(
        dataset_fn,
        splits=tuple(SPLIT_SIZES),
        num_input_examples={split: _split_size(skill, split) for split in SPLIT_SIZES},
    )


def _decode(output: str, example=None, is_target: bool = False) -> str:
    del example, is_target
    return output.strip()


def register() -> seqio.Mixture:
    """Registers one task per skill and the examples-proportional mixture (idempotent)."""
    if MIXTURE in seqio.MixtureRegistry.names():
        return seqio.get_mixture_or_task(MIXTURE)
    features = {
        "inputs": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
        "targets": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
    }
    counts = {}
    for skill in SKILLS:
        name = TASK_PREFIX + skill
        if name not in seqio.TaskRegistry.names():
            seqio.TaskRegistry.add(
                name,
                source=_source(skill),
                preprocessors=[
                    seqio.preprocessors.tokenize,
                    seqio.CacheDatasetPlaceholder(),
                    seqio.preprocessors.append_eos_after_trim,
                ],
                output_features=features,
                postprocess_fn=_decode,
                metric_fns=[exact_match],
            )
        counts[name] = TRAIN_SIZES[skill]
    return register_rates_mixture(MIXTURE, examples_proportional_rates(counts))


register()
