"""Train-step throughput: our JAX train step vs transformers (+PEFT) on the CPU, same threads.

One step = forward + backward + Adafactor update on a random full-length batch (no padding, no
packing), in fp32 or in mixed bf16 (`--precisions`: our bf16 activations with fp32 trainable
parameters, the frozen kernels held in bf16 as a bf16 run holds them, against PyTorch's CPU
autocast to bf16 with fp32 weights, which it rounds to bf16 in every forward pass). "ours" is
`fiat_t5x.training.trainer.Trainer.train_step`, the step `train.py` runs (jitted, donated
state, gradients only of the trainable parameters: the LoRA factors, or all), with T5X's
Adafactor; the peer is transformers' T5 (+ PEFT LoRA r=8, alpha=8 on q and v)
with transformers' Adafactor in the same settings (factored second moments, decay 0.8, update
clipping 1.0, relative scale by the parameter RMS, lr 1e-3).

Fairness on a shared machine: each side runs in its own worker process, pinned to the same CPU
set (`--threads` CPUs; PyTorch gets as many intra-op threads, XLA's pools cannot use more CPUs
than the affinity allows); both workers stay alive and the parent interleaves their timed windows
(ours, peer, peer, ours, ...), so both sides see the same load. Reported: the median of the
windows' steps/s per side, the ratio of the medians and the median of the per-pair ratios.

    .venv/bin/python bench/model_step.py --configs small,medium --threads 1,2
    .venv/bin/python bench/model_step.py --configs small,medium --windows 5 --compare-untuned
    .venv/bin/python bench/model_step.py --configs small,medium --compare-plain-attention
    .venv/bin/python bench/model_step.py --configs medium --precisions float32,bfloat16
    .venv/bin/python bench/model_step.py --configs medium --variants lora --precisions bfloat16 \
        --compare-torch-low-precision-base
    .venv/bin/python bench/model_step.py --configs medium --compare-checkout ../before --skip-torch
    .venv/bin/python bench/model_step.py --configs tiny --windows 3 --skip-torch
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# Import-light on purpose: workers set CPU affinity (and XLA flags) before importing jax/torch.


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """A model size (a `fiat_t5x.models.presets` function) and the batch it trains on."""

    name: str
    preset: str
    batch_size: int
    encoder_length: int
    decoder_length: int
    steps_per_window: int = 1
    preset_overrides: tuple[tuple[str, Any], ...] = ()

    def model_config(self, **overrides: Any):
        from fiat_t5x.models import presets

        return getattr(presets, self.preset)(**{**dict(self.preset_overrides), **overrides})

    @property
    def tokens(self) -> int:
        return self.batch_size * (self.encoder_length + self.decoder_length)


CONFIGS = {
    "tiny": BenchConfig("tiny", "tiny", 16, 64, 64, steps_per_window=20),
    "small": BenchConfig("small", "bench_small", 8, 128, 64, steps_per_window=3),
    "medium": BenchConfig("medium", "bench_medium", 8, 256, 64, steps_per_window=1),
}
LORA_RANK, LORA_ALPHA = 8, 8.0


def random_batch(bench: BenchConfig, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Full-length unpacked batch in SeqIO's EncDecFeatureConverter names; int32 [batch, length]."""
    rng = np.random.default_rng(seed)
    shape_enc = (bench.batch_size, bench.encoder_length)
    shape_dec = (bench.batch_size, bench.decoder_length)
    enc = rng.integers(3, vocab_size, shape_enc).astype(np.int32)
    tgt = rng.integers(3, vocab_size, shape_dec).astype(np.int32)
    dec = np.concatenate([np.zeros((bench.batch_size, 1), np.int32), tgt[:, :-1]], axis=1)
    return {
        "encoder_input_tokens": enc,
        "decoder_input_tokens": dec,
        "decoder_target_tokens": tgt,
        "decoder_loss_weights": np.ones_like(tgt),
    }


# ----------------------------------------------------------------------------- the two steps


