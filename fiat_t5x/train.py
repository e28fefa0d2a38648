"""`python -m fiat_t5x.train --gin_file=gin/runs/finetune.gin --gin.MODEL_DIR="'/tmp/run'" ...`

Fine-tunes a model (LoRA by default) on a SeqIO task or mixture, with periodic evaluation,
orbax checkpoints and exact resumption: run the same command again and it continues from the
newest intact checkpoint in MODEL_DIR (a damaged one is moved aside and its step trained and
saved again; checkpoints of another configuration stop the run with the differences named).
SIGTERM saves a checkpoint and exits with status 0. TRAIN_STEPS counts this run's steps from 0,
unlike T5X, which counts from INITIAL_CHECKPOINT_PATH's step.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax

from fiat_t5x import storage
from fiat_t5x.data import vocab_coverage
from fiat_t5x.training import data as data_lib
from fiat_t5x.training import distributed, gin_cli, truncation
from fiat_t5x.training import eval_records as records_lib
from fiat_t5x.training import optimizers as optimizers_lib
from fiat_t5x.training.checkpointing import (
    CheckpointManager,
    CheckpointMismatch,
    PreemptionWatcher,
)
from fiat_t5x.training.evaluation import Evaluation
from fiat_t5x.training.metrics_writer import MetricsWriter
from fiat_t5x.training.partitioning import Partitioner
from fiat_t5x.training.train_state import TrainState
from fiat_t5x.training.trainer import LoopHooks, Trainer, train_loop

# A start-up check: (MODEL_DIR, the dataset configs the run reads) -> None, raising to refuse.
# A start check raises on a bad run, and may return what to record once the run starts.
StartCheck = Callable[[str, Sequence[data_lib.DatasetConfig]], Callable[[], None] | None]

REQUIRED_MACROS = (
    "MODEL_DIR",
    "MIXTURE_OR_TASK_NAME",
    "TASK_FEATURE_LENGTHS",
    "TRAIN_STEPS",
    "BATCH_SIZE",
    "INITIAL_CHECKPOINT_PATH",
)


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    frozen: Any
    history: list[dict[str, float]]
    trainer: Trainer
    start_step: int


def check_task(config: data_lib.DatasetConfig) -> None:
    """Unknown task names and bad feature lengths fail before any checkpoint is read."""
    try:
        task = data_lib.get_task_or_fail(config.mixture_or_task_name)
        data_lib.check_feature_lengths(task, config.task_feature_lengths)
        if config.split not in task.splits:
            raise ValueError(
                f"task {task.name!r} has no split {config.split!r}; it has {list(task.splits)}"
            )
    except ValueError as e:
        raise gin_cli.UsageError(str(e)) from None


def initial_checkpoint_step(path: str | None) -> int | None:
    """The step in a T5X-style checkpoint path (`.../checkpoint_1184000`), else None."""
    if not path:
        return None
    match = re.fullmatch(r"checkpoint_(\d+)", os.path.basename(os.path.normpath(str(path))))
    return int(match.group(1)) if match else None


def explain_train_steps(train_steps: int, initial_checkpoint_path: str | None) -> None:
    """A start-up line when the base has a step: TRAIN_STEPS counts this run's steps from 0,
    where T5X counts from the checkpoint's step (docs/training.md explains why)."""
    base_step = initial_checkpoint_step(initial_checkpoint_path)
    if not base_step:
        return
    logging.warning(
        "TRAIN_STEPS=%d counts from step 0 of this run, not from the step of "
        "INITIAL_CHECKPOINT_PATH (%d) as in T5X: this run trains %d steps (T5X would need "
        "TRAIN_STEPS=%d for that)",
        train_steps,
        base_step,
        train_steps,
        base_step + train_steps,
    )
    if train_steps > base_step:
        logging.warning(
            "TRAIN_STEPS=%d is more than INITIAL_CHECKPOINT_PATH's own step %d: if it was "
            "written the T5X way (the base's step plus the fine-tuning steps), this run would "
            "train %d steps; set TRAIN_STEPS=%d for %d fine-tuning steps",
            train_steps,
            base_step,
            train_steps,
            train_steps - base_step,
            train_steps - base_step,
        )


