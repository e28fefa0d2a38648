"""Where a train step's time goes: our compiled JAX step (jax.profiler) vs transformers(+PEFT)
(torch.profiler), broken down into the same categories.

Ours: the step's optimised HLO gives every instruction's JAX name stack (`op_name`) and, for
dots, FLOPs from the shapes; a `jax.profiler` trace of a few steps (XLA:CPU emits one event per
executed thunk, `xla_cpu_enable_xprof_traceme`) gives each instruction's time. Theirs: forward
hooks wrap every module in a `record_function` label, backward ops inherit the label of the
forward op that created them (autograd sequence numbers), the optimizer has its own event.
Both sides run pinned to the same CPUs (`--threads`), one side after the other, in their own
process; the table prints ms per step and share per category, and for ours the achieved GFLOP/s
of each matmul category.

    .venv/bin/python bench/profile_step.py --config small --variant lora
    .venv/bin/python bench/profile_step.py --config medium --variant full --steps 2 --json /tmp/p.json
    .venv/bin/python bench/profile_step.py --config medium --precision bfloat16 --steps 2
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from model_step import CONFIGS  # noqa: E402

CATEGORIES = (
    "matmul: attention q/k/v/o (+LoRA)",
    "matmul: MLP wi/wo",
    "matmul: logits (vocab)",
    "attention: scores, softmax, context",
    "position bias",
    "layer norms",
    "MLP activation (GeLU x gate)",
    "loss: softmax over vocab (+z-loss, metrics)",
    "embedding",
    "optimizer (Adafactor)",
    "other (residuals, masks, copies)",
)
_PROJECTION = re.compile(r"/(query|key|value|out)/")
_MLP_DENSE = re.compile(r"/mlp/(wi|wi_\d|wo)/")


def categorise_jax(op_name: str, is_dot: bool) -> str:
    """Category of an HLO instruction from its JAX name stack (`op_name` metadata)."""
    if re.search(r"[/(]optimizer[/)]", op_name):
        return "optimizer (Adafactor)"
    if re.search(r"[/(]loss[/)]", op_name):
        return "loss: softmax over vocab (+z-loss, metrics)"
    if "Transformer" not in op_name:
        return "other (residuals, masks, copies)"
    if "logits_dense" in op_name:
        return "matmul: logits (vocab)"
    if _PROJECTION.search(op_name):
        return "matmul: attention q/k/v/o (+LoRA)" if is_dot else "other (residuals, masks, copies)"
    if _MLP_DENSE.search(op_name):
        return "matmul: MLP wi/wo" if is_dot else "MLP activation (GeLU x gate)"
    if "relpos_bias" in op_name:
        return "position bias"
    if "layer_norm" in op_name or "_norm/" in op_name:
        return "layer norms"
    if "attention" in op_name:
        return "attention: scores, softmax, context"
    if "/mlp/" in op_name:
        return "MLP activation (GeLU x gate)"
    if "token_embedder" in op_name:
        return "embedding"
    return "other (residuals, masks, copies)"


# ----------------------------------------------------------------------------- HLO parsing

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+?)(?:\{[^}]*\})? ([\w-]+)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) ")
_SHAPE = re.compile(r"[a-z0-9]+\[([0-9,]*)\]")


def _dims(shape: str) -> list[int]:
    match = _SHAPE.match(shape)
    return [int(d) for d in match.group(1).split(",") if d] if match else []


def parse_hlo(text: str) -> dict[str, dict[str, Any]]:
    """{instruction name: {opcode, op_name, computation, calls, dot_flops}} of every computation.

    A fusion's `dot_flops` is the sum over the dots of the computation it calls."""
    instructions: dict[str, dict[str, Any]] = {}
    shapes: dict[str, str] = {}
    computation = ""
    for line in text.splitlines():
        if not line.startswith(" ") and "{" in line:
            match = _COMPUTATION.match(line)
            computation = match.group(1) if match else ""
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, opcode, rest = match.groups()
        shapes[name] = shape
        op_name = re.search(r'op_name="([^"]*)"', rest)
        calls = re.search(r"calls=%([\w.-]+)", rest)
        flops = 0.0
        if opcode == "dot":
            operands = re.findall(r"%([\w.-]+)", rest.split(")", 1)[0])
            lhs = _dims(shapes.get(operands[0], "")) if operands else []
            contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", rest)
            k = 1
            for d in contracting.group(1).split(",") if contracting else []:
                if d and int(d) < len(lhs):
                    k *= lhs[int(d)]
            out = 1
            for d in _dims(shape):
                out *= d
            flops = 2.0 * out * k
        instructions[name] = {
            "name": name,
            "opcode": opcode,
            "op_name": op_name.group(1) if op_name else "",
            "computation": computation,
            "calls": calls.group(1) if calls else None,
            "dot_flops": flops,
            "fusion_kind": (re.search(r'"kind":"(\w+)"', rest) or re.search(r"kind=(k\w+)", rest)),
        }
    by_computation: dict[str, float] = collections.defaultdict(float)
    names_in: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for ins in instructions.values():
        by_computation[ins["computation"]] += ins["dot_flops"]
        if ins["op_name"]:
            names_in[ins["computation"]][ins["op_name"]] += 1
        kind = ins.pop("fusion_kind")
        ins["fusion_kind"] = kind.group(1) if kind else ""
    for ins in instructions.values():
        if ins["opcode"] == "fusion" and ins["calls"]:
            ins["dot_flops"] += by_computation.get(ins["calls"], 0.0)
            # A fusion rooted in a convert has no name of its own: it does what most of its
            # instructions say (the bf16 GeLU backward, say, not "other").
            if not ins["op_name"] and names_in[ins["calls"]]:
                ins["op_name"] = names_in[ins["calls"]].most_common(1)[0][0]
    return instructions