class OursStep:
    """Our `Trainer.train_step` on one device; `run(n)` times n steps (dispatch to result)."""

    def __init__(self, bench: BenchConfig, lora: bool, *, dtype: str | None = None) -> None:
        import jax

        from fiat_t5x.models.lora import LoraConfig
        from fiat_t5x.models.model import EncoderDecoderModel
        from fiat_t5x.training import optimizers, partitioning
        from fiat_t5x.training.trainer import Trainer

        overrides = {} if dtype is None else {"dtype": dtype}
        config = bench.model_config(**overrides)
        lora_config = LoraConfig(rank=LORA_RANK, alpha=LORA_ALPHA, targets=("query", "value"))
        model = EncoderDecoderModel(config, lora_config if lora else None)
        schedule = optimizers.constant_schedule(1e-3)
        self.trainer = Trainer(
            model,
            partitioning.Partitioner(num_partitions=1),
            optimizers.adafactor(schedule),
            schedule,
            optimizers.TrainableSelector(None if lora else optimizers.ALL_PATTERNS),
        )
        params = jax.device_get(model.init_params(jax.random.PRNGKey(0)))
        self.state, self.frozen = self.trainer.create_state(params)
        host = random_batch(bench, config.vocab_size)
        self.batch = self.trainer.partitioner.host_batch_to_global(host)
        self.metrics: Any = None
        self.run(1)  # compiles
        self.flops = self.trainer.flops_per_step

    def step(self) -> None:
        self.state, self.metrics = self.trainer.train_step(self.state, self.frozen, self.batch)

    def run(self, steps: int) -> float:
        import jax

        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        jax.block_until_ready((self.state, self.metrics))
        return time.perf_counter() - start

    def loss(self) -> float:
        return float(self.metrics["loss"])


