"""Evaluation during and after training.

Two kinds, both over an unpacked, unshuffled, seeded split that every host reads in full:
* teacher-forced: the loss per target token and token accuracy (cheap, every EVAL_PERIOD), over
  every task of a mixture in turn and, for rank-classification tasks, over the gold label's rows
  only (their wrong-label rows exist to be scored, not learnt: `data.label_rows_only`);
* SeqIO: the task's metric functions on decoded predictions (predict metrics) and on target
  scores (score metrics), through `seqio.Evaluator`, which restores example order, decodes
  with the task's vocabulary and applies its postprocessor. Predictions come from the one
  decode path (`fiat_t5x.models.batch_decoder.BatchDecoder`), on the training mesh.

Datasets are built with a fixed seed (`data.EVAL_SEED` unless the config gives one), so
preprocessing that draws at random (Flan templates) gives the same examples every time: the
same checkpoint gets the same metrics from the trainer's periodic eval and from `fiat-t5x eval`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import seqio
import tensorflow as tf

from fiat_t5x.models.batch_decoder import BatchDecoder, mesh_context, to_host
from fiat_t5x.training import data as data_lib
from fiat_t5x.training.optimizers import merge_params
from fiat_t5x.training.train_state import TrainState
from fiat_t5x.training.trainer import Trainer


def _scalar(value: Any) -> float | None:
    value = getattr(value, "value", value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class Evaluation:
    """Teacher-forced and SeqIO evaluation of one task or mixture split.

    Args:
      batch_size: global eval batch (a multiple of the data-parallel size).
      num_examples: cap on examples (None: the whole split).
      decode_method / num_beams: the decoding of predict metrics (`BatchDecoder`).
      run_seqio: also compute the task's metric functions (decoding is slower).
      seed: seed of the datasets' preprocessing (None: `data.EVAL_SEED`).
      feature_converter_cls: as `DatasetConfig.feature_converter_cls` (always unpacked here);
        None is SeqIO's EncDecFeatureConverter.
    """

    def __init__(
        self,
        trainer: Trainer,
        mixture_or_task_name: str,
        task_feature_lengths: Mapping[str, int],
        split: str = "validation",
        batch_size: int = 32,
        use_cached: bool = False,
        num_examples: int | None = None,
        run_seqio: bool = True,
        decode_method: str = "greedy",
        num_beams: int = 4,
        max_decode_length: int | None = None,
        feature_converter_cls: data_lib.FeatureConverterFactory | None = None,
        seed: int | None = data_lib.EVAL_SEED,
    ) -> None:
        self.trainer = trainer
        self.name = mixture_or_task_name
        self.lengths = dict(task_feature_lengths)
        self.split = split
        self.batch_size = batch_size
        self.use_cached = use_cached
        self.num_examples = num_examples
        self.run_seqio = run_seqio
        self.decode_settings = {"method": decode_method, "num_beams": num_beams}
        self.seed = data_lib.EVAL_SEED if seed is None else int(seed)
        self.max_decode_length = max_decode_length or self.lengths["targets"]
        self.feature_converter_cls = feature_converter_cls
        dp = trainer.partitioner.data_parallel_size
        if batch_size % dp:
            raise ValueError(
                f"Evaluation.batch_size={batch_size} must be a multiple of the data-parallel "
                f"size {dp}"
            )
        self._evaluator = None

    # ------------------------------------------------------------- teacher forced

    def teacher_forced(self, state: TrainState, frozen: Any) -> dict[str, float]:
        ds = data_lib.eval_dataset(
            self.name,
            self.lengths,
            self.split,
            self.use_cached,
            self.feature_converter_cls,
            seed=self.seed,
            num_examples=self.num_examples,
        )
        loss_sum = tokens = correct = 0.0
        p = self.trainer.partitioner
        for batch, _ in data_lib.padded_batches(ds, self.batch_size):
            m = jax.device_get(
                self.trainer.eval_step(state, frozen, p.replicated_batch_to_global(batch))
            )
            w = float(m["weight_sum"])
            loss_sum += float(m["loss_per_token"]) * w
            correct += float(m["accuracy"]) * w
            tokens += w
        tokens = max(tokens, 1e-8)
        return {"loss_per_token": loss_sum / tokens, "token_accuracy": correct / tokens}

    # ------------------------------------------------------------- seqio

    def _seqio_evaluator(self) -> seqio.Evaluator:
        if self._evaluator is None:
            self._evaluator = seqio.Evaluator(
                mixture_or_task_name=self.name,
                feature_converter=data_lib.make_feature_converter(
                    self.feature_converter_cls, pack=False
                ),
                eval_split=self.split,
                use_cached=self.use_cached,
                seed=self.seed,
                sequence_length=self.lengths,
                num_examples=self.num_examples,
                shuffle=False,
                async_compute_metrics=False,
            )
        return self._evaluator

    def _batches(self, dataset: tf.data.Dataset):
        """(indices of real rows, global batch) from an enumerated SeqIO dataset."""
        p = self.trainer.partitioner
        for indices, features in dataset.batch(self.batch_size).as_numpy_iterator():
            n = len(indices)
            batch = {}
            for k, v in features.items():
                if n < self.batch_size:
                    v = np.concatenate([v, np.zeros((self.batch_size - n, *v.shape[1:]), v.dtype)])
                batch[k] = v
            yield [int(i) for i in indices], p.replicated_batch_to_global(batch)

    def decoder(self, state: TrainState, frozen: Any) -> BatchDecoder:
        """The decode path over the current parameters (already on the trainer's mesh)."""
        return BatchDecoder(
            self.trainer.model,
            merge_params(state.params, frozen),
            partitioner=self.trainer.partitioner,
            batch_size=self.batch_size,
            max_decode_length=self.max_decode_length,
            **self.decode_settings,
        )

    def predict_fn(self, state: TrainState, frozen: Any):
        decoder = self.decoder(state, frozen)

        def predict(dataset: tf.data.Dataset, model_feature_shapes=None):
            out = []
            for indices, features in dataset.batch(self.batch_size).as_numpy_iterator():
                tokens = decoder.decode(features["encoder_input_tokens"])
                # Fixed-length rows (seqio stacks them; its vocabulary decode stops at EOS).
                out.extend((int(i), tokens[j]) for j, i in enumerate(indices))
            return out

        return predict

    def score_fn(self, state: TrainState, frozen: Any):
        params = merge_params(state.params, frozen)
        model = self.trainer.model

        def score(dataset: tf.data.Dataset, model_feature_shapes=None):
            out = []
            for indices, batch in self._batches(dataset):
                with mesh_context(self.trainer.partitioner):
                    scores = to_host(model.score_batch(params, batch))
                out.extend((i, float(scores[j])) for j, i in enumerate(indices))
            return out

        return score

    def seqio_metrics(self, state: TrainState, frozen: Any, step: int) -> dict[str, float]:
        """{'<task>/<metric>': value} on process 0 ({} on the others)."""
        evaluator = self._seqio_evaluator()
        future, _ = evaluator.evaluate(
            compute_metrics=jax.process_index() == 0,
            step=step,
            predict_fn=self.predict_fn(state, frozen),
            score_fn=self.score_fn(state, frozen),
        )
        if future is None:
            return {}
        results = {}
        for task, metrics in future.result().items():
            for name, value in metrics.items():
                v = _scalar(value)
                if v is not None:
                    results[f"{task}/{name}"] = v
        return results

    def __call__(self, state: TrainState, frozen: Any, step: int | None = None) -> dict[str, float]:
        """All metrics as {'eval/<name>': value}; `step` is the checkpoint's step (default the
        state's)."""
        step = int(jax.device_get(state.step)) if step is None else int(step)
        results = {f"eval/{k}": v for k, v in self.teacher_forced(state, frozen).items()}
        if self.run_seqio:
            results.update(
                {f"eval/{k}": v for k, v in self.seqio_metrics(state, frozen, step).items()}
            )
        logging.info(
            "eval at step %d: %s",
            step,
            ", ".join(f"{k}={v:.4g}" for k, v in sorted(results.items())),
        )
        return results
