"""The bundled demo task: is Ana right (or wrong) about the result of a small word problem?

Each question tells a two-number story, states Ana's claimed result and asks either "Is she
right?" or "Is she wrong?", in English, German, French or Swahili:

    Ana has 56 apples and buys 77 more. She says she now has 133. Is she wrong?   -> no
    Ana ana machungwa 56 na anatoa 19. Anasema sasa ana 40. Je, amekosea?          -> yes

The answer is "yes" or "no", like the paper's XOR-AttriQA (binary, scored by accuracy). Every
split is balanced per language over the four kinds (claim true/false × asks right/wrong), so
"yes" and "no" are equally frequent and chance is 50%; a false claim is off by 1..10.

Why this task: it is generated deterministically (no download), it is low-data like the
paper's tasks, it has languages, and checking the arithmetic is what a tiny model cannot learn
from a few hundred examples in minutes (a model without β's reasoning stays at chance), while
reading (and correcting) a worked solution is. The demo's β (`fiat_tasks.demo_beta`) solves
the arithmetic but misreads one Swahili construction; docs/fiat.md has the whole story.

Every example has a stable `id` (`demo-<split>-<index>`), a `language`, the `question` and the
`answer` ("yes"/"no").
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import seqio
import tensorflow as tf

VOCABULARY = seqio.ByteVocabulary()
LANGUAGES = ("en", "de", "fr", "sw")
SPLIT_SIZES = {"train": 400, "validation": 400, "test": 400}
# Distinct seeds per split so the splits never share a generator stream.
_SPLIT_SEEDS = {"train": 11, "validation": 12, "test": 13}
YES, NO = "yes", "no"
RIGHT, WRONG = "right", "wrong"
# How far a false claim is from the true result (never 0).
_MAX_OFFSET = 10


@dataclasses.dataclass(frozen=True)
class Phrasing:
    """One language's sentences; {a} and {b} are the story's numbers, {c} Ana's claim."""

    add: str
    subtract: str
    claim: str
    asks: dict[str, str]  # RIGHT / WRONG -> the question


PHRASINGS: dict[str, Phrasing] = {
    "en": Phrasing(
        add="Ana has {a} apples and buys {b} more.",
        subtract="Ana has {a} apples and gives {b} away.",
        claim="She says she now has {c}.",
        asks={RIGHT: "Is she right?", WRONG: "Is she wrong?"},
    ),
    "de": Phrasing(
        add="Ana hat {a} Äpfel und kauft {b} dazu.",
        subtract="Ana hat {a} Äpfel und verschenkt {b}.",
        claim="Sie sagt, sie hat jetzt {c}.",
        asks={RIGHT: "Hat sie recht?", WRONG: "Irrt sie sich?"},
    ),
    "fr": Phrasing(
        add="Ana a {a} pommes et en achète {b} de plus.",
        subtract="Ana a {a} pommes et en donne {b}.",
        claim="Elle dit qu'elle en a maintenant {c}.",
        asks={RIGHT: "A-t-elle raison ?", WRONG: "A-t-elle tort ?"},
    ),
    "sw": Phrasing(
        add="Ana ana machungwa {a} na ananunua {b} zaidi.",
        subtract="Ana ana machungwa {a} na anatoa {b}.",
        claim="Anasema sasa ana {c}.",
        asks={RIGHT: "Je, yuko sahihi?", WRONG: "Je, amekosea?"},
    ),
}


@dataclasses.dataclass(frozen=True)
class DemoExample:
    id: str
    language: str
    question: str
    answer: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def answer_for(claim_is_true: bool, asks: str) -> str:
    """ "Is she right?" is answered yes for a true claim, "Is she wrong?" for a false one."""
    return YES if claim_is_true == (asks == RIGHT) else NO


