"""Train-step throughput on one GPU: our JAX train step vs transformers (+PEFT), bf16 and fp32.

The same steps as `bench/model_step.py` (our `Trainer.train_step` with T5X's Adafactor against
transformers' T5 + PEFT LoRA r=8 on q,v with transformers' Adafactor) on CUDA, for the small and
medium bench configs (LoRA and full fine-tuning), then Flan-T5 base (and large) shapes. bf16 is
mixed precision on both sides: our bf16 activations with fp32 parameters, PyTorch's
`torch.autocast(bfloat16)` with fp32 weights. fp32 is strict fp32 on both sides (JAX matmul
precision "highest", PyTorch's default, no TF32). Each side runs in its own process (torch first,
then JAX), cells in priority order; a cell that would start after its side's time budget is
skipped and listed. Per cell: warm-up (and compile), then the median of `--windows` windows of
about `--window-s` seconds: steps/s, tokens/s, and MFU = the matmul FLOPs of our traced step
(`fiat_t5x.training.flops.jaxpr_flops`, used for both sides) x steps/s / peak (H200 dense: bf16 989 TFLOP/s, fp32 67 TFLOP/s).
Prints a table last; writes JSON to `$OUT/gpu_step.json` when `OUT` is set (or `--json`).

    PYTHONPATH=. python3 bench/gpu_step.py                # on the GPU machine, < 4 min
    PYTHONPATH=. python3 bench/gpu_step.py --quick        # plumbing check on a CPU (tiny shapes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from model_step import CONFIGS, BenchConfig  # noqa: E402

PEAK_FLOPS = {"bfloat16": 989e12, "float32": 67e12}  # H200 SXM dense
FLAN_T5 = {
    "flan_t5_base": BenchConfig(
        "flan_t5_base",
        "bench_medium",
        batch_size=32,
        encoder_length=512,
        decoder_length=128,
        preset_overrides=(("num_encoder_layers", 12), ("num_decoder_layers", 12)),
    ),
    "flan_t5_large": BenchConfig(
        "flan_t5_large",
        "bench_medium",
        batch_size=16,
        encoder_length=512,
        decoder_length=128,
        preset_overrides=(
            ("emb_dim", 1024),
            ("num_heads", 16),
            ("mlp_dim", 2816),
            ("num_encoder_layers", 24),
            ("num_decoder_layers", 24),
        ),
    ),
}
BENCHES = {**CONFIGS, **FLAN_T5}
# (config, variant, dtype) in priority order: bf16 first (what GPUs train in), the Flan-T5 base
# LoRA shape early (issue #10 asks for it), then issue #16's fp32 cells.
CELLS = (
    ("medium", "lora", "bfloat16"),
    ("flan_t5_base", "lora", "bfloat16"),
    ("medium", "full", "bfloat16"),
    ("small", "lora", "bfloat16"),
    ("small", "full", "bfloat16"),
    ("flan_t5_large", "lora", "bfloat16"),
    ("flan_t5_base", "full", "bfloat16"),
    ("medium", "lora", "float32"),
    ("medium", "full", "float32"),
    ("small", "lora", "float32"),
    ("small", "full", "float32"),
)
# --quick: tiny shapes, one cell per variant and dtype (both code paths of each side).
QUICK_CELLS = (("tiny", "lora", "bfloat16"), ("tiny", "full", "float32"))
QUICK = BenchConfig("tiny", "tiny", 4, 32, 16)


def _bench(name: str, quick: bool) -> BenchConfig:
    return QUICK if quick else BENCHES[name]


def _cells(args) -> tuple[tuple[str, str, str], ...]:
    """The cells to run: --cells (config:variant:dtype,...), else the quick or full grid."""
    if args.cells:
        return tuple(tuple(c.split(":")) for c in args.cells.split(","))  # type: ignore[misc]
    return QUICK_CELLS if args.quick else CELLS


def _timed_windows(run, windows: int, window_s: float) -> tuple[list[float], int]:
    """Steps/s of `windows` windows of n steps each, n chosen so a window lasts ~window_s."""
    one = run(1)
    steps = max(1, round(window_s / max(one, 1e-6)))
    return [steps / run(steps) for _ in range(windows)], steps


def _side(side: str, args) -> list[dict[str, Any]]:
    """Every cell of one side, in this process; starts no cell that would likely end after
    the side's budget (judged by the slowest cell so far, the first one excepted: it also pays
    for starting the backend, 80 s of a JAX side on the H200)."""
    started = time.perf_counter()
    rows = []
    slowest = 0.0
    for name, variant, dtype in _cells(args):
        cell = {"config": name, "variant": variant, "dtype": dtype, "impl": side}
        if time.perf_counter() - started + slowest > args.side_budget_s:
            rows.append({**cell, "skipped": "time budget"})
            continue
        bench = _bench(name, args.quick)
        t0 = time.perf_counter()
        try:
            if side == "jax":
                cell.update(_jax_cell(bench, variant, dtype, args))
            else:
                cell.update(_torch_cell(bench, variant, dtype, args))
        except Exception as e:  # one failing cell (e.g. out of memory) must not lose the others
            cell["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        cell["cell_s"] = time.perf_counter() - t0
        if len(rows) > 0:
            slowest = max(slowest, cell["cell_s"])
        cell["tokens_per_step"] = bench.tokens
        rows.append(cell)
        print(json.dumps(cell), file=sys.stderr, flush=True)
    return rows


def _jax_cell(bench: BenchConfig, variant: str, dtype: str, args) -> dict[str, Any]:
    import jax
    from model_step import OursStep

    precision = "highest" if dtype == "float32" else None
    t0 = time.perf_counter()
    with jax.default_matmul_precision(precision):
        runner = OursStep(bench, variant == "lora", dtype=dtype)
        compile_s = time.perf_counter() - t0
        runner.run(args.warmup)
        rates, steps = _timed_windows(runner.run, args.windows, args.window_s)
    out = {
        "rates": rates,
        "steps_per_window": steps,
        "flops_per_step": runner.flops,
        "compile_and_first_step_s": compile_s,
        "loss": runner.loss(),
        "device": str(jax.devices()[0].device_kind),
    }
    del runner
    return out


def _torch_cell(bench: BenchConfig, variant: str, dtype: str, args) -> dict[str, Any]:
    import torch
    from model_step import TorchStep

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    autocast = torch.bfloat16 if dtype == "bfloat16" else None
    with torch.device(device):  # parameters are created on the GPU (fast init)
        runner = TorchStep(bench, variant == "lora", device=device, autocast_dtype=autocast)
    runner.run(args.warmup)
    rates, steps = _timed_windows(runner.run, args.windows, args.window_s)
    out = {
        "rates": rates,
        "steps_per_window": steps,
        "loss": runner.loss(),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
    }
    del runner
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return out


def _run_side_process(side: str, args, deadline_s: float) -> list[dict[str, Any]]:
    """One side's rows; a side still running at `deadline_s` is stopped and its finished cells
    (streamed to stderr as JSON lines) are kept."""
    command = [sys.executable, __file__, "--side", side, *args.passthrough]
    try:
        out = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=deadline_s
        )
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        rows = [json.loads(line) for line in stderr.splitlines() if line.startswith('{"config"')]
        return rows + [{"impl": side, "error": f"stopped after {deadline_s:.0f} s"}]
    sys.stderr.write(out.stderr[-3000:] if out.returncode else "")
    lines = out.stdout.strip().splitlines()
    if out.returncode or not lines:
        return [{"impl": side, "error": f"side process exited {out.returncode}"}]
    return json.loads(lines[-1])


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per cell, both sides' median steps/s, tokens/s, MFU and the ratio."""
    cells: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if "config" in r:
            cells.setdefault((r["config"], r["variant"], r["dtype"]), {})[r["impl"]] = r
    lines = [
        "| config | variant | dtype | JAX steps/s | torch steps/s | JAX / torch | JAX tokens/s | "
        "JAX MFU | torch MFU | compile s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (name, variant, dtype), sides in cells.items():
        ours, theirs = sides.get("jax", {}), sides.get("torch", {})

        def med(r: dict) -> float | None:
            return statistics.median(r["rates"]) if r.get("rates") else None

        def note(r: dict) -> str:
            return r.get("skipped") or (r.get("error", "")[:40]) or "n/a"

        mo, mt = med(ours), med(theirs)
        flops = ours.get("flops_per_step")
        peak = PEAK_FLOPS[dtype]
        mfu_o = f"{flops * mo / peak:.1%}" if flops and mo else "n/a"
        mfu_t = f"{flops * mt / peak:.1%}" if flops and mt else "n/a"
        ratio = f"{mo / mt:.2f}" if mo and mt else "n/a"
        tokens = f"{mo * ours['tokens_per_step']:,.0f}" if mo else "n/a"
        compile_s = ours.get("compile_and_first_step_s")
        lines.append(
            f"| {name} | {variant} | {dtype} | {f'{mo:.2f}' if mo else note(ours)} | "
            f"{f'{mt:.2f}' if mt else note(theirs)} | {ratio} | {tokens} | {mfu_o} | {mfu_t} | "
            f"{f'{compile_s:.0f}' if compile_s else ''} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes in every cell (CPU test)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=170.0,
        help="both sides: no cell starts that would end later",
    )
    parser.add_argument(
        "--cells", help="only these cells, e.g. flan_t5_base:lora:bfloat16,medium:full:float32"
    )
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window-s", type=float, default=0.4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", help="default: $OUT/gpu_step.json when OUT is set")
    parser.add_argument("--side", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--side-budget-s", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        print(json.dumps(_side(args.side, args)))
        return 0
    # JAX compiles; PyTorch does not: JAX gets the larger share of the budget.
    shares = {"torch": 0.35, "jax": 0.65}
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for side in ("torch", "jax"):
        args.passthrough = [
            *(["--quick"] if args.quick else []),
            *([f"--cells={args.cells}"] if args.cells else []),
            f"--windows={args.windows}",
            f"--window-s={args.window_s}",
            f"--warmup={args.warmup}",
            f"--side-budget-s={args.budget_s * shares[side]}",
        ]
        # Hard stop: the side's share plus 25 s for start-up and a cell that overran, so the
        # default budget ends within 170 + 2 x 25 s = 3.7 minutes whatever the GPU does.
        rows += _run_side_process(side, args, args.budget_s * shares[side] + 25.0)
    print(f"total {time.perf_counter() - t0:.0f} s")
    print(table(rows))
    path = args.json or (
        os.path.join(os.environ["OUT"], "gpu_step.json") if os.environ.get("OUT") else None
    )
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "peak_flops": PEAK_FLOPS}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