def expected_checkpoint_tree(model: Any, trainer: Trainer) -> dict[str, Any]:
    """The abstract tree this run's checkpoints hold (`TrainState.as_dict()` of ShapeDtypeStructs),
    computed from shapes alone, so a checkpoint of another configuration is caught before any
    weight is read."""
    shapes = optimizers_lib.flatten_params(model.param_shapes())
    trainable = optimizers_lib.unflatten_params(
        {path: s for path, s in shapes.items() if trainer.selector.is_trainable(path)}
    )
    return jax.eval_shape(lambda t: TrainState.create(t, trainer.optimizer), trainable).as_dict()


def _exists_on_process_0(model_dir: str) -> bool:
    """Whether MODEL_DIR exists, as process 0 sees it, so that every host takes the same path
    (a collective: no process writes before all have looked)."""
    exists = storage.is_dir(model_dir)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        exists = bool(multihost_utils.broadcast_one_to_all(np.int32(exists)))
    return exists


def make_trainer(
    *,
    model: Any,
    partitioner: Partitioner | None,
    optimizer: Callable[..., optax.GradientTransformation],
    learning_rate: optimizers_lib.Schedule | None,
    trainable: optimizers_lib.TrainableSelector | None,
    num_microbatches: int,
    random_seed: int,
) -> Trainer:
    """The Trainer of a `train` call (shared with `fiat-t5x preflight`, which compiles its
    step ahead of time): unset arguments get train's defaults."""
    learning_rate = learning_rate or optimizers_lib.constant_schedule(1e-3)
    return Trainer(
        model,
        partitioner or Partitioner(),
        optimizer(learning_rate),
        learning_rate,
        trainable or optimizers_lib.TrainableSelector(),
        num_microbatches=num_microbatches,
        dropout_seed=random_seed,
    )