def _kind(ins: dict[str, Any]) -> str:
    """'dot (library)', 'dot (XLA)', 'elementwise/reduce', 'copy/transpose' or the opcode."""
    if ins["dot_flops"]:
        return "dot (library)" if ins["fusion_kind"].startswith("__") else "dot (XLA)"
    if ins["opcode"] in ("copy", "transpose") or "copy" in ins.get("name", ""):
        return "copy/transpose"
    if ins["opcode"] == "fusion":
        return "fusion (elementwise/reduce)"
    return ins["opcode"]


def _has_dot(ins: dict[str, Any]) -> bool:
    return ins["dot_flops"] > 0


# ----------------------------------------------------------------------------- ours


def profile_ours(
    config: str, variant: str, steps: int, out_dir: str, precision: str = "float32"
) -> dict[str, Any]:
    import jax
    from model_step import OursStep

    runner = OursStep(CONFIGS[config], variant == "lora", dtype=precision)
    runner.run(2)
    hlo = runner.trainer._compiled_train.as_text()
    instructions = parse_hlo(hlo)
    jax.profiler.start_trace(out_dir)
    walls = [runner.run(1) for _ in range(steps)]
    jax.profiler.stop_trace()
    path = sorted(glob.glob(os.path.join(out_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    data = jax.profiler.ProfileData.from_file(path)
    samples: dict[str, list[float]] = collections.defaultdict(list)
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                op = stats.get("hlo_op")
                if op and not event.name.startswith("end:"):
                    samples[op].append(event.duration_ns / 1e6)
    # Each instruction runs once per step: its fastest run filters out preemption by other
    # processes on a shared machine. Reported per step.
    per_op = {op: min(ts) * steps for op, ts in samples.items()}
    ms = collections.defaultdict(float)
    flops = collections.defaultdict(float)
    kinds = collections.Counter()
    by_kind: dict[str, dict[str, float]] = collections.defaultdict(
        lambda: collections.defaultdict(float)
    )
    for op, t in per_op.items():
        ins = instructions.get(op)
        if ins is None or ins["opcode"] in ("while", "call", "conditional"):
            continue
        category = categorise_jax(ins["op_name"], _has_dot(ins))
        ms[category] += t / steps
        by_kind[category][_kind(ins)] += t / steps
        flops[category] += ins["dot_flops"]
        kinds[(ins["opcode"], ins["fusion_kind"])] += 1
    top_by_category: dict[str, list] = collections.defaultdict(list)
    for op, t in sorted(per_op.items(), key=lambda kv: -kv[1]):
        ins = instructions.get(op)
        if ins is None or ins["opcode"] in ("while", "call", "conditional"):
            continue
        entries = top_by_category[categorise_jax(ins["op_name"], _has_dot(ins))]
        if len(entries) < 12:
            entries.append((t / steps, op, ins["fusion_kind"] or ins["opcode"], ins["op_name"]))
    counts = collections.Counter(
        (i["opcode"], i["fusion_kind"]) for i in instructions.values() if i["computation"]
    )
    return {
        "wall_ms": 1e3 * min(walls),
        "ms": dict(ms),
        "gflop": {k: v / 1e9 for k, v in flops.items()},
        "xla_flops": runner.flops,
        "top_by_category": top_by_category,
        "ms_by_kind": {c: dict(k) for c, k in by_kind.items()},
        "hlo_ops": {f"{a}/{b}" if b else a: n for (a, b), n in counts.most_common(12)},
        "top_ops": sorted(
            (
                (
                    t / steps,
                    op,
                    categorise_jax(instructions[op]["op_name"], _has_dot(instructions[op])),
                    instructions[op]["op_name"][-80:],
                )
                for op, t in per_op.items()
                if op in instructions and instructions[op]["opcode"] not in ("while", "call")
            ),
            reverse=True,
        )[:30],
    }


# ----------------------------------------------------------------------------- transformers


def _torch_label(module_name: str, module: Any) -> str | None:
    kind = type(module).__name__
    leaf = module_name.rsplit(".", 1)[-1]
    if kind == "T5LayerNorm":
        return "layer norms"
    if leaf == "lm_head":
        return "matmul: logits (vocab)"
    if leaf == "relative_attention_bias":
        return "position bias"
    if leaf == "shared" or leaf == "embed_tokens":
        return "embedding"
    if ".SelfAttention." in f".{module_name}." or ".EncDecAttention." in f".{module_name}.":
        if kind in ("Linear", "ModuleDict", "Identity", "Dropout") or leaf in ("q", "k", "v", "o"):
            return "matmul: attention q/k/v/o (+LoRA)"
    if kind in ("T5Attention",):
        return "attention: scores, softmax, context"
    if leaf in ("wi", "wi_0", "wi_1", "wo") or ".wi" in module_name or ".wo" in module_name:
        return "matmul: MLP wi/wo"
    if kind.startswith("T5Dense"):
        return "MLP activation (GeLU x gate)"
    if kind in ("T5Block", "T5Stack", "T5LayerFF", "T5LayerSelfAttention", "T5LayerCrossAttention"):
        return "other (residuals, masks, copies)"
    if kind in ("T5ForConditionalGeneration", "PeftModelForSeq2SeqLM", "LoraModel"):
        return "loss: softmax over vocab (+z-loss, metrics)"
    return None


def profile_torch(
    config: str, variant: str, steps: int, precision: str = "float32"
) -> dict[str, Any]:
    import torch
    from model_step import TorchStep
    from torch.profiler import ProfilerActivity, profile, record_function

    autocast = None if precision == "float32" else getattr(torch, precision)
    runner = TorchStep(CONFIGS[config], variant == "lora", autocast_dtype=autocast)
    runner.run(2)
    stack: list[Any] = []
    for name, module in runner.model.named_modules():
        label = _torch_label(name, module)
        if label is None:
            continue

        def pre(_m, _inputs, label=label):
            rf = record_function(f"§{label}")
            rf.__enter__()
            stack.append(rf)

        def post(_m, _inputs, _outputs):
            stack.pop().__exit__(None, None, None)

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)
    per_step = []
    walls = []
    for _ in range(steps):  # one profile per step: the per-category minimum filters preemption
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            walls.append(runner.run(1))
        per_step.append(_torch_categories(prof.events()))
    ms = {c: min(step.get(c, 0.0) for step in per_step) for c in CATEGORIES}
    return {"wall_ms": 1e3 * min(walls), "ms": ms}


def _torch_categories(events: Any) -> dict[str, float]:
    """ms per category of one profiled step (self CPU time of every op, by its module label)."""

    def own_label(event) -> str | None:
        node = event
        while node is not None:
            if node.name.startswith("§"):
                return node.name[1:]
            node = node.cpu_parent
        return None

    by_sequence: dict[int, str] = {}
    for event in events:
        if getattr(event, "sequence_nr", -1) >= 0 and not event.name.startswith("autograd::"):
            label = own_label(event)
            if label and event.sequence_nr not in by_sequence:
                by_sequence[event.sequence_nr] = label

    def category(event) -> str:
        node = event
        while node is not None:
            if node.name.startswith("§"):
                return node.name[1:]
            if node.name.startswith("autograd::engine::evaluate_function"):
                if "AccumulateGrad" in node.name:
                    return "optimizer (Adafactor)"
                return by_sequence.get(node.sequence_nr, "other (residuals, masks, copies)")
            if node.name.startswith("Optimizer.") or "zero_grad" in node.name:
                return "optimizer (Adafactor)"
            node = node.cpu_parent
        return "other (residuals, masks, copies)"

    ms: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if not event.name.startswith("§"):
            ms[category(event)] += event.self_cpu_time_total / 1e3
    return dict(ms)


# ----------------------------------------------------------------------------- driver


def _run_side(side: str, args) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--side",
        side,
        "--config",
        args.config,
        "--variant",
        args.variant,
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
        "--precision",
        args.precision,
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{side} profile failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(ours: dict[str, Any], theirs: dict[str, Any] | None) -> str:
    lines = [
        "| category | ours ms/step | ours share | ours GFLOP/step | ours GFLOP/s | "
        "transformers ms/step | transformers share |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    ours_total = sum(ours["ms"].values())
    theirs_total = sum(theirs["ms"].values()) if theirs else 0.0
    for category in CATEGORIES:
        t = ours["ms"].get(category, 0.0)
        g = ours["gflop"].get(category, 0.0)
        rate = f"{g / (t / 1e3):.0f}" if g and t else ""
        gcol = f"{g:.2f}" if g else ""
        tt = theirs["ms"].get(category, 0.0) if theirs else None
        their_cols = f"{tt:.1f} | {tt / theirs_total:.1%}" if theirs else " | "
        lines.append(
            f"| {category} | {t:.1f} | {t / ours_total:.1%} | {gcol} | {rate} | {their_cols} |"
        )
    their_total_col = f"{theirs_total:.1f} | " if theirs else " | "
    lines.append(
        f"| **sum (fastest run of each op)** | {ours_total:.1f} | | | | {their_total_col} |"
    )
    their_wall = f"{theirs['wall_ms']:.1f} | " if theirs else " | "
    lines.append(
        f"| **wall time per step (fastest)** | {ours['wall_ms']:.1f} | | | | {their_wall} |"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="small", choices=sorted(CONFIGS))
    parser.add_argument("--variant", default="lora", choices=("lora", "full"))
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after 3 warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="CPUs both sides are pinned to")
    parser.add_argument(
        "--precision",
        default="float32",
        choices=("float32", "bfloat16"),
        help="bfloat16: our bf16 activations vs torch's CPU autocast (bench/model_step.py)",
    )
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--json", help="write both breakdowns here")
    parser.add_argument("--side", choices=("ours", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if args.side == "ours":
            flag = "--xla_cpu_enable_xprof_traceme=true"
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
            with tempfile.TemporaryDirectory() as out_dir:
                result = profile_ours(
                    args.config, args.variant, args.steps, out_dir, args.precision
                )
        else:
            import torch

            torch.set_num_threads(args.threads)
            result = profile_torch(args.config, args.variant, args.steps, args.precision)
        print(json.dumps(result))
        return 0
    print(f"load average {os.getloadavg()}", flush=True)
    ours = _run_side("ours", args)
    theirs = None if args.skip_torch else _run_side("torch", args)
    print(
        f"{args.config} {args.variant} {args.precision}, {args.threads} thread(s), "
        f"{args.steps} steps"
    )
    print(f"XLA cost analysis: {ours['xla_flops'] / 1e9:.1f} GFLOP/step")
    print("HLO instructions:", ours["hlo_ops"])
    print("slowest instructions (ms/step):")
    for t, op, category, name in ours["top_ops"]:
        print(f"  {t:7.2f} {op:28s} {category[:24]:24s} {name}")
    print(table(ours, theirs))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"ours": ours, "transformers": theirs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
