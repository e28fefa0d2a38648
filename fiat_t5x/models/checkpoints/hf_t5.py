"""Hugging Face T5 / mT5 / umT5 checkpoints (`config.json` + `model.safetensors`), both ways.

Import gives a T5Config and the contract's param tree; export writes a directory that
`transformers.{T5,MT5,UMT5}ForConditionalGeneration.from_pretrained` loads with the same logits.
LoRA leaves are merged into their kernels before export (HF models have no adapters; use
`peft_adapter` to export the adapter itself).

Output-layer semantics: our `logits_via_embedding=True` means "tied and scaled by emb_dim**-0.5"
(original T5). HF decides scaling per family (transformers 5: T5 scales iff the config's
`tie_word_embeddings` was not False, recorded as `scale_decoder_outputs`; mT5 never scales; umT5
scales iff `tie_word_embeddings`). Any other combination (e.g. tied without scaling) is imported
exactly as an untied `logits_dense` kernel with the scale folded in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from fiat_t5x.models.checkpoints import lazy_arrays, scanned
from fiat_t5x.models.checkpoints.atomic import atomic_directory
from fiat_t5x.models.checkpoints.hf_names import param_names
from fiat_t5x.models.checkpoints.layout import param_shapes
from fiat_t5x.models.checkpoints.lazy_arrays import (
    InMemoryArray,
    LazyArray,
    SafetensorsArray,
    Scaled,
    Transposed,
    materialize,
)
from fiat_t5x.models.checkpoints.tree import (
    CheckpointError,
    CheckpointMismatchError,
    cast_floating,
    cast_tree,
    check_shapes,
    flatten,
    unflatten,
)
from fiat_t5x.models.config import T5Config

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")

# feed_forward_proj <-> mlp_activations. HF's "gated-gelu" is the tanh GELU ("gelu_new"), like
# ours; HF's plain "gelu" is the exact GELU.
_ACTIVATIONS = {
    "relu": ("relu",),
    "gated-relu": ("relu", "linear"),
    "gated-gelu": ("gelu", "linear"),
    "gated-gelu_new": ("gelu", "linear"),
    "gelu_new": ("gelu",),
    "gelu": ("gelu_exact",),
    "gated-silu": ("silu", "linear"),
    "silu": ("silu",),
}
_FEED_FORWARD_PROJ = {
    ("relu",): "relu",
    ("relu", "linear"): "gated-relu",
    ("gelu", "linear"): "gated-gelu",
    ("gelu",): "gelu_new",
    ("gelu_exact",): "gelu",
    ("silu", "linear"): "gated-silu",
    ("silu",): "silu",
}
_MAPPED_KEYS = {
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_decoder_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "dropout_rate",
    "layer_norm_epsilon",
    "feed_forward_proj",
    "model_type",
    "tie_word_embeddings",
    "scale_decoder_outputs",
}
# Keys of HF's generic PretrainedConfig, tokenizer and generation settings: no effect on the math.
_IGNORED_KEYS = {
    "architectures", "transformers_version", "torch_dtype", "dtype", "is_encoder_decoder",
    "is_decoder", "use_cache", "pad_token_id", "eos_token_id", "bos_token_id",
    "decoder_start_token_id", "initializer_factor", "dense_act_fn", "is_gated_act",
    "classifier_dropout", "n_positions", "output_past", "task_specific_params", "tokenizer_class",
    "_name_or_path", "gradient_checkpointing", "use_return_dict", "return_dict", "output_attentions",
    "output_hidden_states", "torchscript", "id2label", "label2id", "problem_type", "prefix",
    "max_length", "min_length", "num_beams", "early_stopping", "no_repeat_ngram_size",
    "length_penalty", "chunk_size_feed_forward", "add_cross_attention", "tie_encoder_decoder",
    "pruned_heads", "finetuning_task", "cross_attention_hidden_size", "sep_token_id",
    "_attn_implementation_autoset", "_commit_hash", "quantization_config", "use_bfloat16",
}  # fmt: skip
_ARCHITECTURES = {
    "t5": "T5ForConditionalGeneration",
    "mt5": "MT5ForConditionalGeneration",
    "umt5": "UMT5ForConditionalGeneration",
}


def _scales_tied_output(hf: Mapping[str, Any]) -> bool:
    """Whether this HF family/config multiplies the decoder output by d_model**-0.5."""
    model_type = hf.get("model_type", "t5")
    if model_type == "mt5":
        return False
    if model_type == "t5" and "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False


def config_from_hf(
    hf: Mapping[str, Any], *, source: str = CONFIG_FILE, strict: bool = True
) -> T5Config:
    """T5Config from an HF T5/mT5/umT5 `config.json` dict (logits_via_embedding set later from
    the weights). Unknown keys raise unless strict=False; they are listed so the user can decide."""
    model_type = hf.get("model_type", "t5")
    if model_type not in _ARCHITECTURES:
        raise CheckpointError(
            f"{source}: model_type {model_type!r} is not a T5-family encoder-decoder "
            f"(supported: {sorted(_ARCHITECTURES)})"
        )
    unknown = sorted(set(hf) - _MAPPED_KEYS - _IGNORED_KEYS)
    if unknown and strict:
        raise CheckpointError(
            f"{source}: unknown config keys {unknown}; they may change the model. If they do "
            "not, pass strict_config=False (CLI: --no_strict_config) to ignore them."
        )
    if unknown:
        logging.warning("%s: ignoring unknown config keys %s", source, unknown)
    proj = hf.get("feed_forward_proj", "gated-gelu" if model_type != "t5" else "relu")
    if proj not in _ACTIVATIONS:
        raise CheckpointError(
            f"{source}: feed_forward_proj {proj!r} is not supported (supported: {sorted(_ACTIVATIONS)})"
        )
    try:
        return T5Config(
            vocab_size=int(hf["vocab_size"]),
            emb_dim=int(hf["d_model"]),
            num_heads=int(hf["num_heads"]),
            head_dim=int(hf["d_kv"]),
            mlp_dim=int(hf["d_ff"]),
            num_encoder_layers=int(hf["num_layers"]),
            num_decoder_layers=int(hf.get("num_decoder_layers") or hf["num_layers"]),
            mlp_activations=_ACTIVATIONS[proj],
            logits_via_embedding=_scales_tied_output(hf),
            per_layer_relpos_bias=model_type == "umt5",
            relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
            relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
            dropout_rate=float(hf.get("dropout_rate", 0.1)),
            layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
        )
    except KeyError as e:
        raise CheckpointError(f"{source}: required key {e.args[0]!r} is missing") from None


def config_to_hf(config: T5Config, *, model_type: str | None = None) -> dict[str, Any]:
    """HF `config.json` dict for `config` (model_type: t5, mt5 or umt5; picked when None)."""
    model_type = model_type or ("umt5" if config.per_layer_relpos_bias else "t5")
    if config.per_layer_relpos_bias != (model_type == "umt5"):
        raise CheckpointError(
            f"model_type {model_type!r} does not fit per_layer_relpos_bias="
            f"{config.per_layer_relpos_bias}: only umt5 has a relative bias in every layer"
        )
    if model_type == "mt5" and config.logits_via_embedding:
        raise CheckpointError("transformers' MT5 never scales tied logits: export as model_type t5")
    activations = tuple(config.mlp_activations)
    if activations not in _FEED_FORWARD_PROJ:
        raise CheckpointError(f"mlp_activations {activations} have no HF feed_forward_proj")
    return {
        "architectures": [_ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "d_model": config.emb_dim,
        "d_kv": config.head_dim,
        "d_ff": config.mlp_dim,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "feed_forward_proj": _FEED_FORWARD_PROJ[activations],
        "tie_word_embeddings": bool(config.logits_via_embedding),
        "is_encoder_decoder": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "use_cache": True,
    }


# safetensors dtype names -> numpy (ml_dtypes for bfloat16 and the float8s).
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}  # fmt: skip


def _open_safetensors(files: list[str]) -> dict[str, LazyArray]:
    weights: dict[str, LazyArray] = {}
    for file in files:
        with safe_open(file, framework="np") as f:
            for key in f.keys():
                tensor = f.get_slice(key)
                name = tensor.get_dtype()
                if name not in _SAFETENSORS_DTYPES:
                    raise CheckpointError(f"{file}: tensor {key!r} has unsupported dtype {name}")
                dtype = _SAFETENSORS_DTYPES[name]
                weights[key] = SafetensorsArray(file, key, tensor.get_shape(), dtype)
    return weights


def _read_pickle(files: list[str]) -> dict[str, LazyArray]:
    import torch  # only for the opt-in pickle path

    weights: dict[str, LazyArray] = {}
    for file in files:
        state = torch.load(file, map_location="cpu", weights_only=True)
        for key, tensor in state.items():
            tensor = tensor.detach()
            weights[key] = InMemoryArray(
                tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
            )
    return weights


def _shard_files(directory: str, index_file: str) -> list[str]:
    with open(os.path.join(directory, index_file)) as f:
        weight_map = json.load(f)["weight_map"]
    return [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]


def open_hf_weights(directory: str, *, allow_pickle: bool = False) -> dict[str, LazyArray]:
    """HF state dict, unread: safetensors (single or sharded); pickle (loaded) only if allowed."""
    if os.path.isfile(os.path.join(directory, SAFETENSORS_FILE)):
        return _open_safetensors([os.path.join(directory, SAFETENSORS_FILE)])
    if os.path.isfile(os.path.join(directory, SAFETENSORS_INDEX)):
        return _open_safetensors(_shard_files(directory, SAFETENSORS_INDEX))
    pickles = [f for f in PICKLE_FILES if os.path.isfile(os.path.join(directory, f))]
    if pickles and not allow_pickle:
        raise CheckpointError(
            f"{directory} holds only {pickles[0]}, a pickle file that can run code when loaded. "
            "Convert it to safetensors, or pass allow_pickle=True (CLI: --allow_pickle) to load "
            "it with torch.load(weights_only=True)."
        )
    if pickles:
        if pickles[0].endswith(".index.json"):
            return _read_pickle(_shard_files(directory, pickles[0]))
        return _read_pickle([os.path.join(directory, pickles[0])])
    raise CheckpointError(
        f"{directory} has no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}: is it a HF model directory?"
    )


def read_hf_config(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, CONFIG_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read the HF config {path}: {e}") from e


def open_hf_t5(
    directory: str, *, allow_pickle: bool = False, strict_config: bool = True
) -> tuple[T5Config, dict[str, LazyArray]]:
    """(T5Config, flat params in the contract layout, unread) of a HF T5/mT5/umT5 directory.

    Raises CheckpointMismatchError naming HF keys / our paths and both shapes when the weights do
    not fit the config, and on unused weights.
    """
    hf = read_hf_config(directory)
    config = config_from_hf(hf, source=os.path.join(directory, CONFIG_FILE), strict=strict_config)
    weights = open_hf_weights(directory, allow_pickle=allow_pickle)
    if "shared.weight" not in weights and "encoder.embed_tokens.weight" in weights:
        weights["shared.weight"] = weights["encoder.embed_tokens.weight"]
    for alias in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        if alias in weights and not lazy_arrays.equal(weights[alias], weights["shared.weight"]):
            raise CheckpointError(
                f"{directory}: {alias} differs from shared.weight (untied inputs)"
            )
        weights.pop(alias, None)
    scaled = config.logits_via_embedding
    lm_head = weights.pop("lm_head.weight", None)
    shared = weights.get("shared.weight")
    tied = scaled and (lm_head is None or lazy_arrays.equal(lm_head, shared))
    if not tied:
        head = shared if lm_head is None else lm_head
        if head is not None:
            weights["lm_head.weight"] = Scaled(head, config.emb_dim**-0.5) if scaled else head
    config = dataclasses.replace(config, logits_via_embedding=tied)
    flat: dict[str, LazyArray] = {}
    missing = []
    for path, (key, transpose) in param_names(config).items():
        if key not in weights:
            missing.append(f"{key} (our {path})")
            continue
        value = weights.pop(key)
        flat[path] = Transposed(value) if transpose else value
    if missing or weights:
        raise CheckpointMismatchError(
            f"weights in {directory} do not fit its config.json:"
            + (f"\n missing: {', '.join(missing[:20])}" if missing else "")
            + (f"\n unexpected: {', '.join(sorted(weights)[:20])}" if weights else "")
        )
    check_shapes(flat, param_shapes(config), source=directory)
    return config, flat


def load_hf_t5(
    directory: str,
    *,
    dtype: Any | None = None,
    allow_pickle: bool = False,
    strict_config: bool = True,
) -> tuple[T5Config, dict]:
    """(T5Config, params as a nested dict of numpy arrays) from a HF T5/mT5/umT5 directory
    (`open_hf_t5`, read whole; floating arrays cast to `dtype` unless it is None)."""
    config, flat = open_hf_t5(directory, allow_pickle=allow_pickle, strict_config=strict_config)
    params = materialize(flat, lambda v: np.ascontiguousarray(cast_floating(v, dtype)))
    return config, unflatten(params)


def hf_state_dict(params: Mapping[str, Any], config: T5Config) -> dict[str, np.ndarray]:
    """Our (LoRA-free) params -> HF state dict of numpy arrays, checked against `config`."""
    flat = flatten(params)
    lora = [p for p in flat if p.endswith(("/lora_a", "/lora_b"))]
    if lora:
        raise CheckpointError(
            f"params still hold LoRA leaves (e.g. {lora[0]}): merge them first (merge_lora)"
        )
    check_shapes(flat, param_shapes(config), source="the params to export")
    state = {}
    for path, (key, transpose) in param_names(config).items():
        value = np.asarray(flat[path])
        state[key] = np.ascontiguousarray(value.T if transpose else value)
    return state


def save_hf_t5(
    params: Mapping[str, Any],
    config: T5Config,
    output_dir: str,
    *,
    lora: Any | None = None,
    model_type: str | None = None,
    dtype: Any | None = None,
    overwrite: bool = False,
) -> str:
    """Writes a HF model directory (config.json, generation_config.json, model.safetensors).

    Args:
      params: our param tree; LoRA leaves are merged first (then `lora` is required).
      config: the architecture; model_type t5/mt5/umt5 (None: umt5 iff per-layer relpos).
      dtype: cast floating weights (e.g. "bfloat16"); None keeps them.
    Returns: the output directory.
    """
    if scanned.is_scanned(params):  # a scan_layers run: HF names each layer
        params = scanned.unstack_layers(params, config.param_scan_axis)
    if any(p.endswith("/lora_a") for p in flatten(params)):
        if lora is None:
            raise CheckpointError("params hold LoRA leaves: pass their LoraConfig to merge them")
        from fiat_t5x.models.lora import merge_lora

        params = merge_lora(params, lora)
    state = hf_state_dict(cast_tree(params, dtype), config)
    hf_config = config_to_hf(config, model_type=model_type)
    some = next(iter(state.values()))
    hf_config["dtype"] = str(some.dtype)
    generation = {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        save_file(state, os.path.join(tmp, SAFETENSORS_FILE), metadata={"format": "pt"})
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(hf_config, f, indent=2, sort_keys=True)
        with open(os.path.join(tmp, "generation_config.json"), "w") as f:
            json.dump(generation, f, indent=2)
    logging.info(
        "wrote a HF %s model (%d tensors) to %s", hf_config["model_type"], len(state), output_dir
    )
    return output_dir


__all__ = [
    "config_from_hf",
    "config_to_hf",
    "hf_state_dict",
    "load_hf_t5",
    "open_hf_t5",
    "open_hf_weights",
    "save_hf_t5",
]