def train(
    *,
    model: Any,
    model_dir: str,
    train_steps: int,
    train_dataset_cfg: data_lib.DatasetConfig,
    initial_checkpoint_path: str | None,
    partitioner: Partitioner | None = None,
    optimizer: Callable[..., optax.GradientTransformation] = optimizers_lib.adafactor,
    learning_rate: optimizers_lib.Schedule | None = None,
    trainable: optimizers_lib.TrainableSelector | None = None,
    num_microbatches: int = 1,
    random_seed: int = 0,
    eval_dataset_cfg: data_lib.DatasetConfig | None = None,
    eval_period: int = 0,
    run_seqio_eval: bool = True,
    eval_num_examples: int | None = None,
    checkpoint_period: int = 1000,
    keep_checkpoints: int | None = 3,
    log_period: int = 10,
    peak_flops_per_device: float | None = None,
    start_checks: Sequence[StartCheck] = (),
    start_over_on_mismatch: bool = False,
    data_check_examples: int = 2000,
    eval_records: bool = True,
) -> TrainResult:
    """Train `model` for `train_steps` steps in total (resuming from MODEL_DIR if possible).

    `train_steps` counts this run's steps from 0 (resumes continue up to it), whatever the step
    of `initial_checkpoint_path`. When MODEL_DIR holds checkpoints of another configuration,
    training stops with a message naming the differences, unless `start_over_on_mismatch`
    (then they are moved aside and training starts from step 0). Up to `data_check_examples`
    training examples are checked at start-up for inputs/targets longer than
    TASK_FEATURE_LENGTHS and (200 of them) for text the vocabulary cannot represent (0: no check).

    `start_checks` run before anything is trained, each as `check(model_dir, datasets_read)`
    (e.g. `rationales.run_checks.RationaleChecks`: the rationale store); what they return is
    called once the run is known to start (e.g. recording the store in MODEL_DIR).

    `eval_records`: each SeqIO evaluation also writes its per-example records to
    MODEL_DIR/records/eval (`fiat_t5x.training.eval_records`; sweep reports bootstrap them).
    """
    check_task(train_dataset_cfg)
    if eval_dataset_cfg is not None:
        check_task(eval_dataset_cfg)
    model_dir = storage.normalize(model_dir)
    trainer = make_trainer(
        model=model,
        partitioner=partitioner,
        optimizer=optimizer,
        learning_rate=learning_rate,
        trainable=trainable,
        num_microbatches=num_microbatches,
        random_seed=random_seed,
    )
    partitioner = trainer.partitioner
    # Nothing is written to MODEL_DIR until the base, the data and the evaluation are known
    # to be good: a run that fails to start leaves no config.gin behind, and config.gin keeps
    # describing MODEL_DIR's checkpoints when a run of another configuration is turned away.
    checkpoints = None
    if _exists_on_process_0(model_dir):  # a restart: its checkpoints must fit this run
        checkpoints = CheckpointManager(model_dir, period=checkpoint_period, keep=keep_checkpoints)
        try:
            checkpoints.check_fits(
                expected_checkpoint_tree(model, trainer),
                start_over_on_mismatch=start_over_on_mismatch,
            )
        except CheckpointMismatch as e:
            raise gin_cli.UsageError(str(e)) from None
    evaluates = eval_dataset_cfg is not None and eval_period
    datasets_read = [train_dataset_cfg, *([eval_dataset_cfg] if evaluates else [])]
    records = [check(model_dir, datasets_read) for check in start_checks]
    explain_train_steps(train_steps, initial_checkpoint_path)
    if data_check_examples:
        name, split = train_dataset_cfg.mixture_or_task_name, train_dataset_cfg.split
        truncation.warn_if_truncated(
            name, train_dataset_cfg.task_feature_lengths, split, max_examples=data_check_examples
        )
        vocab_coverage.warn_if_poorly_covered(
            name, split, max_examples=min(data_check_examples, 200)
        )
    state, frozen = trainer.initial_state(initial_checkpoint_path, random_seed)
    position = 0
    if checkpoints is not None:  # resume from the newest intact checkpoint
        try:
            restored = checkpoints.restore_latest(state)
        except CheckpointMismatch as e:
            raise gin_cli.UsageError(str(e)) from None
        if restored is not None:
            state, position = restored
    start_step = int(jax.device_get(state.step))
    logging.info(
        "training %s from step %d to %d on mesh %s",
        train_dataset_cfg.mixture_or_task_name,
        start_step,
        train_steps,
        dict(partitioner.mesh.shape),
    )
    batches = data_lib.TrainBatches(train_dataset_cfg, start_position=position)
    evaluation = None
    if eval_dataset_cfg is not None and eval_period:
        evaluation = Evaluation(
            trainer,
            eval_dataset_cfg.mixture_or_task_name,
            eval_dataset_cfg.task_feature_lengths,
            split=eval_dataset_cfg.split,
            batch_size=eval_dataset_cfg.batch_size,
            use_cached=eval_dataset_cfg.use_cached,
            num_examples=eval_num_examples,
            run_seqio=run_seqio_eval,
            feature_converter_cls=eval_dataset_cfg.feature_converter_cls,
            seed=eval_dataset_cfg.seed,
            records_dir=records_lib.records_dir(model_dir, "eval") if eval_records else None,
        )
    gin_cli.write_config(model_dir)
    for record in records:
        if record is not None:
            record()
    if checkpoints is None:
        checkpoints = CheckpointManager(model_dir, period=checkpoint_period, keep=keep_checkpoints)
    writer = MetricsWriter(model_dir)
    writer.start_run(start_step)
    watcher = PreemptionWatcher()

    def save(train_state: TrainState, step: int, position: int, force: bool) -> None:
        if checkpoints.save(train_state, position, force, step=step):
            writer.flush()  # metrics.jsonl complete up to the newest checkpoint

    hooks = LoopHooks(
        save=save,
        evaluate=evaluation,
        stop_requested=watcher.stop_requested,
        write_metrics=writer.write,
    )
    try:
        state, history = train_loop(
            trainer,
            state,
            frozen,
            batches,
            train_steps=train_steps,
            hooks=hooks,
            log_period=log_period,
            eval_period=eval_period,
            peak_flops_per_device=peak_flops_per_device,
        )
    finally:
        watcher.restore_handler()
        writer.close()
        checkpoints.close()
    return TrainResult(state, frozen, history, trainer, start_step)


USAGE = "usage: python -m fiat_t5x.train --gin_file=gin/runs/finetune.gin [--gin.NAME=VALUE ...]\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    gin_cli.configure_logging()

    def body() -> None:
        # `python -m fiat_t5x.train` runs this file as __main__; gin files name the function of
        # the imported module, so configure that one.
        module = importlib.import_module("fiat_t5x.train")
        gin_cli.configured(distributed.initialize)()
        gin_cli.configured(module.train)()

    return gin_cli.run_main(argv, body, REQUIRED_MACROS, USAGE)


if __name__ == "__main__":
    sys.exit(main())
