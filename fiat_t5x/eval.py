"""`python -m fiat_t5x.eval --gin_file=<model>.gin --gin_file=runs/eval.gin --gin.MODEL_DIR=...`

Evaluates the newest checkpoint in MODEL_DIR (over the INITIAL_CHECKPOINT_PATH base) on a task
split, on the mesh of `partitioning.Partitioner` (as in training): teacher-forced loss/accuracy
and the task's SeqIO metrics, from seeded datasets, so the same checkpoint always gets the same
numbers. Prints the metrics as JSON and appends them to MODEL_DIR/metrics.jsonl as a row of
writer `eval_command` (with the split), which sweep reports keep apart from the trainer's eval.
A task that reads β's rationales must read them from the store the run was trained on
(MODEL_DIR/rationale_store.json), or the command stops before restoring anything.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

import jax

from fiat_t5x.rationales.run_checks import check_stores_read_by
from fiat_t5x.training import data as data_lib
from fiat_t5x.training import distributed, gin_cli
from fiat_t5x.training import eval_records as records_lib
from fiat_t5x.training.evaluation import Evaluation
from fiat_t5x.training.metrics_writer import EVAL_COMMAND_WRITER, append_row
from fiat_t5x.training.partitioning import Partitioner
from fiat_t5x.training.restore import trained_params
from fiat_t5x.training.trainer import inference_trainer

REQUIRED_MACROS = (
    "MODEL_DIR",
    "MIXTURE_OR_TASK_NAME",
    "TASK_FEATURE_LENGTHS",
    "INITIAL_CHECKPOINT_PATH",
)


def evaluate(
    *,
    model: Any,
    model_dir: str,
    eval_dataset_cfg: data_lib.DatasetConfig,
    initial_checkpoint_path: str | None,
    partitioner: Partitioner | None = None,
    num_examples: int | None = None,
    run_seqio: bool = True,
    decode_method: str = "greedy",
    num_beams: int = 4,
    random_seed: int = 0,
    eval_records: bool = True,
) -> dict[str, float]:
    """Metrics of the newest checkpoint on `eval_dataset_cfg.split`.

    With `eval_records`, the per-example records go to MODEL_DIR/records/eval_command, apart
    from training's MODEL_DIR/records/eval as this command's metrics rows are apart: an eval of
    another split or example count must not replace what sweep reports bootstrap.

    `random_seed` must be the training run's RANDOM_SEED when it started from a random init
    (INITIAL_CHECKPOINT_PATH=None): the frozen base is rebuilt from it, never saved.
    """
    try:
        task = data_lib.get_task_or_fail(eval_dataset_cfg.mixture_or_task_name)
        data_lib.check_feature_lengths(task, eval_dataset_cfg.task_feature_lengths)
    except ValueError as e:
        raise gin_cli.UsageError(str(e)) from None
    # A FIAT run's task reads β's rationales: from the store it was trained on, or refused.
    check_stores_read_by(model_dir, eval_dataset_cfg.mixture_or_task_name, eval_dataset_cfg.split)
    trainer = inference_trainer(model, partitioner)
    params, step = trained_params(
        model, model_dir, initial_checkpoint_path, seed=random_seed, partitioner=trainer.partitioner
    )
    # Placed on the mesh once: every parameter is "trainable" for the zero-update trainer.
    state, frozen = trainer.state_from(params), {}
    evaluation = Evaluation(
        trainer,
        eval_dataset_cfg.mixture_or_task_name,
        eval_dataset_cfg.task_feature_lengths,
        split=eval_dataset_cfg.split,
        batch_size=eval_dataset_cfg.batch_size,
        use_cached=eval_dataset_cfg.use_cached,
        num_examples=num_examples,
        run_seqio=run_seqio,
        decode_method=decode_method,
        num_beams=num_beams,
        feature_converter_cls=eval_dataset_cfg.feature_converter_cls,
        seed=eval_dataset_cfg.seed,
        records_dir=(
            records_lib.records_dir(model_dir, EVAL_COMMAND_WRITER) if eval_records else None
        ),
    )
    results = evaluation(state, frozen, step=step)
    if jax.process_index() == 0:
        # Marked as this command's rows: reports read the trainer's own evaluation, never these.
        values = {"eval_split": eval_dataset_cfg.split, **results}
        append_row(model_dir, step, values, EVAL_COMMAND_WRITER)
    return results


USAGE = "usage: python -m fiat_t5x.eval --gin_file=<model>.gin --gin_file=runs/eval.gin [--gin.NAME=VALUE ...]\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    gin_cli.configure_logging()

    def body() -> None:
        module = importlib.import_module("fiat_t5x.eval")
        gin_cli.require_run_dir()
        gin_cli.configured(distributed.initialize)()
        results = gin_cli.configured(module.evaluate)()
        print(json.dumps(results, indent=2, sort_keys=True))

    return gin_cli.run_main(argv, body, REQUIRED_MACROS, USAGE)


if __name__ == "__main__":
    sys.exit(main())
