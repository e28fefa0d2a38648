"""The tuned model's tasks: β's stored rationales injected into τ's inputs, and FIAT's ablations.

For a base task whose source yields raw fields with a unique `id` per example,
`register_fiat_variants` registers ordinary SeqIO tasks (so T5X or any SeqIO consumer trains
on them):

  <task>_fiat            Iτ + input + β's rationale -> label          (FIAT, Algorithm 1)
  <task>_wo_cot          Iτ + input -> label                           (w/o CoT-augmented tuning)
  <task>_wo_instruction  input -> label                                (w/o instruction-augmented)
  <task>_distilled_cot   Distilled CoT (Hsieh et al. 2023): on the train split each example
                         gives "[label] input -> label" (loss_weight α) and
                         "[rationale] input -> rationale" (loss_weight 1-α); other splits give
                         the label rows only (no β at test time).

With `rank_labels` (classification tasks: the label strings, e.g. XOR-AttriQA's "yes"/"no"),
also evaluation-only rank-classification tasks and one evaluation mixture per variant, so a
single evaluation of `<task>_<v>_eval` reports the variant's accuracy (decoded, from
`<task>_<v>`) and AUC-PR (scored, from `<task>_<v>_rank`):
  <task>_<v>_rank        v in fiat, wo_cot, wo_instruction: the variant's inputs, each example
                         once per candidate label (targets = candidate, gold in `rank_gold`);
                         only score metrics, so its keys never collide with the variant's.
  <task>_<v>_eval        mixture of <task>_<v> and <task>_<v>_rank, equal rates.

Rationales are joined by example id from a `RationaleStore` when a dataset is built (not at
registration), for the split being read: every split of `<task>_fiat` needs β's rationales,
since FIAT's inference (Algorithm 2) runs β on test inputs too. A missing rationale raises
`MissingRationaleError` naming the count and the ids, or, with `on_missing="skip"`, drops the
example and logs the count (also kept in `JoinReport`s on the source).

Per-example weights travel as a float32 `loss_weight` feature. SeqIO's EncDecFeatureConverter
drops extra features, so a trainer applies them with
`fiat_t5x.training.example_weights.WeightedEncDecFeatureConverter` (decoder_loss_weights ×
loss_weight). With the default α = 0.5 both kinds weigh the same and unweighted training
optimises the same objective up to a constant factor of 2.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

import gin
from fiat_t5x.data import metrics
from fiat_t5x.data.registration import replace_mixture
from fiat_t5x.data.templates import parse_template, render_parts_tf
from fiat_t5x.rationales.store import RationaleStore
from fiat_t5x.rationales.tuning_prompt import RATIONALE_FIELD, TuningPrompt, load_tuning_prompt

logger = logging.getLogger(__name__)

STORE_ENV = "FIAT_RATIONALE_STORE"
ON_MISSING = ("error", "skip")
VARIANTS = ("fiat", "wo_cot", "wo_instruction", "distilled_cot")
# Variants whose targets are the label alone, so rank classification applies to them.
RANKED_VARIANTS = ("fiat", "wo_cot", "wo_instruction")
LABEL_KIND = "label"
RATIONALE_KIND = "rationale"
LISTED_IDS = 10


class MissingRationaleError(ValueError):
    """Examples of a split have no rationale in the store; the message lists count and ids."""

    def __init__(self, message: str, missing_ids: Sequence[str]) -> None:
        super().__init__(message)
        self.missing_ids = list(missing_ids)


@gin.configurable
def rationale_store(directory: str | None = None) -> str:
    """The store directory the rationale-injecting tasks read (gin, or $FIAT_RATIONALE_STORE).

    Bound in the dataset gin files: `rationale_store.directory = %RATIONALE_STORE`.
    """
    directory = directory or os.environ.get(STORE_ENV)
    if not directory:
        raise ValueError(
            "no rationale store given for the FIAT tasks: bind "
            "`rationale_store.directory = '/path/to/store'` in gin (RATIONALE_STORE in "
            f"gin/fiat/*.gin), set ${STORE_ENV}, or pass store_dir= to register_fiat_variants"
        )
    return directory


@gin.configurable
def eval_mixture_or_task(task: str) -> str:
    """The evaluation mixture `<task>_eval` when one is registered over `task`, else `task`.

    Bound in gin as the eval dataset's name (gin/fiat/xor_attriqa.gin's
    EVAL_MIXTURE_OR_TASK_NAME), so each FIAT variant or ablation that trains on `<task>` is
    evaluated on its accuracy + AUC-PR mixture, and any other task on itself.
    """
    mixture = f"{task}_eval"
    if mixture in seqio.MixtureRegistry.names():
        members = [t.name for t in seqio.get_mixture_or_task(mixture).tasks]
        if task in members:
            return mixture
    return task


@dataclasses.dataclass
class JoinReport:
    """What joining one split did: how many examples had a rationale, which ids were skipped."""

    split: str
    total: int
    joined: int
    skipped_ids: list[str]


def _decode(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _missing_message(
    task: str,
    split: str,
    store_dir: str,
    store: RationaleStore,
    store_task: str,
    missing: list[str],
    total: int,
) -> str:
    failures = store.failures(store_task, split)
    failed = [i for i in missing if i in failures]
    listed = ", ".join(missing[:LISTED_IDS]) + (
        f", ... ({len(missing) - LISTED_IDS} more)" if len(missing) > LISTED_IDS else ""
    )
    detail = ""
    if failed:
        kinds = sorted({failures[i].kind for i in failed})
        detail = f" {len(failed)} of them have recorded β failures ({', '.join(kinds)})."
    return (
        f"task {task!r} split {split!r}: {len(missing)} of {total} examples have no rationale in "
        f"the store {store_dir} (key {store_task}/{split}); missing ids: {listed}.{detail} "
        f"Generate them with `fiat-t5x rationales generate --store {store_dir} --task {store_task} "
        f"--split {split} ...`, or register the task with on_missing='skip' to drop and count them."
    )


# Task name -> the join of its source, for every task `register_fiat_variants` registered:
# what a run's start-up check (`run_checks.RationaleChecks`) looks up.
_JOINS: dict[str, RationaleJoin] = {}


def rationale_joins(mixture_or_task: str) -> list[RationaleJoin]:
    """The rationale joins of the task, or of every task of the mixture (none: reads none)."""
    task_or_mixture = seqio.get_mixture_or_task(mixture_or_task)
    tasks = (
        task_or_mixture.tasks if isinstance(task_or_mixture, seqio.Mixture) else [task_or_mixture]
    )
    return [_JOINS[t.name] for t in tasks if t.name in _JOINS]


class RationaleJoin:
    """Adds each example's stored rationale as the `rationale` feature, per split.

    Args:
      task: the registered task's name (for messages).
      store_task: the store key's task part (the name rationales were generated under).
      store_dir: a directory; a callable giving one when a dataset is built (the demo uses it
        to fill its store on first use); None asks `rationale_store()` (gin / env) then.
      on_missing: "error" (MissingRationaleError) or "skip" (drop the example, count it).
      base_source: the source whose examples are joined (for `missing_ids` before a run).
      splits: the splits it joins (None: every split; Distilled CoT joins only its train split).
    """

    def __init__(
        self,
        task: str,
        store_task: str,
        store_dir: str | Callable[[], str] | None,
        on_missing: str,
        base_source: seqio.DataSource | None = None,
        splits: Sequence[str] | None = None,
    ) -> None:
        if on_missing not in ON_MISSING:
            raise ValueError(f"on_missing={on_missing!r} must be one of {ON_MISSING}")
        self.task = task
        self.store_task = store_task
        self.store_dir = store_dir
        self.on_missing = on_missing
        self.base_source = base_source
        self.splits = None if splits is None else tuple(splits)
        self.reports: dict[str, JoinReport] = {}

    def reads(self, split: str) -> bool:
        """Whether datasets of `split` need rationales from this join."""
        return self.splits is None or split in self.splits

    def directory(self) -> str:
        """The store this join reads."""
        if callable(self.store_dir):
            return self.store_dir()
        return self.store_dir or rationale_store()

    def texts(self, split: str) -> tuple[str, RationaleStore, dict[str, str]]:
        directory = self.directory()
        store = RationaleStore.open_readonly(directory)
        return directory, store, store.texts(self.store_task, split)

    def missing_ids(self, split: str, store: RationaleStore) -> tuple[list[str], int]:
        """(ids of `split` without a rationale in `store`, examples in the split)."""
        if self.base_source is None:
            raise ValueError(f"{self.task}: RationaleJoin has no base_source to read ids from")
        dataset = self.base_source.get_dataset(split=split, shuffle=False)
        ids = [_decode(i) for i in dataset.map(lambda ex: ex["id"]).as_numpy_iterator()]
        texts = store.texts(self.store_task, split)
        return [i for i in ids if i not in texts], len(ids)

    def missing_message(
        self, split: str, store: RationaleStore, missing: list[str], total: int
    ) -> str:
        return _missing_message(
            self.task, split, str(store.directory), store, self.store_task, missing, total
        )

    def __call__(self, dataset: tf.data.Dataset, split: str) -> tf.data.Dataset:
        directory, store, texts = self.texts(split)
        ids = [_decode(i) for i in dataset.map(lambda ex: ex["id"]).as_numpy_iterator()]
        missing = [i for i in ids if i not in texts]
        self.reports[split] = JoinReport(split, len(ids), len(ids) - len(missing), [])
        if missing and self.on_missing == "error":
            raise MissingRationaleError(
                _missing_message(
                    self.task, split, directory, store, self.store_task, missing, len(ids)
                ),
                missing,
            )
        if missing:
            self.reports[split].skipped_ids = missing
            logger.warning(
                "task %s split %s: skipping %d of %d examples without a rationale in %s "
                "(first ids: %s)",
                self.task,
                split,
                len(missing),
                len(ids),
                directory,
                missing[:LISTED_IDS],
            )
        present = sorted(set(ids) - set(missing))
        if not present:
            raise MissingRationaleError(
                f"task {self.task!r} split {split!r}: none of the {len(ids)} examples has a "
                f"rationale in {directory} (key {self.store_task}/{split})",
                missing,
            )
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(present), tf.constant([texts[i] for i in present])
            ),
            default_value="\x00missing",
        )
        if missing:
            dataset = dataset.filter(lambda ex: table.lookup(ex["id"]) != "\x00missing")
        return dataset.map(lambda ex: {**ex, RATIONALE_FIELD: table.lookup(ex["id"])})


def _derived_source(
    base: seqio.DataSource, transform: Callable[[tf.data.Dataset, str], tf.data.Dataset]
) -> seqio.FunctionDataSource:
    """A source reading `base` and applying `transform(dataset, split)` (it needs the split)."""

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        return transform(base.get_dataset(split=split, shuffle=shuffle_files, seed=seed), split)

    counts = {}
    for split in base.splits:
        try:
            counts[split] = base.num_input_examples(split)
        except (ValueError, NotImplementedError, KeyError):
            continue
    return seqio.FunctionDataSource(
        dataset_fn, splits=tuple(base.splits), num_input_examples=counts or None
    )


def _literal(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _render(template: str):
    parts = parse_template(template)
    return lambda example: render_parts_tf(parts, example)


def inputs_preprocessor(inputs_template: str, target_template: str):
    """A SeqIO preprocessor writing `inputs`/`targets` from templates over the example's fields."""
    render_inputs, render_targets = _render(inputs_template), _render(target_template)

    @seqio.map_over_dataset
    def render(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {**example, "inputs": render_inputs(example), "targets": render_targets(example)}

    return render


def fiat_inputs_template(prompt: TuningPrompt) -> str:
    """One template equal to `TuningPrompt.fiat_inputs` (Iτ and separators as literals)."""
    sep = _literal(prompt.separator)
    return (
        _literal(prompt.instruction) + sep + prompt.input_template + sep + prompt.rationale_template
    )


def wo_cot_inputs_template(prompt: TuningPrompt) -> str:
    return _literal(prompt.instruction) + _literal(prompt.separator) + prompt.input_template


def distilled_preprocessor(prompt: TuningPrompt):
    """Rows of kind "label" get label_prefix + input -> label, "rationale" rows -> rationale."""
    label_input = _render(_literal(prompt.label_prefix) + prompt.input_template)
    rationale_input = _render(_literal(prompt.rationale_prefix) + prompt.input_template)
    label_target = _render(prompt.target_template)

    @seqio.map_over_dataset
    def render(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        is_label = tf.equal(example["distill_kind"], LABEL_KIND)
        inputs = tf.where(is_label, label_input(example), rationale_input(example))
        targets = tf.where(is_label, label_target(example), example[RATIONALE_FIELD])
        return {**example, "inputs": inputs, "targets": targets}

    return render


def distilled_rows(join: RationaleJoin, alpha: float, train_split: str):
    """The split transform of the Distilled CoT source (both kinds on the train split)."""

    def transform(dataset: tf.data.Dataset, split: str) -> tf.data.Dataset:
        if split != train_split:
            return dataset.map(
                lambda ex: {
                    **ex,
                    RATIONALE_FIELD: tf.constant(""),
                    "distill_kind": tf.constant(LABEL_KIND),
                    "loss_weight": tf.constant(alpha, tf.float32),
                }
            )

        def expand(example):
            rows = {k: tf.stack([v, v]) for k, v in example.items()}
            rows["distill_kind"] = tf.constant([LABEL_KIND, RATIONALE_KIND])
            rows["loss_weight"] = tf.constant([alpha, 1.0 - alpha], tf.float32)
            return tf.data.Dataset.from_tensor_slices(rows)

        return join(dataset, split).flat_map(expand)

    return transform


@dataclasses.dataclass(frozen=True)
class FiatTasks:
    """Names of the registered variants, and the joins (whose reports count skipped ids).

    `rank` and `eval_mixtures` map a variant of RANKED_VARIANTS to its rank task and its
    evaluation mixture; both are empty when registered without `rank_labels`.
    """

    fiat: str
    wo_cot: str
    wo_instruction: str
    distilled_cot: str
    prompt: TuningPrompt
    joins: Mapping[str, RationaleJoin]
    rank: Mapping[str, str] = dataclasses.field(default_factory=dict)
    eval_mixtures: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def names(self) -> dict[str, str]:
        return {v: getattr(self, v) for v in VARIANTS}


def rank_candidates_preprocessor(labels: Sequence[str]):
    """`metrics.expand_rank_candidates` over `labels`: each example once per candidate label."""
    candidates = tuple(labels)

    def expand(dataset: tf.data.Dataset) -> tf.data.Dataset:
        return metrics.expand_rank_candidates(dataset, candidates)

    return expand


def _rank_metric_fns(
    labels: Sequence[str] | None, metric_fns: Sequence[Callable[..., Any]] | None
) -> tuple[Callable[..., Any], ...]:
    """The rank tasks' score metrics, checked against the labels they are used with."""
    if labels is None:
        if metric_fns is not None:
            raise ValueError(
                "register_fiat_variants: rank_metric_fns given without rank_labels; pass the "
                "candidate labels too (e.g. rank_labels=('yes', 'no'))"
            )
        return ()
    if isinstance(labels, str) or len(set(labels)) < 2 or len(set(labels)) != len(labels):
        raise ValueError(
            f"register_fiat_variants: rank_labels={labels!r} must be two or more distinct "
            "label strings"
        )
    if metric_fns is not None:
        return tuple(metric_fns)
    if set(labels) != set(metrics.LABELS):
        raise ValueError(
            f"register_fiat_variants: the default rank metric (attribution_rank_classification) "
            f"scores the labels {metrics.LABELS}, not rank_labels={tuple(labels)}; pass "
            "rank_metric_fns for other labels"
        )
    return (metrics.attribution_rank_classification,)


def _add_task(name: str, **kwargs: Any) -> str:
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, **kwargs)
    return name


def register_fiat_variants(
    base_task: str,
    tuning_prompt: TuningPrompt | str | pathlib.Path,
    *,
    prefix: str | None = None,
    store_task: str | None = None,
    store_dir: str | Callable[[], str] | None = None,
    on_missing: str = "error",
    alpha: float = 0.5,
    train_split: str = "train",
    vocabulary: seqio.Vocabulary | None = None,
    metrics_from: str | None = None,
    rank_labels: Sequence[str] | None = None,
    rank_metric_fns: Sequence[Callable[..., Mapping[str, float]]] | None = None,
) -> FiatTasks:
    """(Re-)registers `<prefix>_fiat`, `_wo_cot`, `_wo_instruction` and `_distilled_cot`.

    Args:
      base_task: a registered task whose source yields the raw fields and a unique `id`.
      tuning_prompt: Iτ, or the path of an Iτ file holding an entry for `base_task`.
      prefix: start of the new names (default: `base_task`).
      store_task: the task name the rationales were generated under (default: `base_task`).
      store_dir: the rationale store (or a callable giving it when data is built); None reads
        `rationale_store()` (gin / env) then.
      on_missing: "error" or "skip" for examples without a rationale.
      alpha: Distilled CoT's weight of the label loss (the rationale loss gets 1 - alpha).
      train_split: the split on which Distilled CoT also yields rationale rows.
      vocabulary: tokenizes inputs and targets (default: the base task's targets vocabulary,
        else bytes).
      metrics_from: task whose postprocessor and metric functions the variants reuse
        (default: `base_task`).
      rank_labels: the candidate label strings (the rendered targets' values); when given,
        also registers `<prefix>_<v>_rank` and the mixtures `<prefix>_<v>_eval` (module doc).
      rank_metric_fns: the rank tasks' SeqIO score metrics (default: XOR-AttriQA's
        `attribution_rank_classification`, AUC-PR of "yes", which needs rank_labels
        {"yes", "no"}). They read `id`, `rank_candidate` and `rank_gold` from the targets,
        which the postprocessor of `metrics_from` must keep (`postprocess_with_metadata`).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"register_fiat_variants: alpha={alpha} must be in [0, 1]")
    rank_metric_fns = _rank_metric_fns(rank_labels, rank_metric_fns)
    base = seqio.get_mixture_or_task(base_task)
    prompt = (
        tuning_prompt
        if isinstance(tuning_prompt, TuningPrompt)
        else load_tuning_prompt(tuning_prompt, base_task)
    )
    prefix = prefix or base_task
    store_task = store_task or base_task
    scored = seqio.get_mixture_or_task(metrics_from or base_task)
    if vocabulary is None:
        feature = base.output_features.get("targets")
        vocabulary = feature.vocabulary if feature is not None else seqio.ByteVocabulary()
    features = {
        "inputs": seqio.Feature(vocabulary, add_eos=True),
        "targets": seqio.Feature(vocabulary, add_eos=True),
    }
    tokenize = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
    common = {
        "output_features": features,
        "postprocess_fn": scored.postprocessor,
        "metric_fns": list(scored.metric_fns),
    }
    names = {v: f"{prefix}_{v}" for v in VARIANTS}
    fiat_join = RationaleJoin(names["fiat"], store_task, store_dir, on_missing, base.source)
    distilled_join = RationaleJoin(
        names["distilled_cot"], store_task, store_dir, on_missing, base.source, (train_split,)
    )
    _add_task(
        names["fiat"],
        source=_derived_source(base.source, fiat_join),
        preprocessors=[
            inputs_preprocessor(fiat_inputs_template(prompt), prompt.target_template),
            *tokenize,
        ],
        **common,
    )
    _add_task(
        names["wo_cot"],
        source=base.source,
        preprocessors=[
            inputs_preprocessor(wo_cot_inputs_template(prompt), prompt.target_template),
            *tokenize,
        ],
        **common,
    )
    _add_task(
        names["wo_instruction"],
        source=base.source,
        preprocessors=[
            inputs_preprocessor(prompt.input_template, prompt.target_template),
            *tokenize,
        ],
        **common,
    )
    _add_task(
        names["distilled_cot"],
        source=_derived_source(base.source, distilled_rows(distilled_join, alpha, train_split)),
        preprocessors=[distilled_preprocessor(prompt), *tokenize],
        **common,
    )
    joins = {names["fiat"]: fiat_join, names["distilled_cot"]: distilled_join}
    for name in VARIANTS:  # a re-registration drops joins of tasks it no longer has
        _JOINS.pop(names[name], None)
    rank: dict[str, str] = {}
    eval_mixtures: dict[str, str] = {}
    if rank_labels is not None:
        templates = {
            "fiat": fiat_inputs_template(prompt),
            "wo_cot": wo_cot_inputs_template(prompt),
            "wo_instruction": prompt.input_template,
        }
        for variant in RANKED_VARIANTS:
            rank[variant] = f"{names[variant]}_rank"
            source = base.source
            if variant == "fiat":
                rank_join = RationaleJoin(
                    rank[variant], store_task, store_dir, on_missing, base.source
                )
                joins[rank[variant]] = rank_join
                source = _derived_source(base.source, rank_join)
            _add_task(
                rank[variant],
                source=source,
                preprocessors=[
                    inputs_preprocessor(templates[variant], prompt.target_template),
                    rank_candidates_preprocessor(rank_labels),
                    *tokenize,
                ],
                output_features=features,
                postprocess_fn=scored.postprocessor,
                metric_fns=list(rank_metric_fns),
            )
            eval_mixtures[variant] = replace_mixture(
                f"{names[variant]}_eval", [names[variant], rank[variant]]
            )
    _JOINS.update(joins)
    return FiatTasks(**names, prompt=prompt, joins=joins, rank=rank, eval_mixtures=eval_mixtures)
