"""`fiat-t5x preflight <the flags of train> --target v5e-32`: will this run fit, before renting
the pod?

Compiles the run ahead of time on this machine's CPU, on a fake mesh of the target's device
count, with abstract shapes (no checkpoint, no data): the same gin files and code path as
`python -m fiat_t5x.train` (`train.make_trainer`: model, partitioner, selector, optimizer, the
Trainer's jitted train step with donated state; the start-up's jitted init of the missing
parameters and of the optimizer state). Prints per-device memory from XLA's buffer assignment
(arguments, outputs, temporaries, total), FLOPs per step, the mesh, the shardings of the
biggest arrays, and a verdict with the knobs that would help when it does not fit.

    fiat-t5x preflight --gin_file=gin/models/flan_t5/xxl.gin --gin_file=gin/peft/lora.gin \\
        --gin_file=gin/runs/finetune.gin --gin_file=gin/partitioning/pod.gin \\
        --gin.TASK_FEATURE_LENGTHS="{'inputs': 1024, 'targets': 256}" --gin.BATCH_SIZE=128 \\
        --target v5e-32            # or --devices 32 --device_memory_gib 16

--json OUT writes the report as JSON. Exit status: 0 fits, 1 does not fit, 2 bad input.
The fake N-device CPU platform needs XLA_FLAGS before JAX starts, so the command re-runs
itself in a subprocess with them set. XLA:CPU computes bf16 in fp32 (its buffers for bf16
activations are counted at fp32 size, so bf16 runs err on the high side), and preflight turns
off its hoisting of fp32 weight copies out of the layer loop, which TPUs do not make
(`NO_CPU_HOISTING`; `--cpu_hoisting` keeps it).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

GIB = 1024**3
_CHILD_ENV = "FIAT_PREFLIGHT_DEVICES"
# XLA:CPU has no bf16 matmul: it converts bf16 operands to fp32, and loop-invariant code motion
# then hoists the conversion of a scanned stack's frozen weights out of the layer loop, i.e. an
# fp32 copy of every weight matrix (measured: 7 of 17 GiB of temporaries for XXL LoRA). TPUs
# multiply bf16 natively and make no such copy, so preflight turns the pass off; what else it
# would hoist is small (0.2 GiB on XL in fp32). `--cpu_hoisting` keeps XLA:CPU's default.
NO_CPU_HOISTING = "--xla_disable_hlo_passes=while-loop-invariant-code-motion"


@dataclasses.dataclass(frozen=True)
class Family:
    """A chip family: how its slice names count devices, memory and peak bf16 FLOP/s per device.

    `cores_per_device`: TPU v4 and v5p slice names count TensorCores (v4-64 = 32 chips, one
    JAX device per chip); v2/v3 names count cores, each its own device; v5e/v6e count chips.
    """

    memory_gib: float
    peak_flops: float
    cores_per_device: int = 1


FAMILIES: dict[str, Family] = {
    "v2": Family(8, 22.5e12),
    "v3": Family(16, 61.5e12),
    "v4": Family(32, 275e12, cores_per_device=2),
    "v5e": Family(16, 197e12),
    "v5litepod": Family(16, 197e12),
    "v5p": Family(95, 459e12, cores_per_device=2),
    "v6e": Family(32, 918e12),
    "a100": Family(80, 312e12),
    "h100": Family(80, 989e12),
    "h200": Family(141, 989e12),
}


@dataclasses.dataclass(frozen=True)
class Target:
    """What to compile for: device count, memory per device, peak FLOP/s per device (or None)."""

    name: str
    devices: int
    memory_bytes: int
    peak_flops: float | None = None


def parse_target(name: str) -> Target:
    """`v5e-32`, `v4-64`, `h100-8`, ... -> Target (ValueError naming the known families)."""
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip().lower())
    family = FAMILIES.get(match[1]) if match else None
    if family is None:
        raise ValueError(
            f"--target {name!r}: expected <family>-<size> with a family in {sorted(FAMILIES)} "
            "(e.g. v5e-32, v4-64), or --devices N --device_memory_gib G"
        )
    size = int(match[2])
    if size % family.cores_per_device or size == 0:
        raise ValueError(f"--target {name!r}: {match[1]} slice sizes are multiples of 2")
    return Target(
        name, size // family.cores_per_device, int(family.memory_gib * GIB), family.peak_flops
    )


# ----------------------------------------------------------------------------- report


@dataclasses.dataclass(frozen=True)
class MemoryUse:
    """Per-device bytes of one compiled function (XLA's buffer assignment)."""

    arguments: int
    outputs: int
    aliased: int
    temporaries: int

    @property
    def total(self) -> int:
        """Live at once: arguments, outputs that do not reuse a donated argument, temporaries."""
        return self.arguments + self.outputs - self.aliased + self.temporaries

    @classmethod
    def of(cls, compiled: Any) -> MemoryUse:
        m = compiled.memory_analysis()
        return cls(
            int(m.argument_size_in_bytes),
            int(m.output_size_in_bytes),
            int(m.alias_size_in_bytes),
            int(m.temp_size_in_bytes),
        )

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> MemoryUse:
        return cls(data["arguments"], data["outputs"], data["aliased"], data["temporaries"])

    def as_dict(self) -> dict[str, int]:
        return {
            "arguments": self.arguments,
            "outputs": self.outputs,
            "aliased": self.aliased,
            "temporaries": self.temporaries,
            "total": self.total,
        }


@dataclasses.dataclass(frozen=True)
class ArrayInfo:
    path: str
    shape: tuple[int, ...]
    dtype: str
    spec: str
    per_device_bytes: int


@dataclasses.dataclass
class Report:
    """Everything preflight found; `verdict` judges it against a memory size."""

    target: Target
    mesh: dict[str, int]
    batch_size: int
    feature_lengths: dict[str, int]
    num_microbatches: int
    n_trainable: int
    n_frozen: int
    frozen_dtype: str
    frozen_f32_bytes: int  # frozen kernels and embedding still in fp32 (what bf16 would halve)
    knobs: dict[str, Any]
    step: MemoryUse
    startup: dict[str, MemoryUse]
    startup_peak_bytes: int
    flops_per_device: float | None
    compile_s: float
    cpu_hoisting: bool
    biggest: list[ArrayInfo]
    examples: dict[str, ArrayInfo]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """The report back from `as_dict` (e.g. preflight's --json)."""

        def array(info: dict[str, Any]) -> ArrayInfo:
            return ArrayInfo(**{**info, "shape": tuple(info["shape"])})

        return cls(
            target=Target(**data["target"]),
            step=MemoryUse.from_dict(data["per_device_bytes"]),
            startup={
                k: MemoryUse.from_dict(v) for k, v in data["startup_per_device_bytes"].items()
            },
            biggest=[array(a) for a in data["biggest_arrays"]],
            examples={k: array(a) for k, a in data["example_shardings"].items()},
            **{
                f.name: data[f.name]
                for f in dataclasses.fields(cls)
                if f.name not in ("target", "step", "startup", "biggest", "examples")
            },
        )

    @property
    def peak_bytes(self) -> int:
        """The most any phase (start-up or step) needs per device."""
        return max(self.step.total, self.startup_peak_bytes)

    def as_dict(self) -> dict[str, Any]:
        capacity = self.target.memory_bytes
        return {
            "target": dataclasses.asdict(self.target),
            "mesh": self.mesh,
            "batch_size": self.batch_size,
            "feature_lengths": self.feature_lengths,
            "num_microbatches": self.num_microbatches,
            "n_trainable": self.n_trainable,
            "n_frozen": self.n_frozen,
            "frozen_dtype": self.frozen_dtype,
            "frozen_f32_bytes": self.frozen_f32_bytes,
            "knobs": self.knobs,
            "per_device_bytes": self.step.as_dict(),
            "startup_per_device_bytes": {k: v.as_dict() for k, v in self.startup.items()},
            "startup_peak_bytes": self.startup_peak_bytes,
            "flops_per_device": self.flops_per_device,
            "compile_s": self.compile_s,
            "cpu_hoisting": self.cpu_hoisting,
            "biggest_arrays": [dataclasses.asdict(a) for a in self.biggest],
            "example_shardings": {k: dataclasses.asdict(a) for k, a in self.examples.items()},
            "fits": self.peak_bytes <= capacity,
            "suggestions": suggestions(self) if self.peak_bytes > capacity else [],
        }


def suggestions(report: Report) -> list[str]:
    """Knobs that would lower the per-device memory, the most promising first."""
    step, capacity = report.step, report.target.memory_bytes
    over = report.peak_bytes - capacity
    ideas: list[tuple[float, str]] = []
    knobs = report.knobs
    if knobs.get("remat_policy") == "none":
        ideas.append(
            (
                0.8 * step.temporaries,
                "rematerialise the layers: REMAT_POLICY = 'full' (or 'dots_saveable'; "
                "gin/models/pod_memory.gin): activations are recomputed in the backward pass "
                f"(about 1/3 more FLOPs) instead of stored; up to {_gib(0.8 * step.temporaries)} "
                "GiB less",
            )
        )
    if knobs.get("scan_layers") and knobs.get("param_scan_axis") == 1:
        ideas.append(
            (
                step.arguments / 2,
                "config.T5Config.param_scan_axis = 0: a stack scanned on axis 1 is transposed "
                "(copied) for every step; on axis 0 it is not (T5X's axis-1 checkpoints still load)",
            )
        )
    model_axis = report.mesh.get("model", 1)
    if knobs.get("activation_length") is None and model_axis > 1:
        ideas.append(
            (
                step.temporaries / 3,
                "sequence parallelism: gin/partitioning/pod.gin's rules (ACTIVATION_LENGTH = "
                "'model') split the residual stream between blocks over `model`",
            )
        )
    rows = report.batch_size // max(1, report.mesh.get("data", 1))  # per data shard
    more = report.num_microbatches * 2
    if rows % more == 0:
        ideas.append(
            (
                step.temporaries / 2,
                f"NUM_MICROBATCHES = {more}: each step runs {more} smaller slices of the batch "
                "(same update, each still split over `data`); activations shrink about "
                f"{more // report.num_microbatches}x, up to {_gib(step.temporaries / 2)} GiB less",
            )
        )
    frozen_f32 = report.frozen_f32_bytes
    if report.frozen_dtype == "float32" and frozen_f32:
        ideas.append(
            (
                frozen_f32 / 2,
                "optimizers.TrainableSelector.frozen_dtype = 'bfloat16': the frozen base in bf16 "
                f"({_gib(frozen_f32 / 2)} GiB less; trainable weights stay fp32)",
            )
        )
    if report.target.devices % (model_axis * 2) == 0:
        ideas.append(
            (
                step.arguments / 2,
                f"more model parallelism: NUM_PARTITIONS = {model_axis * 2} (weights, optimizer "
                f"state and wide activations split over {model_axis * 2} devices instead of "
                f"{model_axis}; up to {_gib(step.arguments / 2)} GiB less)",
            )
        )
    if knobs.get("scan_layers") is False:
        ideas.append((0.0, "SCAN_LAYERS = True compiles one layer body per stack (pod_memory.gin)"))
    ideas.sort(key=lambda idea: -idea[0])
    out = [text for saving, text in ideas if saving >= over]
    out += [text for saving, text in ideas if saving < over]
    return out


def _gib(n: float) -> str:
    return f"{n / GIB:.1f}"


# ----------------------------------------------------------------------------- analysis


def _train_arguments() -> dict[str, Any]:
    """The arguments gin gives `fiat_t5x.train.train` (defaults filled in)."""
    import gin

    module = importlib.import_module("fiat_t5x.train")
    try:
        bound = gin.get_bindings(module.train)
    except ValueError as e:
        raise ValueError(f"the gin files do not configure fiat_t5x.train.train: {e}") from None
    arguments = {
        name: p.default
        for name, p in inspect.signature(module.train).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    arguments.update(bound)
    return arguments


def _is_required(value: Any) -> bool:
    import gin

    return value is gin.REQUIRED


def abstract_batch(dataset_cfg: Any, partitioner: Any) -> dict[str, Any]:
    """ShapeDtypeStructs of a global training batch (the feature converter's model features)."""
    import jax
    import numpy as np

    lengths = dataset_cfg.task_feature_lengths
    if _is_required(lengths) or _is_required(dataset_cfg.batch_size):
        raise ValueError("preflight needs TASK_FEATURE_LENGTHS and BATCH_SIZE (gin)")
    converter = dataset_cfg.feature_converter()
    features = dict(getattr(converter, "MODEL_FEATURES", {}))
    dtypes = {k: spec.dtype for k, spec in features.items()}
    dtypes.update(getattr(converter, "PACKING_FEATURE_DTYPES", {}) if dataset_cfg.pack else {})
    sharding = partitioner.batch_sharding()
    return {
        name: jax.ShapeDtypeStruct(
            (dataset_cfg.batch_size, length),
            np.dtype(dtypes[name].as_numpy_dtype) if name in dtypes else np.int32,
            sharding=sharding,
        )
        for name, length in converter.get_model_feature_lengths(dict(lengths)).items()
    }


def _array_info(path: str, shape: Any) -> ArrayInfo:
    import numpy as np

    shard = shape.sharding.shard_shape(shape.shape)
    return ArrayInfo(
        path,
        tuple(shape.shape),
        np.dtype(shape.dtype).name,
        str(tuple(shape.sharding.spec)),
        math.prod(shard) * np.dtype(shape.dtype).itemsize,
    )


def analyze(gin_argv: Sequence[str], target: Target) -> Report:
    """Compile the configured run for `target` on this process's (fake) devices."""
    import jax

    import gin
    from fiat_t5x.train import make_trainer
    from fiat_t5x.training import gin_cli, initial_params
    from fiat_t5x.training.optimizers import flatten_params, held_in_compute_dtype

    if jax.device_count() != target.devices:
        raise RuntimeError(
            f"preflight for {target.devices} devices runs on {jax.device_count()}: set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={target.devices} before JAX starts"
        )
    gin_cli.parse_gin(gin_cli.parse_args(gin_argv))
    try:
        gin.query_parameter("%MODEL")
    except ValueError:
        raise gin_cli.UsageError(
            "the gin files define no MODEL: add a model file, e.g. "
            "--gin_file=gin/models/flan_t5/xxl.gin (and gin/peft/lora.gin)"
        ) from None
    gin_cli.check_required_macros(("TASK_FEATURE_LENGTHS", "BATCH_SIZE"))
    arguments = _train_arguments()
    wanted = inspect.signature(make_trainer).parameters
    trainer = make_trainer(**{k: v for k, v in arguments.items() if k in wanted})
    model, partitioner, config = trainer.model, trainer.partitioner, trainer.model.config
    dataset_cfg = arguments["train_dataset_cfg"]
    batch = abstract_batch(dataset_cfg, partitioner)
    # Unset (required) INITIAL_CHECKPOINT_PATH counts as a base checkpoint: the usual run.
    shapes = flatten_params(model.param_shapes())
    base = []
    if arguments.get("initial_checkpoint_path") is not None:
        base = [k for k in shapes if not k.endswith(("/lora_a", "/lora_b"))]
    plan = initial_params.plan_startup(model, partitioner, trainer.selector, base)

    start = time.perf_counter()
    startup: dict[str, MemoryUse] = {}
    with partitioner.context():
        if plan.fresh:
            init = initial_params.fresh_params_function(model, plan)
            key = jax.ShapeDtypeStruct((2,), jax.numpy.uint32)
            startup["init"] = MemoryUse.of(init.lower(key).compile())
        create = trainer.create_state_function().lower(trainer.trainable_shapes)
        startup["optimizer_state"] = MemoryUse.of(create.compile())
    compiled = trainer.compile_train_step(trainer.abstract_state(), trainer.frozen_shapes, batch)
    compile_s = time.perf_counter() - start

    frozen = {k: _array_info(k, v) for k, v in plan.shapes.items() if k not in plan.trainable}
    frozen_bytes = sum(a.per_device_bytes for a in frozen.values())
    param_bytes = sum(_array_info(k, v).per_device_bytes for k, v in plan.shapes.items())
    # Start-up phases: fresh init; base placed (all params resident); optimizer state created.
    startup_peak = max(
        startup["init"].total if "init" in startup else 0,
        param_bytes,
        frozen_bytes + startup["optimizer_state"].total,
    )
    arrays = [_array_info(k, v) for k, v in _flat_with_paths(trainer.abstract_state()).items()]
    arrays = sorted([*arrays, *frozen.values()], key=lambda a: -a.per_device_bytes)
    return Report(
        target=target,
        mesh={str(k): int(v) for k, v in partitioner.mesh.shape.items()},
        batch_size=int(dataset_cfg.batch_size),
        feature_lengths=dict(dataset_cfg.task_feature_lengths),
        num_microbatches=trainer.num_microbatches,
        n_trainable=sum(math.prod(shapes[k].shape) for k in plan.trainable),
        n_frozen=sum(math.prod(shapes[k].shape) for k in frozen),
        frozen_dtype=str(trainer.selector.frozen_dtype or config.param_dtype),
        frozen_f32_bytes=sum(
            a.per_device_bytes
            for k, a in frozen.items()
            if a.dtype == "float32" and held_in_compute_dtype(k)
        ),
        knobs={
            **{k: getattr(config, k) for k in _KNOBS if hasattr(config, k)},
            "activation_length": dict(partitioner.logical_axis_rules).get("activation_length"),
        },
        step=MemoryUse.of(compiled),
        startup=startup,
        startup_peak_bytes=startup_peak,
        flops_per_device=trainer.flops_per_step,
        compile_s=compile_s,
        cpu_hoisting=NO_CPU_HOISTING not in os.environ.get("XLA_FLAGS", ""),
        biggest=arrays[:6],
        examples=_examples(plan),
    )


_KNOBS = ("dtype", "param_dtype", "scan_layers", "remat_policy", "param_scan_axis")


def _flat_with_paths(tree: Any) -> dict[str, Any]:
    """'/'-joined key paths -> leaves (dict keys, attribute names and indices)."""
    out = {}
    import jax

    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        out["/".join(names)] = leaf
    return out


def _examples(plan: Any) -> dict[str, ArrayInfo]:
    """A big kernel (the first MLP input kernel) and a LoRA factor, for the shardings table."""
    out = {}
    for name, test in (
        ("mlp_kernel", lambda k: "/mlp/wi" in k and k.endswith("/kernel")),
        ("lora_a", lambda k: k.endswith("/lora_a")),
        ("embedding", lambda k: k == "token_embedder/embedding"),
    ):
        hit = next((k for k in sorted(plan.shapes) if test(k)), None)
        if hit is not None:
            out[name] = _array_info(hit, plan.shapes[hit])
    return out


# ----------------------------------------------------------------------------- printing


def format_report(report: Report) -> str:
    t, step = report.target, report.step
    capacity = t.memory_bytes
    unit, scale = ("GiB", GIB) if report.peak_bytes >= GIB else ("MiB", 2**20)

    def size(n: float) -> str:
        return f"{n / scale:.1f}"

    lines = [
        f"target {t.name}: {t.devices} devices, {_gib(capacity)} GiB each"
        + (f", {t.peak_flops / 1e12:.0f} TFLOP/s bf16 peak" if t.peak_flops else ""),
        f"mesh: {' x '.join(f'{k} {v}' for k, v in report.mesh.items())}; batch "
        f"{report.batch_size} rows ({report.batch_size // report.mesh.get('data', 1)} per data "
        f"shard), lengths {report.feature_lengths}, {report.num_microbatches} microbatch(es)",
        f"parameters: {report.n_trainable / 1e6:,.2f} M trainable, "
        f"{report.n_frozen / 1e6:,.2f} M frozen ({report.frozen_dtype}); "
        + ", ".join(f"{k}={v}" for k, v in report.knobs.items()),
        "",
        f"{'per device, ' + unit:<34}{'arguments':>10}{'outputs':>9}{'temps':>9}{'total':>9}",
    ]
    rows = [("train step", step)] + [(f"start-up: {k}", v) for k, v in report.startup.items()]
    for name, use in rows:
        lines.append(
            f"  {name:<32}{size(use.arguments):>10}{size(use.outputs - use.aliased):>9}"
            f"{size(use.temporaries):>9}{size(use.total):>9}"
        )
    lines.append(f"  {'start-up peak (estimate)':<32}{'':>28}{size(report.startup_peak_bytes):>9}")
    if report.flops_per_device:
        line = f"FLOPs per step per device (matmuls): {report.flops_per_device:.3g}"
        if t.peak_flops:
            line += f" ({report.flops_per_device / t.peak_flops:.2f} s at the peak)"
        lines.append(line)
    hoisting = "on (XLA:CPU default)" if report.cpu_hoisting else "off (see --cpu_hoisting)"
    lines.append(
        f"compiled in {report.compile_s:.0f} s on XLA:CPU; loop-invariant hoisting {hoisting}"
    )
    lines.append("biggest arrays (per device):")
    for a in report.biggest:
        lines.append(
            f"  {a.path:<48} {str(list(a.shape)):<16} {a.dtype:<9} {a.spec:<18} "
            f"{a.per_device_bytes / 2**20:,.2f} MiB"
        )
    share = report.peak_bytes / capacity
    if report.peak_bytes <= capacity:
        lines.append(
            f"verdict: FITS: {size(report.peak_bytes)} of {size(capacity)} {unit} per device "
            f"({share:.0%})" + (" (tight: XLA on the device may need more)" if share > 0.9 else "")
        )
    else:
        lines.append(
            f"verdict: DOES NOT FIT: {size(report.peak_bytes)} {unit} needed per device, "
            f"{size(capacity)} {unit} available. What would help:"
        )
        lines += [f"  - {s}" for s in suggestions(report)]
    lines.append(
        "(XLA:CPU's buffer assignment; it may keep some bf16 temporaries in fp32, so bf16 runs "
        "err on the high side.)"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line

USAGE = (
    "usage: fiat-t5x preflight --gin_file=... [--gin.NAME=VALUE ...] "
    "(--target v5e-32 | --devices N --device_memory_gib G) [--json OUT.json] [--cpu_hoisting]\n"
)


def split_args(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """(preflight's own flags, the train flags)."""
    own, rest = {}, []
    names = ("--target", "--devices", "--device_memory_gib", "--json", "--peak_tflops")
    switches = ("--cpu_hoisting",)
    argv = list(argv)
    i = 0
    while i < len(argv):
        flag, sep, value = argv[i].partition("=")
        if flag in switches and not sep:
            own[flag[2:]] = "1"
        elif flag in names:
            if not sep:
                if i + 1 >= len(argv):
                    raise ValueError(f"{flag} needs a value")
                i += 1
                value = argv[i]
            own[flag[2:]] = value
        else:
            rest.append(argv[i])
        i += 1
    return own, rest


def target_from_flags(own: dict[str, str]) -> Target:
    if "target" in own:
        target = parse_target(own["target"])
        if "device_memory_gib" in own:
            target = dataclasses.replace(
                target, memory_bytes=int(float(own["device_memory_gib"]) * GIB)
            )
        return target
    if "devices" not in own or "device_memory_gib" not in own:
        raise ValueError("name a --target (e.g. v5e-32) or give --devices and --device_memory_gib")
    try:
        devices, memory = int(own["devices"]), float(own["device_memory_gib"])
    except ValueError:
        raise ValueError("--devices takes an integer and --device_memory_gib a number") from None
    if devices < 1 or memory <= 0:
        raise ValueError("--devices and --device_memory_gib must be positive")
    peak = float(own["peak_tflops"]) * 1e12 if "peak_tflops" in own else None
    return Target(f"{devices} devices", devices, int(memory * GIB), peak)


def fake_devices_env(
    devices: int, base: dict[str, str] | None = None, *, cpu_hoisting: bool = False
) -> dict[str, str]:
    """The environment of a process whose JAX sees `devices` fake CPU devices (and that
    preflight then runs in directly). Unless `cpu_hoisting`, XLA's loop-invariant code motion is
    off (see `NO_CPU_HOISTING`)."""
    env = dict(os.environ if base is None else base)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    flags = flags.replace(NO_CPU_HOISTING, "")
    if not cpu_hoisting:
        flags = f"{flags} {NO_CPU_HOISTING}"
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env[_CHILD_ENV] = str(devices)
    return env


def _reexec(argv: Sequence[str], devices: int, cpu_hoisting: bool) -> int:
    """Run this command again with a fake `devices`-device CPU platform."""
    command = [sys.executable, "-m", "fiat_t5x.preflight", *argv]
    env = fake_devices_env(devices, cpu_hoisting=cpu_hoisting)
    return subprocess.run(command, env=env).returncode


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or "-h" in argv or "--help" in argv:
        print(USAGE + __doc__)
        return 0
    try:
        own, gin_argv = split_args(argv)
        target = target_from_flags(own)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if os.environ.get(_CHILD_ENV) != str(target.devices):
        return _reexec(argv, target.devices, "cpu_hoisting" in own)
    from fiat_t5x.training import gin_cli

    gin_cli.configure_logging()
    try:
        report = analyze(gin_argv, target)
    except (gin_cli.UsageError, ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    if "json" in own:
        tmp = own["json"] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(report.as_dict(), f, indent=2)
        os.replace(tmp, own["json"])
    return exit_code(report)


def exit_code(report: Report) -> int:
    """0 when every phase fits the target's memory per device, else 1."""
    return 0 if report.peak_bytes <= report.target.memory_bytes else 1


if __name__ == "__main__":
    sys.exit(main())