class TorchStep:
    """transformers' T5 (+ PEFT LoRA) with transformers' Adafactor, on `device`.

    `autocast_dtype` (e.g. torch.bfloat16) runs the forward pass under torch.autocast with fp32
    weights, the mixed precision that our bf16 activations with fp32 trainable parameters
    correspond to. `low_precision_base` also holds the frozen Linear and Embedding weights in
    that dtype (what a PEFT user who loads the base in bf16 runs), so autocast has nothing of
    theirs to round in each forward pass: the peer of our frozen kernels held in bf16.
    """

    def __init__(
        self,
        bench: BenchConfig,
        lora: bool,
        *,
        device: str = "cpu",
        autocast_dtype=None,
        low_precision_base: bool = False,
    ) -> None:
        import torch
        import transformers
        from transformers.optimization import Adafactor

        from fiat_t5x.models.checkpoints.hf_t5 import config_to_hf

        torch.manual_seed(0)
        config = bench.model_config(dtype="float32")
        hf_config = transformers.T5Config.from_dict(config_to_hf(config))
        model = transformers.T5ForConditionalGeneration(hf_config)
        if lora:
            import peft

            model = peft.get_peft_model(
                model,
                peft.LoraConfig(
                    r=LORA_RANK,
                    lora_alpha=LORA_ALPHA,
                    target_modules=["q", "v"],
                    lora_dropout=0.0,
                ),
            )
        if low_precision_base:
            _hold_frozen_weights_in(model, autocast_dtype)
        self.model = model.to(device).train()
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.optimizer = Adafactor(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=1e-3,
            relative_step=False,
            scale_parameter=True,
            warmup_init=False,
            clip_threshold=1.0,
            decay_rate=-0.8,
            beta1=None,
        )
        host = random_batch(bench, config.vocab_size)
        self.batch = {
            "input_ids": torch.from_numpy(host["encoder_input_tokens"].astype(np.int64)),
            "decoder_input_ids": torch.from_numpy(host["decoder_input_tokens"].astype(np.int64)),
            "labels": torch.from_numpy(host["decoder_target_tokens"].astype(np.int64)),
        }
        self.batch = {k: v.to(device) for k, v in self.batch.items()}
        self.last_loss: Any = None
        self.run(1)

    def step(self) -> None:
        import torch

        if self.autocast_dtype is None:
            loss = self.model(**self.batch).loss
        else:
            with torch.autocast(self.device.split(":")[0], dtype=self.autocast_dtype):
                loss = self.model(**self.batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = loss.detach()

    def run(self, steps: int) -> float:
        import torch

        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def loss(self) -> float:
        return float(self.last_loss)


TORCH_LOW_PRECISION_BASE = "torch-low-precision-base"


def _hold_frozen_weights_in(model: Any, dtype: Any) -> None:
    """Frozen `nn.Linear` / `nn.Embedding` weights in `dtype` (norm weights and trainable ones
    unchanged): the rule of `optimizers.held_in_compute_dtype` on the PyTorch side."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
            weight = module.weight
            if not weight.requires_grad:
                weight.data = weight.data.to(dtype)


# ----------------------------------------------------------------------------- worker processes


def _use_plain_attention() -> None:
    """Give our step the accelerator path's attention ([b, l, h, d] einsums, `jax.nn.softmax`)
    while keeping the CPU matmul backward: the attention as it was before the CPU path, for an
    A/B against it in the same run (`--compare-plain-attention`)."""
    import jax

    from fiat_t5x.models import layers

    layers.softmax_fused_backward = jax.nn.softmax
    context = layers.MultiHeadAttention._context

    def plain_context(self, *args, cpu_path: bool = False, **kwargs):
        return context(self, *args, cpu_path=False, **kwargs)

    layers.MultiHeadAttention._context = plain_context


def _worker(spec: dict) -> None:
    """Build one step pinned to `spec['cpus']`, warm it up, then time windows on request.

    Protocol (JSON lines): prints {"ready": ..., "flops": ...}; each stdin line "N" runs N steps
    and prints {"seconds": ...}; "quit" exits.
    """
    os.sched_setaffinity(0, set(spec["cpus"]))
    threads = len(spec["cpus"])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    bench = CONFIGS[spec["config"]]
    info: dict[str, Any] = {"ready": True, "impl": spec["impl"]}
    if spec["impl"] == "torch":
        # The peer keeps PyTorch's allocator behaviour: no fiat_t5x host tuning in its process.
        os.environ["FIAT_T5X_CPU_TUNING"] = "0"
        import torch

        torch.set_num_threads(threads)
        autocast = None if spec["precision"] == "float32" else getattr(torch, spec["precision"])
        runner: Any = TorchStep(
            bench,
            spec["lora"],
            autocast_dtype=autocast,
            low_precision_base=spec.get("low_precision_base", False),
        )
        info["settings"] = torch_settings()
    else:
        if spec["impl"] == "ours-untuned":
            os.environ["FIAT_T5X_CPU_TUNING"] = "0"
        if spec["impl"] == "ours-plain-attention":
            _use_plain_attention()
        if spec.get("xla_flags"):
            os.environ["XLA_FLAGS"] = (
                f"{os.environ.get('XLA_FLAGS', '')} {spec['xla_flags']}".strip()
            )
        runner = OursStep(bench, spec["lora"], dtype=spec["precision"])
        info["flops"] = runner.flops
        info["settings"] = xla_settings()
    runner.run(spec["warmup"])
    info["loss"] = runner.loss()
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            return
        cpu_start = time.process_time()
        seconds = runner.run(int(command))
        cpu = time.process_time() - cpu_start
        print(json.dumps({"seconds": seconds, "cpu_seconds": cpu}), flush=True)


def torch_settings() -> dict[str, Any]:
    import torch

    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "mkl": torch.backends.mkl.is_available(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def xla_settings() -> dict[str, Any]:
    import jax

    import fiat_t5x

    return {
        "fiat_t5x": os.path.dirname(os.path.abspath(fiat_t5x.__file__)),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }


class _Worker:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        env = dict(os.environ)
        if spec.get("checkout"):
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [spec["checkout"], env.get("PYTHONPATH")])
            )
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"worker {self.spec} exited with {self.proc.returncode}")
        return json.loads(line)

    def window(self, steps: int) -> tuple[float, float]:
        """(steps/s by the wall clock, steps per CPU-second of this worker)."""
        self.proc.stdin.write(f"{steps}\n")
        reply = self._read()
        return steps / reply["seconds"], steps / max(reply["cpu_seconds"], 1e-9)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait()


def interleaved(
    specs: list[dict], windows: int, steps: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Steps/s of every spec's worker, windows interleaved (order reversed every other round)."""
    workers = []
    try:
        for spec in specs:
            workers.append(_Worker(spec))
        rates: dict[str, list[float]] = {w.spec["label"]: [] for w in workers}
        cpu_rates: dict[str, list[float]] = {w.spec["label"]: [] for w in workers}
        for i in range(windows):
            order = workers if i % 2 == 0 else workers[::-1]
            for w in order:
                wall, cpu = w.window(steps)
                rates[w.spec["label"]].append(wall)
                cpu_rates[w.spec["label"]].append(cpu)
            log(
                f"  window {i + 1}/{windows} steps/s (per CPU-s): "
                + ", ".join(f"{k} {v[-1]:.3f} ({cpu_rates[k][-1]:.3f})" for k, v in rates.items())
            )
    finally:
        for w in workers:
            w.close()
    return {
        "rates": rates,
        "cpu_rates": cpu_rates,
        "info": {w.spec["label"]: w.info for w in workers},
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default="small,medium", help=f"of {sorted(CONFIGS)}")
    parser.add_argument("--variants", default="lora,full", help="lora and/or full")
    parser.add_argument("--threads", default="1", help="comma list: CPUs (= threads) per side")
    parser.add_argument(
        "--precisions",
        default="float32",
        help="comma list of float32 (both sides fp32) and bfloat16 (mixed: bf16 activations)",
    )
    parser.add_argument("--windows", type=int, default=5, help="timed windows per side")
    parser.add_argument("--steps", type=int, help="steps per window (default: per config)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument(
        "--compare-untuned",
        action="store_true",
        help="also time our step without the XLA:CPU tuning (FIAT_T5X_CPU_TUNING=0)",
    )
    parser.add_argument(
        "--compare-plain-attention",
        action="store_true",
        help="also time our step with the accelerator path's attention (no CPU attention path)",
    )
    parser.add_argument(
        "--xla-variants",
        help="extra runs of our step with more XLA flags, 'label=--flag=v --flag2=w;label2=...'",
    )
    parser.add_argument(
        "--compare-checkout",
        help="also time our step as another checkout's fiat_t5x has it (a path, e.g. a "
        "`git worktree` of an earlier commit): an A/B of a code change in one run",
    )
    parser.add_argument(
        "--compare-torch-low-precision-base",
        action="store_true",
        help="also time PyTorch with its frozen Linear/Embedding weights held in the autocast "
        "dtype (bf16 rows only: the peer of our frozen kernels held in bf16)",
    )
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(json.loads(args.worker))
        return 0

    available = sorted(os.sched_getaffinity(0))
    impls = [("ours", "ours", "")]
    if args.compare_checkout:
        impls.append(("ours@checkout", "ours", ""))
    if args.compare_untuned:
        impls.append(("ours-untuned", "ours-untuned", ""))
    if args.compare_plain_attention:
        impls.append(("ours-plain-attention", "ours-plain-attention", ""))
    for entry in filter(None, (args.xla_variants or "").split(";")):
        label, _, flags = entry.partition("=")
        impls.append((f"ours[{label}]", "ours", flags))
    impls += [] if args.skip_torch else [("torch", "torch", "")]
    if args.compare_torch_low_precision_base:
        impls.append((TORCH_LOW_PRECISION_BASE, "torch", ""))
    started = {"loadavg": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"machine: {_cpu_model()}, {len(available)} CPUs; load average {started['loadavg']}")
    results = []
    for name in args.configs.split(","):
        bench = CONFIGS[name]
        steps = args.steps or bench.steps_per_window
        for threads in (int(t) for t in args.threads.split(",")):
            if threads > len(available):
                raise SystemExit(f"--threads {threads}: only {len(available)} CPUs available")
            for variant, precision in itertools.product(
                args.variants.split(","), args.precisions.split(",")
            ):
                print(f"{name} {variant} {precision} {threads} thread(s):", flush=True)
                specs = [
                    {
                        "label": label,
                        "impl": impl,
                        "xla_flags": flags,
                        "checkout": args.compare_checkout if label == "ours@checkout" else None,
                        "low_precision_base": label == TORCH_LOW_PRECISION_BASE,
                        "config": name,
                        "lora": variant == "lora",
                        "precision": precision,
                        "cpus": available[:threads],
                        "warmup": args.warmup,
                    }
                    for label, impl, flags in impls
                    # In fp32 PyTorch's frozen weights are fp32 already: no second peer.
                    if not (label == TORCH_LOW_PRECISION_BASE and precision == "float32")
                ]
                run = interleaved(specs, args.windows, steps, lambda s: print(s, flush=True))
                results.append(
                    {
                        "config": name,
                        "variant": variant,
                        "precision": precision,
                        "threads": threads,
                        "steps_per_window": steps,
                        "loadavg": os.getloadavg(),
                        **run,
                    }
                )
    summary = summarise(results)
    print()
    print(summary)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"started": started, "results": results}, f, indent=1)
    return 0


