"""The seven chain-of-thought datasets of the Flan Collection as Flan builds its CoT submix.

Data: the TSV files of the Flan release (`flan/v2/cot_data/*_train.tsv`, three columns
`question<TAB>answer<TAB>chain_of_thought`, literal "\\n" for newlines). Point
`register_flan_cot(data_dir)` at the folder, or set `FIAT_FLAN_COT_DIR` before importing this
module (the CLI and T5X gin files import it), e.g.

    FIAT_FLAN_COT_DIR=/data/flan_cot fiat-t5x mixture-rates flan_cot

Registered (with the default prefix "flan_cot"), for dataset in aqua, creak, ecqa, gsm8k, qasc,
sensemaking, strategyqa:
- tasks `flan_cot_<dataset>_{cot_zs,cot_fs,cot_fs_mix,inverted,inverted_fs,inverted_fs_mix}`
  (ten CoT templates per dataset, options listed in a drawn format, a drawn final-answer
  sentence; few-shot with the same template or with mixed templates);
- mixture `flan_cot_zs`: `cot_zs` at the examples-proportional rate (cap 100k, Flan's), the
  `inverted` task at 0.3 of it;
- mixture `flan_cot_fs`: `cot_fs` and `cot_fs_mix` sharing the rate, `inverted_fs` and
  `inverted_fs_mix` sharing 0.3 of it;
- mixture `flan_cot`: the two at `zero_shot_share` (0.5: Flan's 1:1).
With `direct_answer_share > 0` the direct-answer variants (`zsopt`, `zsnoopt`, `fsopt`,
`fsnoopt`, `fsopt_mix`, `fsnoopt_mix`; five templates per dataset) are registered too, as
mixture `flan_cot_direct`, and `flan_cot` gives them that share.

Per example the fields are `id` ("<dataset>-<line>"), `question` (as the file gives it, with its
own "Options:" list: what no-options forms and inversions show), `stem` (the question without
that list: shown when a drawn options block lists the choices), `options` (the listed options;
"yes"/"no" for the yes/no datasets when the question lists none; empty for GSM8K), `answer`
(the option text when the file gives a letter like "(C)"), `chain_of_thought`. Splits: `train`
and `validation` (a stable `validation_fraction` of the lines, chosen by a hash of the id, so
exemplars never come from validation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

from fiat_t5x.data import mixtures
from fiat_t5x.data.cot import COT_TARGET
from fiat_t5x.data.few_shot import FewShotConfig
from fiat_t5x.data.flan_variants import (
    COT_VARIANTS,
    DIRECT_VARIANTS,
    INVERTED_VARIANTS,
    FlanTaskSpec,
    register_flan_variants,
)
from fiat_t5x.data.inversion import cot_inversions
from fiat_t5x.data.sources import Record, SkipReport, read_tsv
from fiat_t5x.data.templates import Template

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "FIAT_FLAN_COT_DIR"
COLUMNS = ("question", "answer", "chain_of_thought")
FIELDS = ("id", "question", "stem", "answer", "chain_of_thought")
# Flan's example cap for its CoT collection (5000 keeps GSM8K/ECQA/CREAK from dominating a
# small mixture; none of the seven files reaches 100k).
FLAN_COT_CAP = 100_000

# dataset -> options to use when a question lists none.
DATASETS: Mapping[str, tuple[str, ...]] = {
    "aqua": (),
    "creak": ("yes", "no"),
    "ecqa": (),
    "gsm8k": (),
    "qasc": (),
    "sensemaking": (),
    "strategyqa": ("yes", "no"),
}

_C = COT_TARGET
_A = "{answer}"

# Ten CoT templates per dataset, written for it. Each places `{options}` (empty for GSM8K, and
# in the no-options forms) and ends with the drawn final-answer sentence.
COT_TEMPLATES: Mapping[str, tuple[Template, ...]] = {
    "gsm8k": (
        Template(
            "{question}\nWork through the arithmetic step by step before giving the number.", _C
        ),
        Template("Solve this math word problem. Show your working.\n\n{question}", _C),
        Template("Q: {question}\nA: Let's compute this carefully.", _C),
        Template("Here is a word problem:\n{question}\nWhat is the answer? Explain each step.", _C),
        Template(
            "{question}\nFirst reason about the quantities involved, then state the result.", _C
        ),
        Template("Problem: {question}\nSolution, step by step:", _C),
        Template(
            "A student asks for help with this:\n{question}\nWalk them through the calculation.", _C
        ),
        Template(
            "Calculate the answer to the problem below, showing intermediate results.\n{question}",
            _C,
        ),
        Template("{question} Think it through one step at a time.", _C),
        Template("Read the problem, reason it out, and give the final number.\n\n{question}", _C),
    ),
    "strategyqa": (
        Template("{question}\n{options}\nReason about the facts involved before answering.", _C),
        Template(
            "Answer the yes/no question below. Spell out the facts you rely on first.\n{question}\n{options}",
            _C,
        ),
        Template("Q: {question}\n{options}\nA: Let's work out the hidden steps.", _C),
        Template("{question} Break the question into smaller facts, then decide.\n{options}", _C),
        Template("Question: {question}\n{options}\nExplain your reasoning, then answer.", _C),
        Template(
            "Use general knowledge to answer this. Think before you decide.\n\n{question}\n\n{options}",
            _C,
        ),
        Template("{question}\n{options}\nWhich facts settle this? Reason first.", _C),
        Template("Is the answer yes or no? {question}\n{options}\nGive the reasoning first.", _C),
        Template("A friend wonders: {question}\n{options}\nHelp them reason it through.", _C),
        Template(
            "{question}\nThink about what you would need to know, then answer.\n{options}", _C
        ),
    ),
    "creak": (
        Template("{question}\n{options}\nCheck it against common knowledge, step by step.", _C),
        Template(
            "Decide the following using everyday knowledge, and explain why.\n{question}\n{options}",
            _C,
        ),
        Template("Fact check:\n{question}\n{options}\nReasoning first, then the verdict.", _C),
        Template(
            "{question}\n{options}\nWhat do you know that confirms or refutes this? Explain, then answer.",
            _C,
        ),
        Template("Think about whether the statement holds up.\n\n{question}\n\n{options}", _C),
        Template("Q: {question}\n{options}\nA: Let's check the claim.", _C),
        Template("{question} Give a short justification before answering.\n{options}", _C),
        Template(
            "Here is something to verify.\n{question}\n{options}\nWalk through the evidence.", _C
        ),
        Template("{question}\n{options}\nExplain your judgement, then give it.", _C),
        Template("Using common sense and no web search, work this out:\n{question}\n{options}", _C),
    ),
    "ecqa": (
        Template("{question}\n{options}\nExplain which choice fits best, then pick it.", _C),
        Template("Pick the most sensible answer and justify it.\n{question}\n{options}", _C),
        Template("Q: {question}\n{options}\nA: Let's weigh the choices.", _C),
        Template("{question}\n{options}\nThink about each choice before deciding.", _C),
        Template("Commonsense question: {question}\n{options}\nReason step by step.", _C),
        Template("{question} Use everyday reasoning to choose.\n{options}", _C),
        Template(
            "Answer the question below by ruling choices in or out.\n\n{question}\n\n{options}", _C
        ),
        Template(
            "{question}\n{options}\nWhy is one answer better than the others? Explain, then answer.",
            _C,
        ),
        Template(
            "Here is a question about everyday situations:\n{question}\n{options}\nGive your reasoning.",
            _C,
        ),
        Template("{question}\n{options}\nA short explanation first, please.", _C),
    ),
    "qasc": (
        Template(
            "{question}\n{options}\nCombine the relevant science facts to find the answer.", _C
        ),
        Template(
            "Answer this science question. Name the facts you use, then answer.\n{question}\n{options}",
            _C,
        ),
        Template("Q: {question}\n{options}\nA: Let's link the facts.", _C),
        Template("{question}\n{options}\nWhich two facts lead to the answer? Explain.", _C),
        Template("Science quiz: {question}\n{options}\nReason it out first.", _C),
        Template(
            "Use what you know about biology, chemistry and physics to answer.\n\n{question}\n\n{options}",
            _C,
        ),
        Template("{question} Chain the facts together before choosing.\n{options}", _C),
        Template(
            "A grade-school science question:\n{question}\n{options}\nShow your reasoning.", _C
        ),
        Template(
            "{question}\n{options}\nStart from a general fact, narrow it down, then answer.", _C
        ),
        Template(
            "Think like a science teacher and explain the answer to this.\n{question}\n{options}",
            _C,
        ),
    ),
    "sensemaking": (
        Template("{question}\n{options}\nExplain what is wrong before answering.", _C),
        Template(
            "Spot the statement that does not make sense, and say why.\n{question}\n{options}", _C
        ),
        Template("Q: {question}\n{options}\nA: Let's test each sentence.", _C),
        Template(
            "{question}\n{options}\nCompare the sentences with how the world works, then decide.",
            _C,
        ),
        Template("Common-sense check: {question}\n{options}\nGive your reasoning.", _C),
        Template(
            "{question} Think about which one describes something impossible or absurd.\n{options}",
            _C,
        ),
        Template(
            "Read the sentences carefully.\n\n{question}\n\n{options}\n\nReason first, then answer.",
            _C,
        ),
        Template("{question}\n{options}\nWhat makes one of them odd? Explain, then answer.", _C),
        Template(
            "A teacher asks the class this.\n{question}\n{options}\nWork it out step by step.", _C
        ),
        Template("{question}\n{options}\nJustify your choice.", _C),
    ),
    "aqua": (
        Template("{question}\n{options}\nWork out the math, then choose.", _C),
        Template(
            "Solve the problem and select the matching option. Show your steps.\n{question}\n{options}",
            _C,
        ),
        Template("Q: {question}\n{options}\nA: Let's do the calculation.", _C),
        Template(
            "{question}\n{options}\nCompute the value first, then find it among the choices.", _C
        ),
        Template("Quantitative reasoning: {question}\n{options}\nThink step by step.", _C),
        Template("{question} Estimate, calculate, and check against the options.\n{options}", _C),
        Template(
            "Here is a multiple-choice math question.\n\n{question}\n\n{options}\n\nExplain your solution.",
            _C,
        ),
        Template("{question}\n{options}\nWrite out the equations you need, then answer.", _C),
        Template("An exam question:\n{question}\n{options}\nSolve it carefully.", _C),
        Template("{question}\n{options}\nA quick derivation first, please.", _C),
    ),
}

# Direct-answer templates (optional variants; Flan's CoT collection has none).
DIRECT_TEMPLATES: Mapping[str, tuple[Template, ...]] = {
    "gsm8k": (
        Template("{question}\nGive only the final number.", _A),
        Template("Solve: {question}", _A),
        Template("Q: {question}\nA:", _A),
        Template("Math problem: {question}\nWhat is the result?", _A),
        Template("{question}\nAnswer with a number.", _A),
    ),
    "strategyqa": (
        Template("{question}\n{options}", _A),
        Template("Answer yes or no: {question}\n{options}", _A),
        Template("Q: {question}\n{options}\nA:", _A),
        Template("{question}\n{options}\nJust the answer, please.", _A),
        Template("Use what you know to answer: {question}\n{options}", _A),
    ),
    "creak": (
        Template("{question}\n{options}", _A),
        Template("Is this right? {question}\n{options}", _A),
        Template("Q: {question}\n{options}\nA:", _A),
        Template("{question}\n{options}\nGive your verdict only.", _A),
        Template("Judge this with common sense.\n{question}\n{options}", _A),
    ),
    "ecqa": (
        Template("{question}\n{options}", _A),
        Template("Pick the best answer.\n{question}\n{options}", _A),
        Template("Q: {question}\n{options}\nA:", _A),
        Template("{question}\n{options}\nWhich one fits?", _A),
        Template("Commonsense question: {question}\n{options}", _A),
    ),
    "qasc": (
        Template("{question}\n{options}", _A),
        Template("Science question: {question}\n{options}", _A),
        Template("Q: {question}\n{options}\nA:", _A),
        Template("{question}\n{options}\nChoose the correct answer.", _A),
        Template("Answer from your science knowledge.\n{question}\n{options}", _A),
    ),
    "sensemaking": (
        Template("{question}\n{options}", _A),
        Template("Which one does not make sense?\n{question}\n{options}", _A),
        Template("Q: {question}\n{options}\nA:", _A),
        Template("{question}\n{options}\nAnswer briefly.", _A),
        Template("Common-sense check.\n{question}\n{options}", _A),
    ),
    "aqua": (
        Template("{question}\n{options}", _A),
        Template("Choose the right value.\n{question}\n{options}", _A),
        Template("Q: {question}\n{options}\nA:", _A),
        Template("{question}\n{options}\nWhich option is correct?", _A),
        Template("Math question: {question}\n{options}", _A),
    ),
}

_LETTERED = re.compile(r"^\(([A-Z])\)\s*(.*)$")
_LETTER_ANSWER = re.compile(r"^\(([A-Z])\)$")


def parse_cot_record(record: Record, dataset: str, default_options: Sequence[str] = ()) -> dict:
    """Splits the "Options:" list off the question (kept whole in `question`, cut in `stem`)
    and resolves letter answers to option text.

    Raises ValueError (turned into an error naming file and line by the reader) when a letter
    answer names no listed option.
    """
    question = record["question"].strip()
    answer = record["answer"].strip()
    stem, found, listed = question.partition("\nOptions:\n")
    options: list[str] = []
    if found:
        for line in listed.split("\n"):
            line = line.strip()
            if line.startswith("- "):
                line = line[2:].strip()
            if line:
                options.append(line)
        lettered = [_LETTERED.match(o) for o in options]
        letter = _LETTER_ANSWER.match(answer)
        if options and all(lettered) and letter:
            position = ord(letter.group(1)) - ord("A")
            if position >= len(options):
                raise ValueError(
                    f"answer {answer!r} names no listed option ({len(options)} listed)"
                )
            options = [m.group(2).strip() for m in lettered]
            answer = options[position]
    else:
        options = list(default_options)
    return {
        "id": f"{dataset}-{record.line}",
        "question": question,
        "stem": stem.strip(),
        "options": options,
        "answer": answer,
        "chain_of_thought": record["chain_of_thought"].strip(),
    }


def in_validation(example_id: str, fraction: float) -> bool:
    """Stable split membership from a SHA-256 of the id."""
    bucket = int.from_bytes(hashlib.sha256(example_id.encode()).digest()[:8], "big") % 1_000_000
    return bucket < fraction * 1_000_000


def load_cot_dataset(
    data_dir: str | os.PathLike[str],
    dataset: str,
    *,
    skip_malformed: bool = False,
    report: SkipReport | None = None,
) -> list[dict]:
    """Reads and validates `<data_dir>/<dataset>_train.tsv` into field dicts."""
    path = os.path.join(os.fspath(data_dir), f"{dataset}_train.tsv")
    records = read_tsv(
        path,
        columns=COLUMNS,
        non_empty=COLUMNS,
        unescape_newlines=True,
        transform=lambda r: parse_cot_record(r, dataset, DATASETS.get(dataset, ())),
        skip_malformed=skip_malformed,
        report=report,
    )
    return [dict(r.fields) for r in records]


def _columns(examples: Sequence[Mapping]) -> dict[str, tf.Tensor | tf.RaggedTensor]:
    columns: dict[str, tf.Tensor | tf.RaggedTensor] = {
        name: tf.constant([e[name] for e in examples], tf.string, shape=[len(examples)])
        for name in FIELDS
    }
    columns["options"] = tf.RaggedTensor.from_row_lengths(
        tf.constant([o for e in examples for o in e["options"]], tf.string),
        tf.constant([len(e["options"]) for e in examples], tf.int64),
    )
    return columns


def columns_data_source(splits: Mapping[str, Sequence[Mapping]]) -> seqio.FunctionDataSource:
    """In-memory examples as a SeqIO source, sliced from column tensors.

    `sources.records_data_source` yields through a Python generator; slicing tensors is several
    times faster, which matters for mixtures that fill one shuffle buffer per task.
    """

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # One in-memory table per split; SeqIO shuffles examples.
        if split not in splits:
            raise ValueError(f"unknown split {split!r}; this source offers {list(splits)}")
        return tf.data.Dataset.from_tensor_slices(_columns(splits[split]))

    return seqio.FunctionDataSource(
        dataset_fn=dataset_fn,
        splits=tuple(splits),
        num_input_examples={name: len(rows) for name, rows in splits.items()},
    )


@dataclasses.dataclass(frozen=True)
class FlanCotRegistration:
    """What `register_flan_cot` registered."""

    tasks: Mapping[str, Mapping[str, str]]  # dataset -> variant suffix -> task name
    mixtures: tuple[str, ...]
    report: SkipReport
    specs: Mapping[str, FlanTaskSpec]
    train_counts: Mapping[str, int]  # base task name -> train examples (the rates' counts)


def cot_spec(
    name: str, dataset: str, source: seqio.DataSource, few_shot: FewShotConfig, direct: bool
) -> FlanTaskSpec:
    """The `FlanTaskSpec` of one CoT dataset."""
    return FlanTaskSpec(
        name=name,
        source=source,
        fields=FIELDS,
        templates=DIRECT_TEMPLATES[dataset],
        cot_templates=COT_TEMPLATES[dataset],
        inversions=cot_inversions(),
        stem_fields={"question": "stem"},
        few_shot=few_shot,
        variants=COT_VARIANTS + INVERTED_VARIANTS + (DIRECT_VARIANTS if direct else ()),
    )


def register_flan_cot(
    data_dir: str | os.PathLike[str],
    *,
    prefix: str = "flan_cot",
    datasets: Sequence[str] = tuple(DATASETS),
    vocabulary: seqio.Vocabulary | None = None,
    skip_malformed: bool = False,
    validation_fraction: float = 0.05,
    few_shot: FewShotConfig | None = None,
    cap: int | None = FLAN_COT_CAP,
    temperature: float = 1.0,
    inverted_rate: float = mixtures.DEFAULT_INVERTED_RATE,
    zero_shot_share: float = 0.5,
    direct_answer_share: float = 0.0,
    overwrite: bool = False,
) -> FlanCotRegistration:
    """Registers the CoT datasets' Flan variants and the `<prefix>*` mixtures.

    Args:
      data_dir: folder with `<dataset>_train.tsv` files.
      prefix: prefix of every task and mixture name.
      datasets: which datasets (default: all seven).
      vocabulary: of the features and the few-shot length count (default ByteVocabulary;
        pass `seqio.SentencePieceVocabulary(path)` for a T5 model).
      skip_malformed: count and skip bad lines (see the returned report) instead of raising.
      validation_fraction: share of lines held out as the `validation` split.
      few_shot: the few-shot settings (default: Flan's, `FewShotConfig()`).
      cap / temperature: examples-proportional rates (Flan: cap 100k, temperature 1; a cap of
        5000 keeps the larger datasets from dominating a small mixture).
      inverted_rate: inverted tasks' rate relative to their originals (Flan: 0.3).
      zero_shot_share: `<prefix>_zs`'s share against `<prefix>_fs` (Flan: 1:1).
      direct_answer_share: the share of the direct-answer sub-mixture `<prefix>_direct`
        (0: not registered, Flan's CoT shape).
      overwrite: replace tasks/mixtures already registered under these names.
    """
    if not 0.0 <= zero_shot_share <= 1.0 or not 0.0 <= direct_answer_share < 1.0:
        raise ValueError(
            f"zero_shot_share={zero_shot_share} must be in [0, 1] and "
            f"direct_answer_share={direct_answer_share} in [0, 1)"
        )
    report = SkipReport()
    tasks: dict[str, dict[str, str]] = {}
    specs: dict[str, FlanTaskSpec] = {}
    counts: dict[str, int] = {}
    direct = direct_answer_share > 0
    for dataset in datasets:
        if dataset not in DATASETS:
            raise ValueError(f"unknown Flan CoT dataset {dataset!r}; known: {', '.join(DATASETS)}")
        examples = load_cot_dataset(data_dir, dataset, skip_malformed=skip_malformed, report=report)
        splits = {"train": [], "validation": []}
        for example in examples:
            held_out = in_validation(example["id"], validation_fraction)
            splits["validation" if held_out else "train"].append(example)
        spec = cot_spec(
            f"{prefix}_{dataset}",
            dataset,
            columns_data_source(splits),
            few_shot or FewShotConfig(),
            direct,
        )
        tasks[dataset] = register_flan_variants(spec, vocabulary=vocabulary, overwrite=overwrite)
        specs[dataset] = spec
        counts[spec.name] = len(splits["train"])
    if report.num_skipped:
        logger.warning("Flan CoT data in %s: %s", data_dir, report.summary())

    common = {"cap": cap, "temperature": temperature, "overwrite": overwrite}
    zero_shot = mixtures.register_collection_mixture(
        f"{prefix}_zs",
        counts,
        prompt_settings={"cot_zs": 1.0},
        inverted_rate=inverted_rate,
        inverted_settings={"inverted": 1.0},
        **common,
    )
    few = mixtures.register_collection_mixture(
        f"{prefix}_fs",
        counts,
        prompt_settings={"cot_fs": 0.5, "cot_fs_mix": 0.5},
        inverted_rate=inverted_rate,
        inverted_settings={"inverted_fs": 0.5, "inverted_fs_mix": 0.5},
        **common,
    )
    weights = {
        zero_shot.name: (1 - direct_answer_share) * zero_shot_share,
        few.name: (1 - direct_answer_share) * (1 - zero_shot_share),
    }
    if direct:
        direct_mixture = mixtures.register_collection_mixture(
            f"{prefix}_direct",
            counts,
            prompt_settings=mixtures.FLAN_PROMPT_SETTINGS,
            inverted_rate=None,
            **common,
        )
        weights[direct_mixture.name] = direct_answer_share
    top = mixtures.register_weighted_mixture(
        prefix, {k: v for k, v in weights.items() if v > 0}, overwrite=overwrite
    )
    return FlanCotRegistration(
        tasks=tasks,
        mixtures=(*weights, top.name),
        report=report,
        specs=specs,
        train_counts=counts,
    )


if os.environ.get(DATA_DIR_ENV):
    register_flan_cot(os.environ[DATA_DIR_ENV])
