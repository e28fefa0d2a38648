"""Does preflight's memory estimate hold on a real accelerator? One device, one Flan-T5 LoRA step.

The step is our Trainer's jitted train step (donated state) for Flan-T5 <size> with LoRA r=8 on
q, v, Adafactor as gin/peft/lora.gin sets it, pod.gin's model settings (scanned layers, full
remat, layer axis first, autodiff matmuls, bf16 activations and frozen weights) and a packed
batch. The script

1. compiles it for the host CPU with abstract shapes, as `fiat-t5x preflight` does (XLA:CPU,
   loop-invariant hoisting off): preflight's estimate;
2. compiles it for the first device (the GPU/TPU) the same way: that backend's own estimate
   (`memory_analysis`);
3. puts random parameters on the device one array at a time (so the start-up's peak stays below
   the step's), creates the optimizer state, runs `--steps` real steps on random tokens and
   reads the allocator's peak (`memory_stats`), which it sets beside both estimates.

It imports JAX, flax, optax and `fiat_t5x.models` / `fiat_t5x.training` only (no gin, SeqIO or
TensorFlow). On the H200 (about 2 minutes; the first call compiles twice):

    PYTHONPATH=. python bench/aot_device_check.py --size xl --batch 16 --lengths 1024,256 \\
        --json aot_device_check.json

On a CPU, a quick check of the script itself (the device is then the CPU: no allocator stats):

    PYTHONPATH=. python bench/aot_device_check.py --size tiny --batch 4 --lengths 64,16 --steps 2

Prints one JSON record (also written to --json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import jax
import numpy as np

from fiat_t5x.models.config import T5Config
from fiat_t5x.models.lora import LoraConfig
from fiat_t5x.models.model import EncoderDecoderModel
from fiat_t5x.training.optimizers import TrainableSelector, adafactor, constant_schedule
from fiat_t5x.training.partitioning import Partitioner
from fiat_t5x.training.trainer import Trainer

# Flan-T5 sizes (gin/models/flan_t5/*.gin); "tiny" (vocab 384) checks the script on a CPU.
SIZES = {
    "tiny": dict(emb_dim=64, num_heads=4, head_dim=16, mlp_dim=256, layers=2, vocab_size=384),
    "base": dict(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048, layers=12),
    "large": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816, layers=24),
    "xl": dict(emb_dim=2048, num_heads=32, head_dim=64, mlp_dim=5120, layers=24),
    "xxl": dict(emb_dim=4096, num_heads=64, head_dim=64, mlp_dim=10240, layers=24),
}
GIB = 1024**3
# What preflight compiles with on the CPU (fiat_t5x.preflight.NO_CPU_HOISTING), given per compile
# here so that the accelerator's compile keeps its defaults.
NO_CPU_HOISTING = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


def model_for(size: str) -> EncoderDecoderModel:
    """Flan-T5 `size` with pod.gin's model settings and gin/peft/lora.gin's adapters."""
    sizes = dict(SIZES[size])
    layers = sizes.pop("layers")
    config = T5Config(
        vocab_size=sizes.pop("vocab_size", 32128),
        num_encoder_layers=layers,
        num_decoder_layers=layers,
        mlp_activations=("gelu", "linear"),
        logits_via_embedding=False,
        dtype="bfloat16",
        scan_layers=True,
        remat_policy="full",
        param_scan_axis=0,
        matmul_backward="autodiff",
        **sizes,
    )
    return EncoderDecoderModel(config, LoraConfig(rank=8, targets=("query", "value")), z_loss=1e-4)


def trainer_on(device: Any, model: EncoderDecoderModel) -> Trainer:
    schedule = constant_schedule(1e-3)
    return Trainer(
        model,
        Partitioner(devices=[device]),
        adafactor(schedule, multiply_by_parameter_scale=False),
        schedule,
        TrainableSelector(frozen_dtype="bfloat16"),
    )


def batch_shapes(rows: int, inputs: int, targets: int, sharding: Any) -> dict:
    """A packed batch's features (SeqIO's EncDecFeatureConverter with pack=True)."""
    lengths = {}
    for prefix, length in (("encoder", inputs), ("decoder", targets)):
        lengths.update({f"{prefix}_segment_ids": length, f"{prefix}_positions": length})
    lengths.update(encoder_input_tokens=inputs, decoder_input_tokens=targets)
    lengths.update(decoder_target_tokens=targets, decoder_loss_weights=targets)
    return {
        k: jax.ShapeDtypeStruct((rows, n), np.int32, sharding=sharding) for k, n in lengths.items()
    }


def random_batch(shapes: dict, vocab: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Two packed examples per row: the first 60% of each length is segment 1, the rest 2."""
    out = {}
    for prefix in ("encoder", "decoder"):
        rows, length = shapes[f"{prefix}_segment_ids"].shape
        cut = max(1, int(length * 0.6))
        segments = np.where(np.arange(length) < cut, 1, 2)
        positions = np.where(np.arange(length) < cut, np.arange(length), np.arange(length) - cut)
        out[f"{prefix}_segment_ids"] = np.tile(segments, (rows, 1)).astype(np.int32)
        out[f"{prefix}_positions"] = np.tile(positions, (rows, 1)).astype(np.int32)
    for name in ("encoder_input_tokens", "decoder_target_tokens"):
        out[name] = rng.integers(2, vocab, shapes[name].shape).astype(np.int32)
    targets = out["decoder_target_tokens"]
    decoder_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
    decoder_inputs[out["decoder_positions"] == 0] = 0  # each packed example starts at 0
    out["decoder_input_tokens"] = decoder_inputs
    out["decoder_loss_weights"] = np.ones_like(targets)
    return out


