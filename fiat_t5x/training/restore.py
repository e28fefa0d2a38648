"""Parameters for evaluation, inference and export: the frozen base plus the newest trained
checkpoint of MODEL_DIR (which holds only what training changed, e.g. the LoRA factors)."""

from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np

from fiat_t5x import storage
from fiat_t5x.training.checkpointing import CheckpointManager
from fiat_t5x.training.initial_params import initial_params
from fiat_t5x.training.optimizers import (
    ALL_PATTERNS,
    TrainableSelector,
    flatten_params,
    unflatten_params,
)
from fiat_t5x.training.partitioning import Partitioner


def trained_params(
    model: Any,
    model_dir: str | None,
    initial_checkpoint_path: str | None,
    *,
    seed: int = 0,
    require_checkpoint: bool = False,
    partitioner: Partitioner | None = None,
) -> tuple[dict, int]:
    """(full params, step): INITIAL_CHECKPOINT_PATH's base with the trained parameters of the
    newest intact checkpoint in MODEL_DIR laid over it (step 0 when there is none), as
    `jax.Array`s placed by the training start-up (`initial_params`) on `partitioner`'s mesh
    (eval and infer pass the run's; default: this process's first device, as for τ's decoding).

    The base must be the one training started from: the same path, or for a random init
    (`initial_checkpoint_path=None`) the trainer's RANDOM_SEED as `seed`. With
    `require_checkpoint` a MODEL_DIR without a checkpoint raises FileNotFoundError instead of
    falling back to the initial parameters. With a `partitioner` the params come back on its
    mesh, sharded by the model's logical axes as in training (the trained ones restored straight
    onto their base's shardings, each process reading its shards).
    """
    everything = TrainableSelector(patterns=ALL_PATTERNS)
    partitioner = partitioner or Partitioner(devices=jax.local_devices()[:1])
    placed, _ = initial_params(model, partitioner, initial_checkpoint_path, everything, seed)
    params = flatten_params(placed)
    restored = None
    if model_dir and storage.is_dir(model_dir):

        def sharding_for(path: str, shape: tuple[int, ...]) -> Any:
            """A trained parameter goes where the base's of that path went."""
            leaf = params.get(path)
            if leaf is not None and tuple(leaf.shape) == tuple(shape):
                return leaf.sharding
            return partitioner.replicated  # does not fit the model: reported below

        restored = CheckpointManager(model_dir).restore_latest_params(sharding_for)
    if restored is None:
        if require_checkpoint:
            raise FileNotFoundError(
                f"no intact checkpoint_N in MODEL_DIR={model_dir}; train first "
                "(python -m fiat_t5x.train with the same gin files)"
            )
        logging.warning("no checkpoint in MODEL_DIR=%s: using the initial parameters", model_dir)
        return unflatten_params(params), 0
    trained, step = restored
    flat = flatten_params(trained)
    unknown = sorted(set(flat) - set(params))
    wrong = sorted(
        f"{k}: checkpoint {np.shape(flat[k])} vs model {np.shape(params[k])}"
        for k in flat
        if k in params and np.shape(flat[k]) != np.shape(params[k])
    )
    if unknown or wrong:
        raise ValueError(
            f"checkpoint in {model_dir} does not fit the model: parameters the model lacks "
            f"{unknown[:5]}, shape mismatches {wrong[:5]}; is the gin model (incl. LoRA "
            "targets/rank) the one it was trained with?"
        )
    params.update({k: jax.device_put(v, params[k].sharding) for k, v in flat.items()})
    logging.info("using %d trained parameters from step %d of %s", len(flat), step, model_dir)
    return unflatten_params(params), step
