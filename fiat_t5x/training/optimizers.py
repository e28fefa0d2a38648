"""Optimizers, learning-rate schedules and the trainable/frozen split of the parameter tree.

gin binds the optimizer *factory* (`train.optimizer = @adafactor`) and the schedule
(`train.learning_rate = @constant_schedule()`) separately, so the trainer can log the rate.
Only the trainable subset (by default the LoRA factors) is handed to the optimizer and
differentiated: frozen weights carry no optimizer state and no gradient buffers, which is
what makes LoRA steps cheap. Parameter paths are '/'-joined T5X names, e.g.
`encoder/layers_0/attention/query/lora_a`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fiat_t5x.errors import UsageError
from fiat_t5x.models.lora import is_lora_path

Params = dict[str, Any]
Schedule = Callable[[jax.Array], jax.Array]

ALL_PATTERNS: tuple[str, ...] = (r".*",)


# ----------------------------------------------------------------------------- schedules


def constant_schedule(value: float = 1e-3) -> Schedule:
    """T5X's usual fine-tuning rate: a constant."""
    return optax.constant_schedule(value)


def rsqrt_schedule(base: float = 1.0, warmup_steps: int = 10_000) -> Schedule:
    """T5X's pre-training rate `constant * rsqrt_decay`: base / sqrt(max(step, warmup))."""

    def schedule(step: jax.Array) -> jax.Array:
        return base / jnp.sqrt(jnp.maximum(jnp.asarray(step, jnp.float32), warmup_steps))

    return schedule


