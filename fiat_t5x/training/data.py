"""Batches from SeqIO tasks, with a position that survives a restart.

Training batches come from `seqio.get_dataset` through the encoder-decoder feature converter
(packing on by default), repeated forever, shuffled with a fixed seed, and split between hosts
with `seqio.ShardInfo` (each host reads its own shard and builds `batch_size / num_hosts` rows).
The pipeline is deterministic, so its position is just the number of batches consumed: a
restart rebuilds the same pipeline and skips that many batches, giving exactly the batches an
uninterrupted run would have seen.

The feature converter is part of the `DatasetConfig` (gin: `train/data.DatasetConfig.
feature_converter_cls = @example_weights.WeightedEncDecFeatureConverter`), so a task whose
examples carry per-example loss weights (Distilled CoT) trains with them; the default is SeqIO's
`EncDecFeatureConverter`.

Note (as in T5X): with packing or shuffling, which examples share a global batch depends on
the number of hosts; without either, the global batch is the same set of examples for any
number of hosts (host h reads examples h, h+H, ...).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

Batch = dict[str, np.ndarray]
# A FeatureConverter class (or factory) taking `pack=`; e.g. seqio.EncDecFeatureConverter.
FeatureConverterFactory = Callable[..., seqio.FeatureConverter]


def get_task_or_fail(name: str) -> seqio.Task | seqio.Mixture:
    """The registered task/mixture `name`, or a ValueError naming the closest registered ones."""
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        names = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
        raise ValueError(
            f"MIXTURE_OR_TASK_NAME={name!r} is not a registered SeqIO task or mixture. "
            f"Closest registered names: {close or names[:10]}. Import the module that registers "
            "it from your gin file (e.g. `import fiat_tasks.demo`)."
        ) from None


def check_feature_lengths(task: seqio.Task | seqio.Mixture, lengths: Mapping[str, int]) -> None:
    """TASK_FEATURE_LENGTHS must name exactly the task's inputs/targets features."""
    wanted = {"inputs", "targets"}
    if set(lengths) != wanted:
        raise ValueError(
            f"TASK_FEATURE_LENGTHS={dict(lengths)} must have exactly the keys {sorted(wanted)} "
            f"for the encoder-decoder task {task.name!r}"
        )
    missing = wanted - set(task.output_features)
    if missing:
        raise ValueError(f"task {task.name!r} has no output features {sorted(missing)}")


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """One data stream. `batch_size` is global (summed over hosts).

    `feature_converter_cls` turns task features into model features; it is called with
    `pack=pack` (the weighted converter of `fiat_t5x.training.example_weights` needs pack=False).
    """

    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]
    batch_size: int
    split: str = "train"
    shuffle: bool = True
    seed: int | None = 42
    pack: bool = True
    use_cached: bool = False
    feature_converter_cls: FeatureConverterFactory = seqio.EncDecFeatureConverter

    def feature_converter(self) -> seqio.FeatureConverter:
        return make_feature_converter(self.feature_converter_cls, self.pack)


def make_feature_converter(
    factory: FeatureConverterFactory | None, pack: bool
) -> seqio.FeatureConverter:
    """`factory(pack=pack)`; an error that names the gin parameter when that fails."""
    factory = factory or seqio.EncDecFeatureConverter
    try:
        converter = factory(pack=pack)
    except ValueError as e:
        raise ValueError(
            f"DatasetConfig.feature_converter_cls={getattr(factory, '__name__', factory)} "
            f"with pack={pack}: {e}"
        ) from None
    if not isinstance(converter, seqio.FeatureConverter):
        raise TypeError(
            f"DatasetConfig.feature_converter_cls={factory!r} gave {type(converter).__name__}, "
            "not a seqio.FeatureConverter"
        )
    return converter


def _shard_info() -> seqio.ShardInfo:
    import jax  # local: keep data importable without initialising a backend

    return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


def per_host_batch_size(global_batch_size: int, num_hosts: int) -> int:
    if global_batch_size % num_hosts:
        raise ValueError(
            f"BATCH_SIZE={global_batch_size} must be divisible by the number of hosts ({num_hosts})"
        )
    return global_batch_size // num_hosts