def random_arrays(shapes: Any, seed: int) -> Any:
    """Arrays of these ShapeDtypeStructs (with shardings), made one at a time on the device, so
    that no more than one array's fp32 draw is live besides what is already placed."""
    leaves, treedef = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    draws: dict[tuple, Any] = {}  # one compile per distinct (shape, dtype, sharding)

    def draw(key: jax.Array, shape: jax.ShapeDtypeStruct) -> jax.Array:
        kind = (shape.shape, np.dtype(shape.dtype).name, shape.sharding)
        if kind not in draws:
            draws[kind] = jax.jit(
                lambda k, s=shape: (0.02 * jax.random.normal(k, s.shape)).astype(s.dtype),
                out_shardings=shape.sharding,
            )
        return draws[kind](key)

    return jax.tree.unflatten(treedef, [draw(k, s) for k, s in zip(keys, leaves, strict=True)])


def memory_use(compiled: Any) -> dict[str, float]:
    """Per-device GiB of a compiled function, totalled as preflight does."""
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    total += m.temp_size_in_bytes
    return {
        "arguments_gib": m.argument_size_in_bytes / GIB,
        "outputs_gib": (m.output_size_in_bytes - m.alias_size_in_bytes) / GIB,
        "temporaries_gib": m.temp_size_in_bytes / GIB,
        "total_gib": total / GIB,
    }


def compile_step(trainer: Trainer, batch: dict, compiler_options: dict | None) -> tuple:
    start = time.perf_counter()
    compiled = trainer.compile_train_step(
        trainer.abstract_state(), trainer.frozen_shapes, batch, compiler_options=compiler_options
    )
    return compiled, time.perf_counter() - start


def _stats(device: Any) -> dict[str, float]:
    stats = device.memory_stats() or {}
    keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
    return {f"{k}_gib": stats[k] / GIB for k in keys if k in stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="xl")
    parser.add_argument("--batch", type=int, default=16, help="rows (packed)")
    parser.add_argument("--lengths", default="1024,256", help="inputs,targets")
    parser.add_argument("--steps", type=int, default=3, help="real steps on the device")
    parser.add_argument("--no_cpu_estimate", action="store_true", help="skip step 1")
    parser.add_argument("--json")
    args = parser.parse_args()
    inputs, targets = (int(n) for n in args.lengths.split(","))
    device = jax.devices()[0]
    model = model_for(args.size)
    record: dict[str, Any] = {
        "command": "python bench/aot_device_check.py "
        + " ".join(f"--{k}={v}" for k, v in vars(args).items() if v is not None and v is not False),
        "backend": jax.default_backend(),
        "device": device.device_kind,
        "jax": jax.__version__,
        "host": f"{platform.node()}, {os.cpu_count()} cores",
        "size": args.size,
        "batch": args.batch,
        "lengths": [inputs, targets],
        "at_start": _stats(device),
    }

    if not args.no_cpu_estimate:
        cpu_trainer = trainer_on(jax.devices("cpu")[0], model)
        cpu_batch = batch_shapes(
            args.batch, inputs, targets, cpu_trainer.partitioner.batch_sharding()
        )
        compiled, seconds = compile_step(cpu_trainer, cpu_batch, NO_CPU_HOISTING)
        record["preflight_estimate"] = {**memory_use(compiled), "compile_s": seconds}
        del compiled, cpu_trainer

    trainer = trainer_on(device, model)
    batch = batch_shapes(args.batch, inputs, targets, trainer.partitioner.batch_sharding())
    compiled, seconds = compile_step(trainer, batch, None)
    record["device_estimate"] = {**memory_use(compiled), "compile_s": seconds}
    record["after_compile"] = _stats(device)

    if args.steps:
        start = time.perf_counter()
        with trainer.partitioner.context():
            frozen = random_arrays(trainer.frozen_shapes, seed=1)
        state = trainer.state_from(random_arrays(trainer.trainable_shapes, seed=2))
        jax.block_until_ready((state, frozen))
        record["start_up_s"] = time.perf_counter() - start
        record["after_start_up"] = _stats(device)
        rng = np.random.default_rng(0)
        step_s, losses = [], []
        for _ in range(args.steps):
            tokens = random_batch(batch, model.config.vocab_size, rng)
            global_batch = trainer.partitioner.host_batch_to_global(tokens)
            t0 = time.perf_counter()
            state, metrics = compiled(state, frozen, global_batch)
            losses.append(float(metrics["loss"]))  # waits for the step
            step_s.append(time.perf_counter() - t0)
        record["steps"] = {"step_s": step_s, "loss": losses}
        record["after_steps"] = _stats(device)
        peak = record["after_steps"].get("peak_bytes_in_use_gib")
        if peak is not None:
            before = record["after_start_up"]["peak_bytes_in_use_gib"]
            record["comparison"] = {
                "measured_peak_gib": peak,
                "peak_set_by_the_steps": peak > before,
                "measured_over_device_estimate": peak / record["device_estimate"]["total_gib"],
            }
            if "preflight_estimate" in record:
                preflight = record["preflight_estimate"]["total_gib"]
                record["comparison"]["measured_over_preflight_estimate"] = peak / preflight
    print(json.dumps(record, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