def summarise(results: list[dict]) -> str:
    """Markdown table: medians per side and the ratios against the peer (wall clock and CPU)."""
    lines = [
        "| config | variant | precision | threads | impl | steps/s (median) | tokens/s | windows min-max | "
        "vs peer: ratio of medians | paired median | per CPU-second: ratio of medians |",
        "|---|---|---|---:|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        bench = CONFIGS[r["config"]]
        peer, peer_cpu = r["rates"].get("torch"), r["cpu_rates"].get("torch")
        for label, rates in r["rates"].items():
            median = statistics.median(rates)
            ratio = paired = cpu_ratio = ""
            if peer and label != "torch":
                ratio = f"{median / statistics.median(peer):.2f}"
                paired = f"{statistics.median(a / b for a, b in zip(rates, peer, strict=True)):.2f}"
                cpu = statistics.median(r["cpu_rates"][label])
                cpu_ratio = f"{cpu / statistics.median(peer_cpu):.2f}"
            name = label
            if label in ("torch", TORCH_LOW_PRECISION_BASE):
                name = "transformers" + ("+PEFT" if r["variant"] == "lora" else "")
                name += ", frozen weights in bf16" if label != "torch" else ""
            lines.append(
                f"| {r['config']} | {r['variant']} | {r.get('precision', 'float32')} | "
                f"{r['threads']} | {name} | {median:.3f} | "
                f"{median * bench.tokens:,.0f} | {min(rates):.3f}-{max(rates):.3f} | {ratio} | "
                f"{paired} | {cpu_ratio} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