class TrainBatches:
    """An endless iterator of per-host numpy batches whose `position` can be checkpointed."""

    def __init__(
        self,
        config: DatasetConfig,
        start_position: int = 0,
        shard_info: seqio.ShardInfo | None = None,
    ) -> None:
        self.config = config
        self.shard_info = shard_info or _shard_info()
        self.position = int(start_position)
        task = get_task_or_fail(config.mixture_or_task_name)
        check_feature_lengths(task, config.task_feature_lengths)
        rows = per_host_batch_size(config.batch_size, self.shard_info.num_shards)
        ds = seqio.get_dataset(
            config.mixture_or_task_name,
            task_feature_lengths=dict(config.task_feature_lengths),
            feature_converter=config.feature_converter(),
            dataset_split=config.split,
            use_cached=config.use_cached,
            shuffle=config.shuffle,
            num_epochs=None,
            shard_info=self.shard_info if self.shard_info.num_shards > 1 else None,
            seed=config.seed,
            verbose=False,
        )
        ds = ds.batch(rows, drop_remainder=True)
        if self.position:
            logging.info("data: skipping %d batches to resume the pipeline", self.position)
            ds = ds.skip(self.position)
        options = tf.data.Options()
        options.deterministic = True
        ds = ds.with_options(options).prefetch(tf.data.AUTOTUNE)
        self._iterator = ds.as_numpy_iterator()

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        batch = next(self._iterator)
        self.position += 1
        return {k: np.asarray(v) for k, v in batch.items()}


# The seed of evaluation and inference datasets when the config gives none (SeqIO's Evaluator
# default): preprocessing that draws at random (Flan templates, few-shot exemplars) then gives
# the same examples on every run, so a checkpoint's eval metrics are reproducible.
EVAL_SEED = 42
# Features of rank-classification rows (`fiat_t5x.data.metrics.expand_rank_candidates`): the
# candidate label of the row and the gold label of its example.
RANK_CANDIDATE, RANK_GOLD = "rank_candidate", "rank_gold"


def leaf_tasks(mixture_or_task_name: str) -> list[seqio.Task]:
    """The tasks of a mixture (recursively), or the task itself."""
    provider = get_task_or_fail(mixture_or_task_name)
    if isinstance(provider, seqio.Mixture):
        return list(provider.tasks)
    return [provider]


def label_rows_only(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Drops the rows of a rank-classification task whose target is a wrong candidate label
    (they are there to be scored, not learnt); other datasets pass unchanged."""
    if RANK_CANDIDATE not in ds.element_spec or RANK_GOLD not in ds.element_spec:
        return ds
    return ds.filter(lambda ex: tf.equal(ex[RANK_CANDIDATE], ex[RANK_GOLD]))


def eval_dataset(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    split: str,
    use_cached: bool = False,
    feature_converter_cls: FeatureConverterFactory | None = None,
    *,
    seed: int | None = EVAL_SEED,
    num_examples: int | None = None,
) -> tf.data.Dataset:
    """Teacher-forced evaluation rows: every task of the mixture in turn (each example once, as
    `seqio.Evaluator` reads them, up to `num_examples` per task), unpacked, unshuffled, one
    epoch, seeded, and label rows only (see `label_rows_only`). Every host reads it in full."""
    task = get_task_or_fail(mixture_or_task_name)
    check_feature_lengths(task, task_feature_lengths)
    converter = make_feature_converter(feature_converter_cls, pack=False)
    lengths = dict(task_feature_lengths)
    parts = []
    for leaf in leaf_tasks(mixture_or_task_name):
        if split not in leaf.splits:
            continue
        ds = leaf.get_dataset(
            lengths,
            split=split,
            use_cached=use_cached,
            shuffle=False,
            num_epochs=1,
            seed=EVAL_SEED if seed is None else seed,
        )
        if num_examples:
            ds = ds.take(num_examples)
        parts.append(converter(label_rows_only(ds), lengths))
    if not parts:
        raise ValueError(f"{mixture_or_task_name!r} has no task with a split {split!r}")
    dataset = parts[0]
    for part in parts[1:]:
        dataset = dataset.concatenate(part)
    return dataset


def padded_batches(ds: tf.data.Dataset, batch_size: int) -> Iterator[tuple[Batch, int]]:
    """(batch, number of real rows); the last batch is padded with all-zero rows so every
    batch has the same shape (one compile). Zero rows have zero loss weight."""
    for batch in ds.batch(batch_size).as_numpy_iterator():
        n = len(next(iter(batch.values())))
        if n < batch_size:
            batch = {
                k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)])
                for k, v in batch.items()
            }
        yield {k: np.asarray(v) for k, v in batch.items()}, n


def count_tokens(batch: Mapping[str, Any]) -> tuple[int, int]:
    """(non-padding encoder tokens, non-padding decoder tokens) of a batch."""
    return (
        int(np.count_nonzero(batch["encoder_input_tokens"])),
        int(np.count_nonzero(batch["decoder_target_tokens"])),
    )