def generate_split(split: str) -> list[DemoExample]:
    """The examples of one split; identical on every machine and every call."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown demo split {split!r}; expected one of {sorted(SPLIT_SIZES)}")
    rng = np.random.default_rng(_SPLIT_SEEDS[split])
    examples = []
    for index in range(SPLIT_SIZES[split]):
        language = LANGUAGES[index % len(LANGUAGES)]
        # Languages cycle with period 4; within a language the four kinds (claim true/false ×
        # asks right/wrong) cycle too, so every split is balanced per language and per kind.
        kind = (index // len(LANGUAGES)) % 4
        claim_is_true, asks = kind % 2 == 0, (RIGHT, WRONG)[kind // 2]
        subtract = bool(rng.integers(2))
        a, b = (int(x) for x in rng.integers(10, 100, size=2))
        if subtract and b > a:
            a, b = b, a
        result = a - b if subtract else a + b
        offset = int(rng.integers(1, _MAX_OFFSET + 1)) * (1 if rng.integers(2) else -1)
        if result + offset < 0:  # A negative claim would give the answer away.
            offset = -offset
        claim = result if claim_is_true else result + offset
        phrasing = PHRASINGS[language]
        story = (phrasing.subtract if subtract else phrasing.add).format(a=a, b=b)
        question = f"{story} {phrasing.claim.format(c=claim)} {phrasing.asks[asks]}"
        examples.append(
            DemoExample(
                f"demo-{split}-{index:04d}", language, question, answer_for(claim_is_true, asks)
            )
        )
    return examples


def write_jsonl(directory: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Writes `{split}.jsonl` for every split (for tools that read files), returns the paths."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in SPLIT_SIZES:
        path = directory / f"{split}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for example in generate_split(split):
                f.write(json.dumps(example.to_dict(), ensure_ascii=False) + "\n")
        tmp.replace(path)
        paths[split] = path
    return paths


def exact_match_by_language(targets: list[dict], predictions: list[str]) -> dict[str, float]:
    """Accuracy (×100) overall and per language; targets are the postprocessed examples."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    hits: dict[str, list[bool]] = {}
    for target, prediction in zip(targets, predictions, strict=True):
        correct = prediction.strip() == target["answer"]
        hits.setdefault("all", []).append(correct)
        hits.setdefault(target["language"], []).append(correct)
    return {
        ("accuracy" if key == "all" else f"accuracy/{key}"): 100.0 * float(np.mean(values))
        for key, values in sorted(hits.items())
    }


def _postprocess_with_example(output: str, example=None, is_target: bool = False):
    """Targets become the raw example (answer + language) so metrics can break down by language."""
    if is_target and example is not None:
        return {
            "answer": output.strip(),
            "language": example["language"].decode("utf-8")
            if isinstance(example["language"], bytes)
            else str(example["language"]),
        }
    return output.strip()


def _dataset_fn(
    split: str, shuffle_files: bool = False, seed: int | None = None
) -> tf.data.Dataset:
    del shuffle_files, seed  # One in-memory "file" per split; order is the generation order.
    examples = [e.to_dict() for e in generate_split(split)]
    columns = {key: [e[key] for e in examples] for key in ("id", "language", "question", "answer")}
    return tf.data.Dataset.from_tensor_slices(columns)


def demo_source() -> seqio.FunctionDataSource:
    return seqio.FunctionDataSource(
        _dataset_fn, splits=tuple(SPLIT_SIZES), num_input_examples=dict(SPLIT_SIZES)
    )


@seqio.map_over_dataset
def _plain_inputs(example: dict) -> dict:
    """The plain format: the question alone → the answer (the "w/o instruction" input)."""
    return {**example, "inputs": example["question"], "targets": example["answer"]}


OUTPUT_FEATURES = {
    "inputs": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
    "targets": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
}

BASE_TASK = "fiat_demo"
PLAIN_TASK = "fiat_demo_plain"


def register() -> None:
    """Registers the demo tasks (idempotent: importing this module twice is harmless)."""
    if PLAIN_TASK in seqio.TaskRegistry.names():
        return
    # The raw task exposes the fields for later variants (instruction, rationale injection).
    seqio.TaskRegistry.add(BASE_TASK, source=demo_source(), output_features={})
    seqio.TaskRegistry.add(
        PLAIN_TASK,
        source=demo_source(),
        preprocessors=[
            _plain_inputs,
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=OUTPUT_FEATURES,
        postprocess_fn=_postprocess_with_example,
        metric_fns=[exact_match_by_language],
    )


register()
