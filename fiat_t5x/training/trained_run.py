"""A training run read back from its MODEL_DIR: the gin model, the base and the trained params.

The trainer writes its full gin configuration to MODEL_DIR/config.gin and checkpoints only
what it trained (e.g. the LoRA factors); the frozen base is INITIAL_CHECKPOINT_PATH (or the
RANDOM_SEED's random init). Export tools need all three put back together, which is what
`load_trained_run` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import gin
from fiat_t5x import storage
from fiat_t5x.training import gin_cli
from fiat_t5x.training.restore import trained_params

CONFIG_FILE = "config.gin"
_MODEL_GETTER = "fiat_t5x_trained_run_model"


def _model(model: Any = gin.REQUIRED) -> Any:
    return model


_configured_model = gin.external_configurable(_model, name=_MODEL_GETTER)


class _FromConfig:
    def __repr__(self) -> str:
        return "FROM_CONFIG"


FROM_CONFIG: Any = _FromConfig()
"""Default of `initial_checkpoint_path`: take INITIAL_CHECKPOINT_PATH from the gin config."""


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """model: the gin MODEL (config and LoRA config); params: the full tree (base + trained);
    step: the checkpoint's step."""

    model: Any
    params: dict
    step: int
    initial_checkpoint_path: str | None


def _macro(name: str, default: Any) -> Any:
    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        return default


def load_trained_run(
    model_dir: str,
    *,
    gin_files: Sequence[str] = (),
    gin_bindings: Sequence[str] = (),
    initial_checkpoint_path: str | None = FROM_CONFIG,
    random_seed: int | None = None,
) -> TrainedRun:
    """The newest intact checkpoint of `model_dir` over its base, with the gin MODEL.

    Args:
      gin_files: the model's gin files; default MODEL_DIR/config.gin (what the trainer wrote).
      gin_bindings: extra bindings applied on top, e.g. "LORA_ALPHA = 16.0".
      initial_checkpoint_path: the base; default the config's INITIAL_CHECKPOINT_PATH.
      random_seed: seed of a random-init base; default the config's RANDOM_SEED (else 0).
    Raises:
      FileNotFoundError: no config.gin (and no gin_files) or no intact checkpoint.
      ValueError: the config defines no MODEL or INITIAL_CHECKPOINT_PATH, or the checkpoint
        does not fit the model.
    """
    files = list(gin_files)
    if not files:
        config = storage.join(model_dir, CONFIG_FILE)
        if not storage.is_file(config):
            raise FileNotFoundError(
                f"{config} does not exist: pass the run's model gin files (--gin_file) or point "
                "at the MODEL_DIR that `python -m fiat_t5x.train` wrote"
            )
        files = [config]
    gin_cli.parse_gin(gin_cli.GinArgs(gin_files=files, bindings=list(gin_bindings)))
    if _macro("MODEL", None) is None:
        raise ValueError(f"the gin config {files} defines no MODEL (include a gin/models file)")
    gin.parse_config(f"{_MODEL_GETTER}.model = %MODEL")
    model = _configured_model()
    if initial_checkpoint_path is FROM_CONFIG:
        initial_checkpoint_path = _macro("INITIAL_CHECKPOINT_PATH", FROM_CONFIG)
        if initial_checkpoint_path is FROM_CONFIG or gin_cli.is_required(initial_checkpoint_path):
            raise ValueError(
                f"the gin config {files} does not say INITIAL_CHECKPOINT_PATH (the frozen base "
                "of the run): pass it (--initial_checkpoint_path PATH, or None for a random init)"
            )
    if random_seed is None:
        random_seed = int(_macro("RANDOM_SEED", 0))
    params, step = trained_params(
        model, model_dir, initial_checkpoint_path, seed=random_seed, require_checkpoint=True
    )
    return TrainedRun(model, params, step, initial_checkpoint_path)
