"""Does the ahead-of-time memory estimate hold on a real accelerator? One device, one config.

Compiles our LoRA train step for Flan-T5 <size> (scanned, full remat, bf16 activations and frozen
weights, layer axis first: pod.gin's settings) with abstract shapes on this machine's backend and
prints XLA's per-device estimate (`memory_analysis`), as `fiat-t5x preflight` does. On a GPU it
then creates the parameters (random init, sharded start-up), runs `--steps` real steps on random
tokens, and prints the allocator's peak (`memory_stats`) beside the estimate. Needs no gin, SeqIO
or TensorFlow, so it runs where only JAX is installed:

    PYTHONPATH=. python bench/aot_device_check.py --size xl --batch 16 --lengths 1024,256
    # on the CPU, with and without XLA:CPU's loop-invariant hoisting (preflight turns it off):
    XLA_FLAGS=--xla_disable_hlo_passes=while-loop-invariant-code-motion \\
        PYTHONPATH=. python bench/aot_device_check.py --size xl --batch 16 --lengths 1024,256

Prints one JSON line (also written to --json).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
import optax

from fiat_t5x.models.config import T5Config
from fiat_t5x.models.lora import LoraConfig
from fiat_t5x.models.model import EncoderDecoderModel
from fiat_t5x.training.optimizers import TrainableSelector, constant_schedule
from fiat_t5x.training.partitioning import Partitioner
from fiat_t5x.training.trainer import Trainer

# Flan-T5 sizes (gin/models/flan_t5/*.gin).
SIZES = {
    "base": dict(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048, layers=12),
    "large": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816, layers=24),
    "xl": dict(emb_dim=2048, num_heads=32, head_dim=64, mlp_dim=5120, layers=24),
    "xxl": dict(emb_dim=4096, num_heads=64, head_dim=64, mlp_dim=10240, layers=24),
}
GIB = 1024**3


def model_for(size: str) -> EncoderDecoderModel:
    s = dict(SIZES[size])
    layers = s.pop("layers")
    config = T5Config(
        vocab_size=32128,
        num_encoder_layers=layers,
        num_decoder_layers=layers,
        dtype="bfloat16",
        scan_layers=True,
        remat_policy="full",
        param_scan_axis=0,
        matmul_backward="autodiff",
        **s,
    )
    return EncoderDecoderModel(config, LoraConfig())


def batch_shapes(rows: int, inputs: int, targets: int, sharding) -> dict:
    lengths = {"encoder_input_tokens": inputs, "decoder_input_tokens": targets}
    lengths.update(decoder_target_tokens=targets, decoder_loss_weights=targets)
    return {
        k: jax.ShapeDtypeStruct((rows, n), np.int32, sharding=sharding) for k, n in lengths.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="xl")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lengths", default="1024,256")
    parser.add_argument(
        "--steps", type=int, help="real steps to run (default: 3 on accelerators, 0 on the CPU)"
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    inputs, targets = (int(n) for n in args.lengths.split(","))
    device = jax.devices()[0]
    model = model_for(args.size)
    schedule = constant_schedule(1e-3)
    trainer = Trainer(
        model,
        Partitioner(devices=[device]),
        optax.adafactor(schedule),
        schedule,
        TrainableSelector(frozen_dtype="bfloat16"),
    )
    batch = batch_shapes(args.batch, inputs, targets, trainer.partitioner.batch_sharding())
    start = time.perf_counter()
    compiled = trainer.compile_train_step(trainer.abstract_state(), trainer.frozen_shapes, batch)
    m = compiled.memory_analysis()
    estimate = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    estimate += m.temp_size_in_bytes
    record = {
        "backend": jax.default_backend(),
        "device": device.device_kind,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "size": args.size,
        "batch": args.batch,
        "lengths": [inputs, targets],
        "compile_s": time.perf_counter() - start,
        "estimate": {
            "arguments_gib": m.argument_size_in_bytes / GIB,
            "temporaries_gib": m.temp_size_in_bytes / GIB,
            "total_gib": estimate / GIB,
        },
    }
    steps = args.steps if args.steps is not None else (jax.default_backend() != "cpu") * 3
    if steps:
        state, frozen = trainer.initial_state(None, seed=0)
        after_start = device.memory_stats() or {}
        rng = np.random.default_rng(0)
        step_times = []
        for _ in range(steps):
            tokens = {k: rng.integers(2, 32000, s.shape).astype(np.int32) for k, s in batch.items()}
            tokens["decoder_loss_weights"] = np.ones_like(tokens["decoder_loss_weights"])
            t0 = time.perf_counter()
            state, metrics = trainer.train_step(
                state, frozen, trainer.partitioner.host_batch_to_global(tokens)
            )
            jax.block_until_ready(metrics)
            step_times.append(time.perf_counter() - t0)
        stats = device.memory_stats() or {}
        record["measured"] = {
            "in_use_after_start_up_gib": after_start.get("bytes_in_use", 0) / GIB,
            "peak_after_start_up_gib": after_start.get("peak_bytes_in_use", 0) / GIB,
            "peak_after_steps_gib": stats.get("peak_bytes_in_use", 0) / GIB,
            "step_s": step_times,
            "loss": float(metrics["loss"]),
        }
    print(json.dumps(record))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
