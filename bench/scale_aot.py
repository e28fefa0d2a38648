"""Flan-T5 XL/XXL on a 32-chip slice, proven ahead of time: `fiat-t5x preflight` over a grid.

One cell (what anyone can rerun):

    .venv/bin/python bench/scale_aot.py --model flan_t5/xxl --peft lora --mesh 8x4 \\
        --batch 128 --lengths 1024,256 [--gin.NAME=value ...] --json OUT.json

compiles the run `fiat_t5x.train` would do with gin/models/<model>.gin, gin/peft/<peft>.gin,
gin/runs/finetune.gin and the pod settings gin/partitioning/pod.gin (the same code path:
`fiat_t5x.preflight`, which uses `train.make_trainer`), on a fake CPU mesh of data x model
devices, with abstract shapes: per-device bytes of the train step (arguments, outputs,
temporaries, total) and of the start-up functions, FLOPs per device, compile time, the shardings
of a big kernel and of a LoRA factor. `--grid` runs the issue's grid one cell at a time, each in
its own process (XXL compiles take minutes and GiBs of RAM), and prints a markdown table judged
against 16 GiB (v5e) and 32 GiB (v4) per chip. The JSON also records the command, the machine
and its load average.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fiat_t5x import preflight  # noqa: E402  (imports no JAX)

GIB = 1024**3
PEFT_FILES = {"lora": "peft/lora.gin", "full": "peft/full_finetune.gin"}
GRID = [
    (model, peft, mesh, batch)
    for model, peft in (("flan_t5/xl", "lora"), ("flan_t5/xxl", "lora"), ("flan_t5/xl", "full"))
    for mesh in ("4x8", "8x4")
    for batch in (128, 32)
]


def preflight_argv(args: argparse.Namespace, extra: list[str]) -> list[str]:
    data, model = (int(n) for n in args.mesh.lower().split("x"))
    inputs, targets = (int(n) for n in args.lengths.split(","))
    return [
        f"--gin_file=models/{args.model}.gin",
        f"--gin_file={PEFT_FILES[args.peft]}",
        "--gin_file=runs/finetune.gin",
        f"--gin_file={args.pod_gin}",
        f"--gin.NUM_PARTITIONS={model}",
        f"--gin.BATCH_SIZE={args.batch}",
        f"--gin.TASK_FEATURE_LENGTHS={{'inputs': {inputs}, 'targets': {targets}}}",
        *extra,
        "--devices",
        str(data * model),
        "--device_memory_gib",
        str(args.memory_gib),
    ]


def run_cell(args: argparse.Namespace, extra: list[str]) -> dict:
    """One preflight in a child process; its JSON plus how it was made."""
    out = pathlib.Path(args.json or f"/tmp/scale_aot_{os.getpid()}.json")
    argv = [*preflight_argv(args, extra), "--json", str(out)]
    if args.cpu_hoisting:
        argv.append("--cpu_hoisting")
    devices = int(argv[argv.index("--devices") + 1])
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "fiat_t5x.preflight", *argv],
            cwd=REPO,
            env=preflight.fake_devices_env(devices, cpu_hoisting=args.cpu_hoisting),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _, status, usage = os.wait4(child.pid, 0)  # the child's own peak RSS
        child.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    if child.returncode not in (0, 1):  # 1: compiled, does not fit the memory given
        sys.stderr.write(output[-6000:])
        raise SystemExit(f"preflight failed with exit code {child.returncode}")
    record = json.loads(out.read_text())
    record.update(
        command="python bench/scale_aot.py " + " ".join(sys.argv[1:]),
        cell={k: getattr(args, k) for k in ("model", "peft", "mesh", "batch", "lengths")},
        wall_s=time.perf_counter() - start,
        compile_peak_rss_gib=usage.ru_maxrss / 2**20,
        machine=f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}",
        load_average=os.getloadavg(),
    )
    out.write_text(json.dumps(record, indent=2))
    if args.verbose:
        print(output)
    return record


def table_row(record: dict) -> str:
    cell, step = record["cell"], record["per_device_bytes"]
    startup = record["startup_peak_bytes"]
    peak = max(step["total"], startup)
    return (
        f"| {cell['model'].split('/')[-1].upper()} {cell['peft']} | {cell['mesh']} | "
        f"{cell['batch']} | {step['arguments'] / GIB:.2f} | {step['temporaries'] / GIB:.2f} | "
        f"{step['total'] / GIB:.2f} | {startup / GIB:.2f} | "
        f"{'yes' if peak <= 16 * GIB else 'no'} / {'yes' if peak <= 32 * GIB else 'no'} | "
        f"{(record['flops_per_device'] or 0) / 1e12:.1f} | {record['compile_s']:.0f} | "
        f"{record['compile_peak_rss_gib']:.1f} |"
    )


HEADER = (
    "| run | mesh data x model | batch | arguments GiB | temporaries GiB | step total GiB | "
    "start-up peak GiB | fits 16 / 32 GiB | TFLOP / device / step | compile s | compile RSS GiB |\n"
    "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="flan_t5/xxl", help="gin/models/<model>.gin")
    parser.add_argument("--peft", default="lora", choices=sorted(PEFT_FILES))
    parser.add_argument("--mesh", default="8x4", help="data x model, e.g. 8x4")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lengths", default="1024,256", help="inputs,targets")
    parser.add_argument("--memory_gib", type=float, default=16.0, help="verdict threshold")
    parser.add_argument("--pod_gin", default="partitioning/pod.gin")
    parser.add_argument("--json", help="write the cell's report here")
    parser.add_argument("--grid", action="store_true", help="the issue's 12 cells, one by one")
    parser.add_argument("--out_dir", default="/tmp/scale_aot", help="--grid: one JSON per cell")
    parser.add_argument("--verbose", action="store_true", help="print preflight's report")
    parser.add_argument(
        "--cpu_hoisting", action="store_true", help="keep XLA:CPU's fp32 weight copies (preflight)"
    )
    args, extra = parser.parse_known_args()
    bad = [a for a in extra if not a.startswith("--gin.")]
    if bad:
        parser.error(f"unknown arguments {bad} (extra gin bindings are --gin.NAME=value)")
    if not args.grid:
        record = run_cell(args, extra)
        print(HEADER)
        print(table_row(record))
        return
    os.makedirs(args.out_dir, exist_ok=True)
    print(f"load average {os.getloadavg()}", flush=True)
    print(HEADER, flush=True)
    for model, peft, mesh, batch in GRID:
        args.model, args.peft, args.mesh, args.batch = model, peft, mesh, batch
        name = f"{model.split('/')[-1]}_{peft}_{mesh}_b{batch}.json"
        args.json = os.path.join(args.out_dir, name)
        print(table_row(run_cell(args, extra)), flush=True)


if __name__ == "__main__":
    main()
