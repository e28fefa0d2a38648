"""`python -m fiat_t5x.train --gin_file=gin/runs/finetune.gin --gin.MODEL_DIR="'/tmp/run'" ...`

Fine-tunes a model (LoRA by default) on a SeqIO task or mixture, with periodic evaluation,
orbax checkpoints and exact resumption: run the same command again and it continues from the
newest intact checkpoint in MODEL_DIR. SIGTERM saves a checkpoint and exits with status 0.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax

from fiat_t5x.training import data as data_lib
from fiat_t5x.training import distributed, gin_cli
from fiat_t5x.training import eval_records as records_lib
from fiat_t5x.training import optimizers as optimizers_lib
from fiat_t5x.training.checkpointing import CheckpointManager, PreemptionWatcher
from fiat_t5x.training.evaluation import Evaluation
from fiat_t5x.training.initial_params import initial_params
from fiat_t5x.training.metrics_writer import MetricsWriter
from fiat_t5x.training.partitioning import Partitioner
from fiat_t5x.training.train_state import TrainState
from fiat_t5x.training.trainer import LoopHooks, Trainer, train_loop

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
    eval_records: bool = True,
) -> TrainResult:
    """Train `model` for `train_steps` steps in total (resuming from MODEL_DIR if possible).

    `eval_records`: each SeqIO evaluation also writes its per-example records to
    MODEL_DIR/records/eval (`fiat_t5x.training.eval_records`; sweep reports bootstrap them).
    """
    check_task(train_dataset_cfg)
    if eval_dataset_cfg is not None:
        check_task(eval_dataset_cfg)
    model_dir = os.path.abspath(model_dir)
    gin_cli.write_config(model_dir)
    learning_rate = learning_rate or optimizers_lib.constant_schedule(1e-3)
    partitioner = partitioner or Partitioner()
    trainer = Trainer(
        model,
        partitioner,
        optimizer(learning_rate),
        learning_rate,
        trainable or optimizers_lib.TrainableSelector(),
        num_microbatches=num_microbatches,
        dropout_seed=random_seed,
    )
    state, frozen = trainer.create_state(
        initial_params(model, initial_checkpoint_path, random_seed)
    )
    checkpoints = CheckpointManager(model_dir, period=checkpoint_period, keep=keep_checkpoints)
    position = 0
    restored = checkpoints.restore_latest(state)
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
            records_dir=records_lib.records_dir(model_dir, "eval") if eval_records else None,
        )
    writer = MetricsWriter(model_dir)
    watcher = PreemptionWatcher()
    hooks = LoopHooks(
        save=lambda s, pos, force: checkpoints.save(s, pos, force),
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
