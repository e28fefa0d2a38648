"""Per-device memory of the network's loss + gradient under the scale knobs, compiled ahead of time.

The network half of issue #10: how much scanned layers, rematerialisation, activation sharding
constraints and bf16 frozen weights lower the per-device temporaries (saved activations, mostly) of
a LoRA (or full fine-tuning) gradient, on a fake CPU mesh with abstract parameters (nothing is
allocated). Only the network and loss: no optimizer, no trainer (bench/scale_aot.py compiles the
real train step). Each setting is printed with its ratio to the first one.

    XLA_FLAGS=--xla_force_host_platform_device_count=32 .venv/bin/python bench/network_memory.py \\
        --model flan_t5/xl --mesh 8x4 --batch 32 --lengths 1024,256

Settings (T5Config overrides; all in bf16 activations with packed inputs):
  plain        unrolled, no remat, custom matmul backward, no activation constraints (today's net)
  constrained  plain + activation sharding constraints (rules and mesh in context)
  scan_none    constrained + scan_layers (param_scan_axis 0), plain autodiff matmuls, no remat
  scan_full / scan_minimal / scan_dots   scan_none with remat "full" / "minimal" / "dots_saveable"
  scan_full_bf16   scan_full with the frozen weights cast to bf16
  scan_full_axis1  scan_full with T5X's param_scan_axis 1 (XLA:CPU then copies every stacked
                   weight into a layer-major transpose for the loop)
--rule NAME=AXIS overrides one logical-axis rule, e.g. --rule activation_embed=model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

import gin
from fiat_t5x.models.lora import LoraConfig, split_lora
from fiat_t5x.models.model import EncoderDecoderModel
from fiat_t5x.training.partitioning import STANDARD_LOGICAL_AXIS_RULES, Partitioner

REPO = pathlib.Path(__file__).resolve().parent.parent
GIB = 1024**3

_SCAN = {"scan_layers": True, "param_scan_axis": 0, "matmul_backward": "autodiff"}
SETTINGS: dict[str, dict] = {
    "plain": {"matmul_backward": "custom"},
    "constrained": {"matmul_backward": "custom"},
    "scan_none": {**_SCAN, "remat_policy": "none"},
    "scan_full": {**_SCAN, "remat_policy": "full"},
    "scan_minimal": {**_SCAN, "remat_policy": "minimal"},
    "scan_dots": {**_SCAN, "remat_policy": "dots_saveable"},
    "scan_full_bf16": {**_SCAN, "remat_policy": "full"},
    "scan_full_axis1": {**_SCAN, "remat_policy": "full", "param_scan_axis": 1},
}
UNCONSTRAINED = {"plain"}
BF16_FROZEN = {"scan_full_bf16"}


def gin_config(model: str):
    """The T5Config of `gin/models/<model>.gin` (e.g. flan_t5/xl)."""
    gin.clear_config()
    gin.add_config_file_search_path(str(REPO / "gin"))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)  # gin logs each search-path miss as an error
    try:
        gin.parse_config_files_and_bindings([f"models/{model}.gin"], [])
    finally:
        root.setLevel(level)
    try:
        return gin.query_parameter("%MODEL").scoped_configurable_fn().config
    finally:
        gin.clear_config()


def abstract_batch(partitioner: Partitioner, batch: int, lengths: tuple[int, int]) -> dict:
    """A packed SeqIO batch as ShapeDtypeStructs, split over `data`."""
    sharding = partitioner.batch_sharding()
    enc, dec = lengths
    shapes = {
        "encoder_input_tokens": enc,
        "encoder_segment_ids": enc,
        "encoder_positions": enc,
        "decoder_input_tokens": dec,
        "decoder_target_tokens": dec,
        "decoder_segment_ids": dec,
        "decoder_positions": dec,
        "decoder_loss_weights": dec,
    }
    return {
        k: jax.ShapeDtypeStruct((batch, n), jnp.int32, sharding=sharding) for k, n in shapes.items()
    }


def measure(args: argparse.Namespace, setting: str) -> dict:
    base = gin_config(args.model)
    config = dataclasses.replace(base, dtype="bfloat16", **SETTINGS[setting])
    lora = (
        LoraConfig(rank=8, alpha=8.0, targets=("query", "value")) if args.peft == "lora" else None
    )
    model = EncoderDecoderModel(config, lora)
    data, parts = (int(x) for x in args.mesh.split("x"))
    overrides = {name: None if axis in ("", "None") else axis for name, axis in args.rules}
    rules = tuple((name, overrides.get(name, axis)) for name, axis in STANDARD_LOGICAL_AXIS_RULES)
    partitioner = Partitioner(
        num_partitions=parts, logical_axis_rules=rules, devices=jax.devices()[: data * parts]
    )
    shapes = model.param_shapes()
    shardings = partitioner.param_shardings(shapes, model.logical_axes())

    def abstract(shape, sharding, bf16):
        dtype = jnp.bfloat16 if bf16 else shape.dtype
        return jax.ShapeDtypeStruct(shape.shape, dtype, sharding=sharding)

    flat_shapes = traverse_util.flatten_dict(shapes, sep="/")
    flat_shardings = traverse_util.flatten_dict(shardings, sep="/")
    params = {
        path: abstract(
            flat_shapes[path],
            flat_shardings[path],
            setting in BF16_FROZEN and lora is not None and "lora_" not in path,
        )
        for path in flat_shapes
    }
    params = traverse_util.unflatten_dict(params, sep="/")
    trainable, frozen = split_lora(params) if lora is not None else (params, {})
    batch = abstract_batch(partitioner, args.batch, args.lengths)

    def loss_and_grads(trainable, frozen, batch):
        def loss(trainable):
            flat = {**traverse_util.flatten_dict(frozen), **traverse_util.flatten_dict(trainable)}
            return model.loss(traverse_util.unflatten_dict(flat), batch)[0]

        return jax.value_and_grad(loss)(trainable)

    replicated = NamedSharding(partitioner.mesh, PartitionSpec())
    trainable_shardings = jax.tree.map(lambda s: s.sharding, trainable)
    step = jax.jit(loss_and_grads, out_shardings=(replicated, trainable_shardings))
    rules = () if setting in UNCONSTRAINED else partitioner.logical_axis_rules
    start = time.perf_counter()
    with jax.set_mesh(partitioner.mesh), nn.logical_axis_rules(rules):
        compiled = step.lower(trainable, frozen, batch).compile()
    memory = compiled.memory_analysis()
    return {
        "setting": setting,
        "model": args.model,
        "peft": args.peft,
        "mesh": args.mesh,
        "batch": args.batch,
        "lengths": list(args.lengths),
        "overrides": SETTINGS[setting],
        "rule_overrides": dict(args.rules),
        "per_device_gib": {
            "arguments": memory.argument_size_in_bytes / GIB,
            "outputs": memory.output_size_in_bytes / GIB,
            "temporaries": memory.temp_size_in_bytes / GIB,
        },
        "compile_s": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="flan_t5/xl", help="gin/models/<model>.gin")
    parser.add_argument("--peft", choices=("lora", "full"), default="lora")
    parser.add_argument("--mesh", default="8x4", help="data x model")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lengths", default="1024,256", help="encoder,decoder")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--rule", action="append", default=[], help="NAME=AXIS rule override")
    parser.add_argument("--json", help="append one JSON line per setting to this file")
    args = parser.parse_args(argv)
    args.lengths = tuple(int(x) for x in args.lengths.split(","))
    args.rules = [tuple(rule.split("=", 1)) for rule in args.rule]
    if any(len(rule) != 2 for rule in args.rules):
        print(f"network_memory: --rule takes NAME=AXIS, got {args.rule}", file=sys.stderr)
        return 2
    unknown_rules = sorted(
        {name for name, _ in args.rules} - dict(STANDARD_LOGICAL_AXIS_RULES).keys()
    )
    if unknown_rules:
        print(f"network_memory: --rule names no logical axis: {unknown_rules}", file=sys.stderr)
        return 2
    settings = args.settings.split(",")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        print(
            f"network_memory: unknown --settings {unknown}; known: {list(SETTINGS)}",
            file=sys.stderr,
        )
        return 2
    data, parts = (int(x) for x in args.mesh.split("x"))
    if jax.device_count() < data * parts:
        print(
            f"network_memory: --mesh {args.mesh} needs {data * parts} devices, JAX has "
            f"{jax.device_count()}; set XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{data * parts}",
            file=sys.stderr,
        )
        return 2
    print(
        f"# load average {os.getloadavg()[0]:.1f}; {jax.device_count()} {jax.default_backend()} devices"
    )
    first = None
    for setting in settings:
        row = measure(args, setting)
        temporaries = row["per_device_gib"]["temporaries"]
        first = first or temporaries
        row["temporaries_vs_first"] = round(temporaries / first, 3)
        print(
            f"{setting:15s} temporaries {temporaries:7.2f} GiB ({row['temporaries_vs_first']:.3f}x)"
            f"  arguments {row['per_device_gib']['arguments']:6.2f} GiB"
            f"  compile {row['compile_s']:.0f} s",
            flush=True,
        )
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