def warmup_cosine_schedule(
    peak: float = 1e-3, warmup_steps: int = 100, decay_steps: int = 1000, end: float = 0.0
) -> Schedule:
    """Linear warm-up from 0 to `peak`, then cosine decay to `end` at `decay_steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup_steps,
        decay_steps=max(decay_steps, warmup_steps + 1),
        end_value=end,
    )


# ----------------------------------------------------------------------------- optimizers


def adafactor(
    learning_rate: Schedule | float,
    decay_rate: float = 0.8,
    min_dim_size_to_factor: int = 128,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    weight_decay_rate: float | None = None,
    eps: float = 1e-30,
) -> optax.GradientTransformation:
    """Adafactor with T5X's defaults (decay 0.8, no momentum, update clipping 1.0,
    relative step size scaled by the parameter RMS, factored second moments for dims >= 128).

    For LoRA, whose `lora_b` starts at zero, `multiply_by_parameter_scale=False` (as in
    prompt tuning) lets the adapters move from the first step.
    """
    return optax.adafactor(
        learning_rate=learning_rate,
        decay_rate=decay_rate,
        min_dim_size_to_factor=min_dim_size_to_factor,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
        clipping_threshold=clipping_threshold,
        momentum=momentum,
        weight_decay_rate=weight_decay_rate,
        eps=eps,
    )


def adamw(
    learning_rate: Schedule | float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = None,
) -> optax.GradientTransformation:
    """AdamW (PEFT's usual optimizer for LoRA), optionally with global-norm clipping."""
    opt = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    if max_grad_norm:
        opt = optax.chain(optax.clip_by_global_norm(max_grad_norm), opt)
    return opt


# ----------------------------------------------------------------------------- trainable split


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a/b/c': leaf}."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten_params(flat: Mapping[str, Any]) -> Params:
    """{'a/b/c': leaf} -> nested dict."""
    nested: Params = {}
    for path, value in flat.items():
        node = nested
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


class TrainableSelector:
    """Which parameters the optimizer updates: paths matching any of `patterns` (re.fullmatch).

    The default (`patterns=None`) trains only the LoRA factors
    (`fiat_t5x.models.lora.is_lora_path`); `patterns=('.*',)` is full fine-tuning.

    `frozen_dtype` is the dtype the frozen matmul weights are held in (`held_in_compute_dtype`:
    the kernels and the token embedding, which the network casts to its compute dtype before
    every use; norm scales and the position-bias table keep theirs). None, the default, lets
    the Trainer pick the model's compute dtype (`resolved_for`): a bf16 run then holds its
    frozen base in bf16 once instead of rounding it in every step, which halves its memory and
    changes no value. 'float32' keeps it in fp32. Trainable weights always keep their dtype.
    """

    def __init__(
        self, patterns: Sequence[str] | None = None, frozen_dtype: str | None = None
    ) -> None:
        self.patterns = None if patterns is None else tuple(patterns)
        self._compiled = [re.compile(p) for p in self.patterns or ()]
        self.frozen_dtype = None if frozen_dtype is None else _dtype_name(frozen_dtype)

    def resolved_for(self, compute_dtype: Any) -> TrainableSelector:
        """This selector with a `frozen_dtype` of None set to `compute_dtype` (None: unchanged)."""
        if self.frozen_dtype is not None or compute_dtype is None:
            return self
        return TrainableSelector(self.patterns, frozen_dtype=compute_dtype)

    def is_trainable(self, path: str) -> bool:
        if self.patterns is None:
            return is_lora_path(path)
        return any(p.fullmatch(path) for p in self._compiled)

    def split(self, params: Mapping[str, Any]) -> tuple[Params, Params]:
        """(trainable, frozen) nested dicts whose union is `params`.

        Raises when nothing matches: a typo in a pattern would otherwise silently train nothing.
        """
        trainable, frozen = {}, {}
        for path, leaf in flatten_params(params).items():
            (trainable if self.is_trainable(path) else frozen)[path] = leaf
        if not trainable:
            raise ValueError(
                f"TrainableSelector.patterns={self.patterns or 'LoRA factors'} match no parameter; examples of "
                f"paths: {sorted(flatten_params(params))[:4]}. For LoRA, make sure the model "
                "has a LoraConfig (gin/peft/lora.gin); for full fine-tuning use patterns=('.*',)."
            )
        frozen = {k: self._as_stored(k, v) for k, v in frozen.items()}
        return unflatten_params(trainable), unflatten_params(frozen)

    def stored_dtype(self, path: str, dtype: Any) -> Any:
        """The dtype in which the parameter at `path` (created in `dtype`) is kept."""
        if (
            self.frozen_dtype is None
            or self.is_trainable(path)
            or not held_in_compute_dtype(path)
            or not jnp.issubdtype(dtype, jnp.floating)
        ):
            return dtype
        return jnp.dtype(self.frozen_dtype)

    def _as_stored(self, path: str, leaf: Any) -> Any:
        dtype = self.stored_dtype(path, leaf.dtype)
        if dtype == leaf.dtype:
            return leaf
        if isinstance(leaf, jax.ShapeDtypeStruct):  # abstract shapes (start-up, preflight)
            return jax.ShapeDtypeStruct(leaf.shape, dtype, sharding=leaf.sharding)
        return leaf.astype(dtype)


def _dtype_name(dtype: Any) -> str:
    try:
        return str(jnp.dtype(dtype))
    except TypeError:
        raise UsageError(
            f"TrainableSelector.frozen_dtype={dtype!r} is not a dtype: use 'bfloat16', "
            "'float32', or None (the model's compute dtype)"
        ) from None


# T5X's names for the weights the network reads only through a cast to its compute dtype
# (`layers.DenseProjection`, `layers.Embed`): holding them frozen in that dtype changes no value.
_COMPUTE_DTYPE_WEIGHTS = frozenset({"kernel", "embedding"})


def held_in_compute_dtype(path: str) -> bool:
    """Whether `frozen_dtype` applies to the weight at `path` (a projection kernel or the token
    embedding; not norm scales or the position-bias table, which are read in fp32)."""
    return path.rsplit("/", 1)[-1] in _COMPUTE_DTYPE_WEIGHTS


def merge_params(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> Params:
    """The full parameter tree from its two halves (pure; usable under jit)."""
    flat = flatten_params(frozen)
    flat.update(flatten_params(trainable))
    return unflatten_params(flat)
