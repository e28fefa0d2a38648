"""LoRA: low-rank adapters on dense projections, and pure merge/unmerge on parameter trees.

A targeted projection `.../query` gets two extra parameters next to its `kernel`:
`lora_a` [in, rank] (Kaiming-uniform, as PEFT initialises `lora_A`) and `lora_b` [rank, out]
(zeros), so a fresh adapter leaves the model unchanged. The projection computes
`x @ kernel + dropout(x) @ lora_a @ lora_b * scale`. Our `[in, r]` / `[r, out]` layout is the
transpose of PEFT's `lora_A.weight` [r, in] / `lora_B.weight` [out, r].
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

Params = Mapping[str, Any]

# Every dense projection of the network, by its module name (T5X example-network names).
PROJECTION_NAMES = ("query", "key", "value", "out", "wi", "wi_0", "wi_1", "wo")
_REGEX_CHARS = set(".^$*+?{}[]()|\\")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Which projections carry LoRA, and its hyper-parameters (PEFT's defaults).

    Attributes:
      rank: inner dimension r of the adapter.
      alpha: scaling numerator; the update is multiplied by alpha/r (or alpha/sqrt(r)).
      dropout: dropout rate applied to the adapter's input only.
      targets: projection names (`query`, `value`, `wo`, ... or path suffixes such as
        `self_attention/query`) or regular expressions matched in full against module paths
        like `encoder/layers_0/attention/query`.
      rank_stabilized: rsLoRA scaling alpha/sqrt(r) instead of alpha/r.
    """

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("query", "value")
    rank_stabilized: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", (self.targets,))
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.rank <= 0:
            raise ValueError(f"LoraConfig.rank must be positive, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("LoraConfig.targets is empty: name at least one projection")
        for target in self.targets:
            if _is_regex(target):
                try:
                    re.compile(target)
                except re.error as e:
                    raise ValueError(f"LoraConfig.targets: bad regex {target!r}: {e}") from e

    @property
    def scale(self) -> float:
        """Multiplier of `A @ B`: alpha/r, or alpha/sqrt(r) when rank-stabilised."""
        denominator = math.sqrt(self.rank) if self.rank_stabilized else self.rank
        return self.alpha / denominator

    def targets_path(self, path: str) -> bool:
        """Whether the projection module at `path` (e.g. `decoder/layers_1/mlp/wo`) is targeted."""
        return any(target_matches(target, path) for target in self.targets)


def _is_regex(target: str) -> bool:
    return any(ch in _REGEX_CHARS for ch in target)


def target_matches(target: str, path: str) -> bool:
    """A name/path suffix matches whole path components; a regex must match the whole path."""
    if _is_regex(target):
        return re.fullmatch(target, path) is not None
    return path == target or path.endswith("/" + target)


def targets_module(lora: LoraConfig, path: Sequence[str], stack_depth: int | None = None) -> bool:
    """Whether LoRA applies to the projection module at `path` (its scope path components).

    In a scanned stack of `stack_depth` layers, `("encoder", "layers", "attention", "query")` is
    every layer's query at once: the targets are matched against each `encoder/layers_{i}/...`
    and must pick all of them or none (a scanned stack has one set of parameters per layer).
    """
    if stack_depth is None:
        return lora.targets_path("/".join(path))
    at = list(path).index("layers")
    per_layer = [
        lora.targets_path("/".join((*path[:at], f"layers_{i}", *path[at + 1 :])))
        for i in range(stack_depth)
    ]
    if all(per_layer) or not any(per_layer):
        return per_layer[0]
    chosen = [i for i, hit in enumerate(per_layer) if hit]
    raise ValueError(
        f"LoraConfig.targets {list(lora.targets)} adapt {'/'.join(path)} in layers {chosen} only; "
        "with T5Config.scan_layers=True every layer of a stack has the same parameters: target "
        "all layers or set scan_layers=False"
    )


def is_lora_path(path: str) -> bool:
    """Whether a '/'-joined parameter path is a LoRA leaf (`.../lora_a` or `.../lora_b`)."""
    return path.endswith("/lora_a") or path.endswith("/lora_b")


def lora_a_init(key: jax.Array, shape: tuple[int, int], dtype: Any = jnp.float32) -> jax.Array:
    """PEFT's `kaiming_uniform_(a=sqrt(5))` on the [r, in] weight: U(-1/sqrt(in), 1/sqrt(in)).

    gain = sqrt(2 / (1 + a^2)) = sqrt(1/3); bound = gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in),
    where fan_in is the projection's input width (our shape[0]).
    """
    bound = 1.0 / math.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


def _flat(params: Params) -> dict[str, Any]:
    return traverse_util.flatten_dict(dict(params), sep="/")


def _unflat(flat: Mapping[str, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def split_lora(params: Params) -> tuple[dict, dict]:
    """(lora-only tree, tree without lora leaves): the trainable/frozen split of LoRA tuning."""
    flat = _flat(params)
    lora = {k: v for k, v in flat.items() if is_lora_path(k)}
    rest = {k: v for k, v in flat.items() if not is_lora_path(k)}
    return _unflat(lora), _unflat(rest)


def _adapted_modules(flat: Mapping[str, Any]) -> list[str]:
    modules = sorted(k[: -len("/lora_a")] for k in flat if k.endswith("/lora_a"))
    for module in modules:
        for leaf in ("lora_b", "kernel"):
            if f"{module}/{leaf}" not in flat:
                raise ValueError(f"LoRA parameters at {module!r} have no {leaf!r} beside lora_a")
    return modules


def _delta(a: jax.Array, b: jax.Array, kernel: jax.Array, scale: float, module: str) -> jax.Array:
    if a.shape[0] != kernel.shape[0] or b.shape[1] != kernel.shape[1] or a.shape[1] != b.shape[0]:
        raise ValueError(
            f"LoRA shapes at {module!r} do not fit the kernel {tuple(kernel.shape)}: "
            f"lora_a {tuple(a.shape)}, lora_b {tuple(b.shape)}"
        )
    product = jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32))
    return (product * scale).astype(kernel.dtype)


def merge_lora(params: Params, lora: LoraConfig) -> dict:
    """Folds every adapter into its kernel (W + scale*A@B) and drops the lora leaves."""
    flat = _flat(params)
    for module in _adapted_modules(flat):
        a = flat.pop(f"{module}/lora_a")
        b = flat.pop(f"{module}/lora_b")
        kernel = flat[f"{module}/kernel"]
        flat[f"{module}/kernel"] = kernel + _delta(a, b, kernel, lora.scale, module)
    return _unflat(flat)


def unmerge_lora(merged: Params, lora_params: Params, lora: LoraConfig) -> dict:
    """Inverse of `merge_lora`: W - scale*A@B, with the lora leaves (from `lora_params`) put back.

    `lora_params` may be the full unmerged tree or the lora-only tree from `split_lora`.
    """
    flat = _flat(merged)
    adapters = {k: v for k, v in _flat(lora_params).items() if is_lora_path(k)}
    leftover = [k for k in flat if is_lora_path(k)]
    if leftover:
        raise ValueError(f"unmerge_lora: `merged` still holds LoRA leaves, e.g. {leftover[0]!r}")
    for key in adapters:
        module = key.rsplit("/", 1)[0]
        if f"{module}/kernel" not in flat:
            raise ValueError(f"unmerge_lora: no kernel at {module!r} for the adapter {key!r}")
    flat.update(adapters)
    for module in _adapted_modules(flat):
        kernel = flat[f"{module}/kernel"]
        delta = _delta(
            flat[f"{module}/lora_a"], flat[f"{module}/lora_b"], kernel, lora.scale, module
        )
        flat[f"{module}/kernel"] = kernel - delta
    return _unflat(flat)
