"""`python -m fiat_t5x.infer --gin_file=<model>.gin --gin_file=runs/infer.gin --gin.MODEL_DIR=...`

Decodes a task split (or every task of a mixture) with the newest checkpoint of MODEL_DIR, on
the mesh of `partitioning.Partitioner` through the one decode path (`BatchDecoder`), from a
seeded dataset (the same predictions on every run), and writes JSON lines `{"task", "index", "inputs", "targets", "prediction", ...}` to
INFER_OUTPUT (default MODEL_DIR/inference/<task>-<split>.jsonl). Extra string fields of the
examples (e.g. `id`, `language`) are copied through. A task that reads β's rationales must read
them from the store the run was trained on (MODEL_DIR/rationale_store.json), as in `eval`.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from fiat_t5x import storage
from fiat_t5x.models.batch_decoder import BatchDecoder
from fiat_t5x.models.decoding import until_eos
from fiat_t5x.rationales.run_checks import check_stores_read_by
from fiat_t5x.training import data as data_lib
from fiat_t5x.training import distributed, gin_cli
from fiat_t5x.training.partitioning import Partitioner
from fiat_t5x.training.restore import trained_params

REQUIRED_MACROS = (
    "MODEL_DIR",
    "MIXTURE_OR_TASK_NAME",
    "TASK_FEATURE_LENGTHS",
    "INITIAL_CHECKPOINT_PATH",
)


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _text(value.item())
    return value


def infer(
    *,
    model: Any,
    model_dir: str,
    mixture_or_task_name: str,
    task_feature_lengths: dict[str, int],
    initial_checkpoint_path: str | None,
    split: str = "test",
    batch_size: int = 32,
    output_dir: str | None = None,
    num_examples: int | None = None,
    partitioner: Partitioner | None = None,
    decode_method: str = "greedy",
    num_beams: int = 4,
    random_seed: int = 0,
) -> list[str]:
    """Write one JSONL file per task; returns their paths.

    `random_seed` must be the training run's RANDOM_SEED when it started from a random init.
    """
    try:
        tasks = data_lib.leaf_tasks(mixture_or_task_name)
    except ValueError as e:
        raise gin_cli.UsageError(str(e)) from None
    check_stores_read_by(model_dir, mixture_or_task_name, split)  # as `fiat-t5x eval` does
    partitioner = partitioner or Partitioner()
    params, step = trained_params(
        model, model_dir, initial_checkpoint_path, seed=random_seed, partitioner=partitioner
    )
    decoder = BatchDecoder(
        model,
        params,
        partitioner=partitioner,
        batch_size=batch_size,
        max_decode_length=task_feature_lengths["targets"],
        method=decode_method,
        num_beams=num_beams,
    )
    output_dir = output_dir or storage.join(model_dir, "inference")
    paths = []
    for task in tasks:
        vocab = task.output_features["targets"].vocabulary
        ds = task.get_dataset(
            dict(task_feature_lengths),
            split=split,
            shuffle=False,
            num_epochs=1,
            seed=data_lib.EVAL_SEED,
        )
        if num_examples:
            ds = ds.take(num_examples)
        path = storage.join(output_dir, f"{task.name}-{split}.jsonl")
        examples = list(ds.as_numpy_iterator())
        encoder_tokens = np.zeros((len(examples), task_feature_lengths["inputs"]), np.int32)
        for row, ex in enumerate(examples):
            encoder_tokens[row, : len(ex["inputs"])] = ex["inputs"]
        tokens = decoder.decode(encoder_tokens)
        records = []
        for row, ex in enumerate(examples):
            record = {"task": task.name, "index": row, "step": step}
            for key, value in ex.items():
                if key in ("inputs", "targets"):
                    record[key] = vocab.decode([int(t) for t in value])
                elif isinstance(_text(value), (str, int, float)):
                    record.setdefault(key, _text(value))
            record["prediction"] = vocab.decode(until_eos(tokens[row])[0])
            records.append(record)
        if jax.process_index() == 0:
            lines = (json.dumps(record, ensure_ascii=False) + "\n" for record in records)
            storage.write_text(path, "".join(lines))
            logging.info("wrote %d predictions to %s", len(records), path)
        paths.append(path)
    return paths


USAGE = "usage: python -m fiat_t5x.infer --gin_file=<model>.gin --gin_file=runs/infer.gin [--gin.NAME=VALUE ...]\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    gin_cli.configure_logging()

    def body() -> None:
        module = importlib.import_module("fiat_t5x.infer")
        gin_cli.require_run_dir()
        gin_cli.configured(distributed.initialize)()
        for path in gin_cli.configured(module.infer)():
            print(path)

    return gin_cli.run_main(argv, body, REQUIRED_MACROS, USAGE)


if __name__ == "__main__":
    sys.exit(main())
