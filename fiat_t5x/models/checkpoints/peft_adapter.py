"""LoRA adapters in PEFT's on-disk format (`adapter_config.json` + `adapter_model.safetensors`).

PEFT names an adapter by the HF module it wraps:
`base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight` [r, in] and `...lora_B.weight`
[out, r], i.e. the transposes of our `lora_a` [in, r] / `lora_b` [r, out]. PEFT's scale is
lora_alpha/r (or lora_alpha/sqrt(r) with use_rslora), the same as LoraConfig.scale, so
`peft.PeftModel.from_pretrained(hf_base, adapter_dir)` computes what our model computes.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from fiat_t5x.models.checkpoints import scanned
from fiat_t5x.models.checkpoints.atomic import atomic_directory
from fiat_t5x.models.checkpoints.hf_names import module_names
from fiat_t5x.models.checkpoints.layout import param_shapes
from fiat_t5x.models.checkpoints.tree import (
    CheckpointError,
    check_shapes,
    flatten,
    unflatten,
)
from fiat_t5x.models.config import T5Config
from fiat_t5x.models.lora import LoraConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_HF_SHORT_TO_OURS = {"q": "query", "k": "key", "v": "value", "o": "out"}
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


def _adapted_modules(flat: Mapping[str, Any]) -> list[str]:
    return sorted(p[: -len("/lora_a")] for p in flat if p.endswith("/lora_a"))


def _target_modules(adapted_hf: list[str], all_hf: list[str]) -> list[str] | str:
    """PEFT's short names (e.g. ['q', 'v']) when they select exactly the adapted modules, else a
    regex that PEFT full-matches against module names."""
    short = sorted({name.rsplit(".", 1)[1] for name in adapted_hf})
    selected = [name for name in all_hf if name.rsplit(".", 1)[1] in short]
    if sorted(selected) == sorted(adapted_hf):
        return short
    return "(" + "|".join(re.escape(name) for name in sorted(adapted_hf)) + ")"


def save_peft_adapter(
    params: Mapping[str, Any],
    config: T5Config,
    lora: LoraConfig,
    output_dir: str,
    *,
    base_model_name_or_path: str | None = None,
    overwrite: bool = False,
) -> str:
    """Writes the LoRA leaves of `params` (full or lora-only tree) as a PEFT LoRA adapter.

    Args:
      base_model_name_or_path: the HF base model the adapter belongs to (a hub id or the
        directory written by `save_hf_t5` for the frozen base); recorded in adapter_config.json.
    """
    if scanned.is_scanned(params):  # a scan_layers run: PEFT names each layer
        params = scanned.unstack_layers(params, config.param_scan_axis)
    flat = flatten(params)
    names = module_names(config)
    adapted = _adapted_modules(flat)
    if not adapted:
        raise CheckpointError("params hold no LoRA leaves (…/lora_a, …/lora_b) to export")
    tensors: dict[str, np.ndarray] = {}
    for module in adapted:
        if module not in names:
            raise CheckpointError(
                f"LoRA on {module!r} has no PEFT equivalent: PEFT adapts the HF T5 Linear "
                "modules (attention q/k/v/o and MLP wi/wi_0/wi_1/wo) only"
            )
        a = np.asarray(flat[f"{module}/lora_a"])
        b = np.asarray(flat[f"{module}/lora_b"])
        if a.shape[1] != lora.rank or b.shape[0] != lora.rank:
            raise CheckpointError(
                f"{module}: lora_a {a.shape} / lora_b {b.shape} do not have rank {lora.rank}"
            )
        tensors[f"{_PREFIX}{names[module]}.lora_A.weight"] = np.ascontiguousarray(a.T)
        tensors[f"{_PREFIX}{names[module]}.lora_B.weight"] = np.ascontiguousarray(b.T)
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "SEQ_2_SEQ_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "use_rslora": lora.rank_stabilized,
        "target_modules": _target_modules([names[m] for m in adapted], list(names.values())),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_dora": False,
    }
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        save_file(tensors, os.path.join(tmp, ADAPTER_WEIGHTS), metadata={"format": "pt"})
        with open(os.path.join(tmp, ADAPTER_CONFIG), "w") as f:
            json.dump(adapter_config, f, indent=2)
    logging.info("wrote a PEFT adapter on %d modules to %s", len(adapted), output_dir)
    return output_dir


def _lora_config(adapter: Mapping[str, Any], adapted: list[str], source: str) -> LoraConfig:
    for key, supported in (("peft_type", "LORA"), ("bias", "none")):
        if adapter.get(key, supported) != supported:
            raise CheckpointError(
                f"{source}: {key}={adapter[key]!r} is not supported ({supported})"
            )
    for key in ("use_dora", "fan_in_fan_out"):
        if adapter.get(key):
            raise CheckpointError(f"{source}: {key}=true is not supported")
    for key in ("rank_pattern", "alpha_pattern"):
        if adapter.get(key):
            raise CheckpointError(f"{source}: per-module {key} is not supported")
    targets = adapter.get("target_modules")
    if isinstance(targets, list | tuple):
        ours = tuple(sorted(_HF_SHORT_TO_OURS.get(name, name) for name in targets))
    else:
        ours = tuple(adapted)
    return LoraConfig(
        rank=int(adapter["r"]),
        alpha=float(adapter.get("lora_alpha", 8)),
        dropout=float(adapter.get("lora_dropout", 0.0)),
        targets=ours,
        rank_stabilized=bool(adapter.get("use_rslora", False)),
    )


def load_peft_adapter(directory: str, config: T5Config) -> tuple[dict, LoraConfig]:
    """(lora-only param tree, LoraConfig) from a PEFT LoRA adapter directory for a T5 model.

    Combine with base params via `with_adapter(base_params, lora_params)`.
    """
    config_path = os.path.join(directory, ADAPTER_CONFIG)
    try:
        with open(config_path) as f:
            adapter = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read the PEFT adapter config {config_path}: {e}") from e
    weights_path = os.path.join(directory, ADAPTER_WEIGHTS)
    if not os.path.isfile(weights_path):
        raise CheckpointError(
            f"{directory} has no {ADAPTER_WEIGHTS} (pickled adapter_model.bin is refused: "
            "re-save the adapter with safetensors)"
        )
    ours_by_hf = {hf: ours for ours, hf in module_names(config).items()}
    flat: dict[str, np.ndarray] = {}
    with safe_open(weights_path, framework="np") as f:
        for key in f.keys():
            match = _KEY.match(key[len(_PREFIX) :] if key.startswith(_PREFIX) else key)
            module = ours_by_hf.get(match.group("module")) if match else None
            if module is None:
                raise CheckpointError(
                    f"{weights_path}: tensor {key!r} is not a LoRA weight of a T5 module of "
                    "this config (wrong base model or layer count?)"
                )
            leaf = "lora_a" if match.group("which") == "A" else "lora_b"
            flat[f"{module}/{leaf}"] = np.ascontiguousarray(f.get_tensor(key).T)
    adapted = _adapted_modules(flat)
    lora = _lora_config(adapter, adapted, config_path)
    expected = param_shapes(config, lora)
    check_shapes(flat, {p: expected[p] for p in flat if p in expected} | {
        p: expected[p] for p in expected if p.endswith(("/lora_a", "/lora_b"))
    }, source=weights_path)  # fmt: skip
    return unflatten(flat), lora


def with_adapter(base_params: Mapping[str, Any], lora_params: Mapping[str, Any]) -> dict:
    """The base tree with the adapter's lora_a/lora_b leaves added beside their kernels."""
    flat = flatten(base_params)
    for path, value in flatten(lora_params).items():
        kernel = path.rsplit("/", 1)[0] + "/kernel"
        if kernel not in flat:
            raise CheckpointError(f"adapter leaf {path!r} has no base kernel {kernel!r}")
        flat[path] = value
    return unflatten(flat)
