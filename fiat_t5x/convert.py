"""`fiat-t5x convert <subcommand>`: checkpoint conversions between T5X, Hugging Face and PEFT.

  t5x-to-hf    T5X checkpoint (classic or Orbax, scanned ok) or a trained MODEL_DIR
               -> HF model dir (LoRA merged)
  hf-to-t5x    HF model dir -> T5X-style Orbax checkpoint (+ fiat_t5x_config.json)
  export-peft  checkpoint with LoRA leaves, or a trained MODEL_DIR -> PEFT adapter dir
  merge-lora   HF base + PEFT adapter -> merged HF model dir

The model config comes from gin (`--gin_file gin/models/t5_1_1/base.gin`, plus
`--gin_bindings`), from `--config FILE.json` (T5Config fields), from the fiat_t5x_config.json
written by hf-to-t5x, or is inferred from the parameter shapes; `--set field=value` overrides
single fields (e.g. `--set mlp_activations="('silu','linear')"`). Outputs are written atomically.

`--model_dir` reads what `python -m fiat_t5x.train` wrote: its checkpoints hold only the trained
parameters, so the base is read again from the run's INITIAL_CHECKPOINT_PATH (or rebuilt from
RANDOM_SEED), and model + LoRA config come from MODEL_DIR/config.gin (or `--gin_file`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import glob
import json
import os
from typing import Any

from fiat_t5x import errors
from fiat_t5x.errors import UsageError


def _parse_gin(files: list[str], bindings: list[str]) -> None:
    from fiat_t5x.training import gin_cli

    flags = [f"--gin_bindings {b!r}" for b in bindings]
    gin_cli.parse_gin(gin_cli.GinArgs(gin_files=files, bindings=bindings, binding_flags=flags))


def _gin_instance(cls: type) -> Any:
    import gin

    try:
        return gin.get_configurable(cls)()
    except ValueError:
        return gin.configurable(cls)()


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--set {pair!r}: expected FIELD=VALUE")
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name] = value
    return out


def _model_config(args: argparse.Namespace, params: dict, checkpoint_dir: str | None):
    """T5Config from gin / --config / the saved config / shapes, with --set overrides, checked
    against the params (raises naming paths and shapes)."""
    from fiat_t5x.models.checkpoints import check_shapes, infer_config, param_shapes
    from fiat_t5x.models.checkpoints.t5x_writer import read_config_json
    from fiat_t5x.models.config import T5Config

    overrides = _overrides(args.set or [])
    lora = None
    if args.gin_file:
        from fiat_t5x.models.lora import LoraConfig

        _parse_gin(args.gin_file, args.gin_bindings or [])
        config = dataclasses.replace(_gin_instance(T5Config), **overrides)
        if any(p.endswith("/lora_a") for p in _flat_paths(params)):
            lora = _gin_instance(LoraConfig)
    elif args.config:
        config = _config_json(args.config, overrides)
    else:
        saved = read_config_json(checkpoint_dir) if checkpoint_dir else None
        config = (
            dataclasses.replace(saved, **overrides) if saved else infer_config(params, **overrides)
        )
    if lora is None and getattr(args, "lora_alpha", None) is not None:
        lora = _lora_from_flags(args, params)
    if lora is not None:
        check_shapes(params, param_shapes(config, lora), source=checkpoint_dir or "the checkpoint")
    else:
        _check_base(params, config, checkpoint_dir)
    return config, lora


def _config_json(path: str, overrides: dict[str, Any]):
    """T5Config from a JSON file of its fields (plus --set overrides)."""
    from fiat_t5x.models.config import T5Config

    with open(path, encoding="utf-8") as f:
        try:
            fields = json.load(f)
        except json.JSONDecodeError as e:
            raise UsageError(f"--config {path}: not JSON ({e})") from e
    names = {field.name for field in dataclasses.fields(T5Config)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise UsageError(
            f"--config {path}: unknown T5Config fields {unknown}{errors.closest(unknown[0], names)}"
        )
    return T5Config(**{**fields, **overrides})


def _check_base(params: dict, config: Any, source: str | None) -> None:
    from fiat_t5x.models.checkpoints import check_shapes, param_shapes

    base = {p: v for p, v in _flat(params).items() if not p.endswith(("/lora_a", "/lora_b"))}
    check_shapes(base, param_shapes(config), source=source or "the checkpoint")


def _flat(params: dict) -> dict:
    from fiat_t5x.models.checkpoints import flatten

    return flatten(params)


def _flat_paths(params: dict) -> list[str]:
    return list(_flat(params))


def _lora_from_flags(args: argparse.Namespace, params: dict):
    from fiat_t5x.models.lora import LoraConfig

    adapted = sorted(p[: -len("/lora_a")] for p in _flat(params) if p.endswith("/lora_a"))
    if not adapted:
        raise UsageError("the checkpoint holds no LoRA leaves (…/lora_a)")
    rank = _flat(params)[f"{adapted[0]}/lora_a"].shape[1]
    return LoraConfig(
        rank=rank,
        alpha=args.lora_alpha,
        dropout=args.lora_dropout,
        targets=tuple(adapted),
        rank_stabilized=args.rslora,
    )


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gin_file",
        action="append",
        help="gin model file(s), e.g. gin/models/t5_1_1/base.gin (+ gin/peft/lora.gin)",
    )
    parser.add_argument("--gin_bindings", action="append", help="extra gin bindings")
    parser.add_argument("--config", help="JSON file of T5Config fields")
    parser.add_argument(
        "--set", action="append", metavar="FIELD=VALUE", help="override one T5Config field"
    )
    parser.add_argument("--param_scan_axis", type=int, default=1, help="layer axis of scanned checkpoints")  # fmt: skip
    parser.add_argument("--initial_checkpoint_path", help="with --model_dir: the run's frozen base (default: its config.gin's INITIAL_CHECKPOINT_PATH; 'None' = random init)")  # fmt: skip
    parser.add_argument("--random_seed", type=int, help="with --model_dir: RANDOM_SEED of a random-init base (default: config.gin's, else 0)")  # fmt: skip


def _add_lora_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora_alpha", type=float, help="LoRA alpha (rank and targets come from the checkpoint); or use gin/peft/lora.gin")  # fmt: skip
    parser.add_argument("--lora_dropout", type=float, default=0.0)
    parser.add_argument("--rslora", action="store_true", help="rank-stabilised scale alpha/sqrt(r)")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fiat-t5x convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("t5x-to-hf", help="T5X checkpoint -> Hugging Face model directory")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--t5x_checkpoint", help="T5X checkpoint_N dir (or its parent dir)")
    source.add_argument("--model_dir", help="MODEL_DIR of a fiat_t5x.train run (newest checkpoint)")
    p.add_argument("--output", required=True)
    p.add_argument("--model_type", choices=("t5", "mt5", "umt5"), help="default: umt5 if per-layer relpos else t5")  # fmt: skip
    p.add_argument("--dtype", help="cast weights, e.g. bfloat16")
    p.add_argument("--overwrite", action="store_true")
    _add_config_flags(p)
    _add_lora_flags(p)

    p = sub.add_parser(
        "hf-to-t5x", help="Hugging Face model directory -> T5X-style Orbax checkpoint"
    )
    p.add_argument("--hf_model", required=True, help="dir with config.json + model.safetensors")
    p.add_argument("--output", required=True, help="model dir; writes checkpoint_<step>/ in it")
    p.add_argument("--step", type=int, default=0)
    p.add_argument("--dtype", help="cast weights, e.g. float32")
    p.add_argument("--allow_pickle", action="store_true", help="load pytorch_model.bin with torch.load(weights_only=True)")  # fmt: skip
    p.add_argument(
        "--no_strict_config", action="store_true", help="ignore unknown config.json keys"
    )
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("export-peft", help="checkpoint with LoRA leaves -> PEFT adapter directory")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="T5X-layout checkpoint holding lora_a/lora_b")
    source.add_argument(
        "--model_dir", help="MODEL_DIR of a fiat_t5x.train LoRA run (newest checkpoint)"
    )
    p.add_argument("--output", required=True)
    p.add_argument("--base_model", help="base_model_name_or_path recorded in adapter_config.json")
    p.add_argument("--overwrite", action="store_true")
    _add_config_flags(p)
    _add_lora_flags(p)

    p = sub.add_parser("merge-lora", help="HF base + PEFT adapter -> merged HF model directory")
    p.add_argument("--base", required=True, help="HF base model dir")
    p.add_argument("--adapter", required=True, help="PEFT adapter dir")
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true")
    return parser


def _is_training_run(path: str) -> bool:
    """A fiat_t5x.train MODEL_DIR or one of its checkpoint_N dirs (state/ beside meta/)."""
    candidates = [path, *sorted(glob.glob(os.path.join(path, "checkpoint_*")))]
    return any(
        os.path.isdir(os.path.join(c, "state")) and os.path.isdir(os.path.join(c, "meta"))
        for c in candidates
    )


def _load_t5x(path: str, args: argparse.Namespace) -> tuple[dict, Any, Any]:
    """(params, T5Config, LoraConfig or None) of a T5X checkpoint, config from the flags."""
    from fiat_t5x.models.checkpoints import CheckpointError, detect_t5x_format, load_t5x_params

    try:
        _, directory = detect_t5x_format(path)
        params = load_t5x_params(path, param_scan_axis=args.param_scan_axis)
    except CheckpointError as e:
        if _is_training_run(path):
            raise CheckpointError(
                f"{e}\n{path} is a fiat_t5x.train run (its checkpoints hold only the trained "
                "parameters): pass --model_dir instead"
            ) from e
        raise
    config, lora = _model_config(args, params, directory)
    return params, config, lora


def _load_run(args: argparse.Namespace) -> tuple[dict, Any, Any]:
    """(params, T5Config, LoraConfig or None) of a fiat_t5x.train MODEL_DIR: its newest
    checkpoint over its base, the model from its config.gin (or --gin_file)."""
    from fiat_t5x.models.checkpoints import CheckpointError
    from fiat_t5x.training.trained_run import FROM_CONFIG, load_trained_run

    if args.config or args.set or getattr(args, "lora_alpha", None) is not None:
        raise UsageError(
            "--config, --set and --lora_alpha do not apply with --model_dir: the model and its "
            "LoRA come from the run's gin config; change them with --gin_bindings"
        )
    base = args.initial_checkpoint_path
    base = FROM_CONFIG if base is None else (None if base == "None" else base)
    try:
        run = load_trained_run(
            args.model_dir, gin_files=args.gin_file or (), gin_bindings=args.gin_bindings or (),
            initial_checkpoint_path=base, random_seed=args.random_seed,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(f"{args.model_dir}: {e}") from e
    return run.params, run.model.config, run.model.lora


def _t5x_to_hf(args: argparse.Namespace) -> str:
    from fiat_t5x.models.checkpoints.hf_t5 import save_hf_t5

    if args.model_dir:
        params, config, lora = _load_run(args)
    else:
        params, config, lora = _load_t5x(args.t5x_checkpoint, args)
    return save_hf_t5(
        params, config, args.output, lora=lora, model_type=args.model_type, dtype=args.dtype,
        overwrite=args.overwrite,
    )  # fmt: skip


def _hf_to_t5x(args: argparse.Namespace) -> str:
    from fiat_t5x.models.checkpoints.hf_t5 import load_hf_t5
    from fiat_t5x.models.checkpoints.t5x_writer import save_t5x_params

    config, params = load_hf_t5(
        args.hf_model, dtype=args.dtype, allow_pickle=args.allow_pickle,
        strict_config=not args.no_strict_config,
    )  # fmt: skip
    return save_t5x_params(params, config, args.output, step=args.step, overwrite=args.overwrite)


def _export_peft(args: argparse.Namespace) -> str:
    from fiat_t5x.models.checkpoints.peft_adapter import save_peft_adapter

    if args.model_dir:
        params, config, lora = _load_run(args)
        if lora is None:
            raise UsageError(
                f"{args.model_dir} trained without LoRA (its gin MODEL has lora=None): there is "
                "no adapter to export; use `convert t5x-to-hf --model_dir` for the full model"
            )
    else:
        params, config, lora = _load_t5x(args.checkpoint, args)
    if lora is None:
        raise UsageError("export-peft needs the LoRA config: --gin_file gin/peft/lora.gin or --lora_alpha")  # fmt: skip
    return save_peft_adapter(
        params, config, lora, args.output, base_model_name_or_path=args.base_model,
        overwrite=args.overwrite,
    )  # fmt: skip


def _merge_lora(args: argparse.Namespace) -> str:
    from fiat_t5x.models.checkpoints.hf_t5 import load_hf_t5, save_hf_t5
    from fiat_t5x.models.checkpoints.peft_adapter import load_peft_adapter, with_adapter

    config, base = load_hf_t5(args.base)
    lora_params, lora = load_peft_adapter(args.adapter, config)
    with open(os.path.join(args.base, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    return save_hf_t5(
        with_adapter(base, lora_params), config, args.output, lora=lora, model_type=model_type,
        overwrite=args.overwrite,
    )  # fmt: skip


_COMMANDS = {
    "t5x-to-hf": _t5x_to_hf,
    "hf-to-t5x": _hf_to_t5x,
    "export-peft": _export_peft,
    "merge-lora": _merge_lora,
}


@errors.command("fiat-t5x convert")
def main(argv: list[str]) -> int:
    from fiat_t5x.models.checkpoints import CheckpointError

    args = _build_parser().parse_args(argv)
    try:
        output = _COMMANDS[args.command](args)
    except CheckpointError as e:
        raise UsageError(f"{args.command}: {e}") from e
    print(f"wrote {output}")
    return 0
