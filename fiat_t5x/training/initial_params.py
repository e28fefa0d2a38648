"""The starting parameters: a pretrained base (T5X or Hugging Face) plus freshly initialised
parameters the base lacks (the LoRA factors), or a random init when there is no base.

The base is read again at every (re)start, which is why training checkpoints never hold it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np

from fiat_t5x.models.lora import is_lora_path
from fiat_t5x.training.optimizers import flatten_params, unflatten_params


def is_huggingface_checkpoint(path: str) -> bool:
    """A Hugging Face model directory: config.json beside *.safetensors (or a safetensors file)."""
    if os.path.isfile(path):
        return path.endswith(".safetensors")
    names = os.listdir(path) if os.path.isdir(path) else []
    return "config.json" in names and any(n.endswith(".safetensors") for n in names)


def read_checkpoint(path: str) -> dict:
    """The base parameters at `path` in the contract layout (nested dict of numpy arrays)."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"INITIAL_CHECKPOINT_PATH={path!r} does not exist; point it at a T5X checkpoint_N "
            "directory or a Hugging Face model directory, or set it to None to train from scratch"
        )
    if is_huggingface_checkpoint(path):
        from fiat_t5x.models.checkpoints import hf_t5

        _, params = hf_t5.load_hf_t5(path)
        return params
    from fiat_t5x.models.checkpoints import load_t5x_params

    return load_t5x_params(path)


def initial_params(model: Any, path: str | None, seed: int = 0) -> dict:
    """Model parameters to start training from (host numpy arrays).

    Every parameter of the model must come from the checkpoint except LoRA factors, which are
    initialised (lora_b = 0, so the adapted model starts equal to the base). Shape mismatches
    and missing or unexpected parameters raise, naming the paths.
    """
    if path is None:
        logging.info("INITIAL_CHECKPOINT_PATH is None: the base is a random init (seed %d)", seed)
        fresh = flatten_params(jax.device_get(model.init_params(jax.random.PRNGKey(seed))))
        return unflatten_params({k: np.asarray(v) for k, v in fresh.items()})
    # Check the checkpoint against the abstract shapes first: a misfit fails before any init.
    expected = flatten_params(model.param_shapes())
    base = flatten_params(read_checkpoint(path))
    missing = sorted(k for k in expected if k not in base and not is_lora_path(k))
    unexpected = sorted(k for k in base if k not in expected)
    wrong = sorted(
        f"{k}: checkpoint {tuple(base[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in base and tuple(base[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint {path} does not fit the model config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}. Check the gin model "
            "file (sizes, gated MLP, tied logits) against the checkpoint."
        )
    fresh = {}
    if any(k not in base for k in expected):  # LoRA factors: initialised (lora_b = 0)
        fresh = flatten_params(jax.device_get(model.init_params(jax.random.PRNGKey(seed))))
    merged = {
        k: np.asarray(base[k]).astype(spec.dtype, copy=False) if k in base else np.asarray(fresh[k])
        for k, spec in expected.items()
    }
    logging.info(
        "loaded %d base parameters from %s; initialised %d LoRA parameters",
        len(base),
        path,
        sum(is_lora_path(k) for k in fresh),
    )
    return unflatten_params(merged)
