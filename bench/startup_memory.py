"""Peak host RAM of the start-up path (base checkpoint -> params on the mesh + LoRA init +
optimizer state) against the parameter bytes: the sharded start-up vs the old one, per format.

The old path (the project before the sharded start-up, rebuilt here from today's functions as
the peer) read the whole checkpoint into numpy on every host, initialised the whole network
(without output shardings) for the LoRA factors, copied both into one host tree and then
`device_put` it. The new one (`Trainer.initial_state`) reads each device's blocks straight into
`jax.Array`s and initialises only the LoRA factors, sharded.

The script writes a random Flan-T5-small-sized checkpoint itself (T5X Orbax, classic T5X msgpack +
zarr, HF safetensors), then runs each start-up in fresh processes on a `model`-parallel mesh of
2 CPU devices: one process holding both, or two processes (`launch.local`, jax.distributed) of one
device each, where each "host" should hold about half. Per process it records the peak RSS during
the start-up (VmHWM, reset just before) minus the RSS before it, and what the process holds on
its devices at the end. On the CPU the devices' memory *is* host RAM, so the end state itself
costs one copy of the process's share; everything above that is start-up overhead, part of it
XLA compiling the start-up's two jitted functions (a fixed cost, measured alone as "compile").

    .venv/bin/python bench/startup_memory.py                        # all formats, 1 and 2 processes
    .venv/bin/python bench/startup_memory.py --formats orbax --processes 2
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FORMATS = ("orbax", "legacy", "hf")
PATHS = ("old", "new", "compile")
SEED = 0


def small_config():
    """Flan-T5 small's architecture (77 M parameters, 308 MB in fp32)."""
    from fiat_t5x.models import presets

    return presets.flan_t5_small()


# ----------------------------------------------------------------------------- checkpoints


def random_params(config) -> dict:
    """Random fp32 params in the contract layout, without JAX (layout.param_shapes)."""
    import numpy as np

    from fiat_t5x.models.checkpoints import param_shapes, unflatten

    rng = np.random.default_rng(SEED)
    return unflatten(
        {
            path: (rng.standard_normal(shape, dtype=np.float32) * 0.05)
            for path, shape in param_shapes(config).items()
        }
    )


def write_legacy(params: dict, directory: str) -> str:
    """A classic T5X checkpoint: msgpack `checkpoint` with TensorStore zarr leaves beside it."""
    import flax.serialization
    import tensorstore as ts

    from fiat_t5x.models.checkpoints import flatten, unflatten

    root = os.path.join(directory, "checkpoint_1")
    os.makedirs(root)
    target = {}
    for path, value in flatten(params).items():
        name = "target." + path.replace("/", ".")
        chunks = [min(n, 1024) for n in value.shape]
        ts.open(
            {
                "driver": "zarr",
                "kvstore": {"driver": "file", "path": os.path.join(root, name + "/")},
                "metadata": {
                    "shape": list(value.shape),
                    "chunks": chunks,
                    "dtype": "<f4",
                    "compressor": {"id": "gzip", "level": 1},
                },
                "create": True,
            }
        ).result().write(value).result()
        target[path] = {
            "driver": "zarr",
            "kvstore": {"driver": "file", "path": name + "/"},
            "metadata": {"chunks": chunks, "shape": list(value.shape)},
        }
    tree = {"version": 3, "optimizer": {"target": unflatten(target), "state": {"step": 1}}}
    with open(os.path.join(root, "checkpoint"), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(tree))
    return root


def write_checkpoints(directory: str, formats) -> dict[str, str]:
    from fiat_t5x.models.checkpoints import save_hf_t5, save_t5x_params

    config = small_config()
    params = random_params(config)
    paths = {}
    if "orbax" in formats:
        paths["orbax"] = save_t5x_params(params, config, os.path.join(directory, "orbax"))
    if "legacy" in formats:
        paths["legacy"] = write_legacy(params, os.path.join(directory, "legacy"))
    if "hf" in formats:
        paths["hf"] = save_hf_t5(params, config, os.path.join(directory, "hf"))
    return paths


# ----------------------------------------------------------------------------- one process


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _old_startup(trainer, model, checkpoint: str):
    """The start-up before the sharded one: whole checkpoint in numpy, whole-network init."""
    import jax
    import numpy as np

    from fiat_t5x.models.checkpoints import flatten, load_hf_t5, load_t5x_params, unflatten
    from fiat_t5x.training.initial_params import is_huggingface_checkpoint

    base = (
        load_hf_t5(checkpoint)[1]
        if is_huggingface_checkpoint(checkpoint)
        else load_t5x_params(checkpoint)
    )
    base = flatten(base)
    fresh = flatten(jax.device_get(model.init_params(jax.random.PRNGKey(SEED))))
    shapes = flatten(model.param_shapes())
    merged = {
        k: np.asarray(base[k]).astype(s.dtype, copy=False) if k in base else np.asarray(fresh[k])
        for k, s in shapes.items()
    }
    return trainer.create_state(unflatten(merged))


def _compile_startup(trainer, model) -> None:
    import jax
    import numpy as np

    from fiat_t5x.models.checkpoints import flatten
    from fiat_t5x.models.lora import is_lora_path
    from fiat_t5x.training import initial_params

    base = [k for k in flatten(model.param_shapes()) if not is_lora_path(k)]
    plan = initial_params.plan_startup(model, trainer.partitioner, trainer.selector, base)
    with trainer.partitioner.context():
        key = jax.ShapeDtypeStruct((2,), np.uint32)
        initial_params.fresh_params_function(model, plan).lower(key).compile()
        trainer.create_state_function().lower(trainer.trainable_shapes).compile()


def worker(args: argparse.Namespace) -> None:
    import jax
    import optax

    from fiat_t5x.models.lora import LoraConfig
    from fiat_t5x.models.model import EncoderDecoderModel
    from fiat_t5x.training import distributed
    from fiat_t5x.training.optimizers import constant_schedule
    from fiat_t5x.training.partitioning import Partitioner
    from fiat_t5x.training.trainer import Trainer

    distributed.initialize()
    model = EncoderDecoderModel(small_config(), LoraConfig())
    schedule = constant_schedule(1e-3)
    trainer = Trainer(model, Partitioner(num_partitions=2), optax.adafactor(schedule), schedule)
    trainer.state_shardings  # noqa: B018  (abstract shapes traced before the measurement)
    param_bytes = sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(model.param_shapes()))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    start = time.perf_counter()
    if args.path == "old":
        state, frozen = _old_startup(trainer, model, args.checkpoint)
    elif args.path == "new":
        state, frozen = trainer.initial_state(args.checkpoint, SEED)
    else:  # what the new path spends compiling its two jitted functions, reading nothing
        _compile_startup(trainer, model)
        state, frozen = (), ()
    jax.block_until_ready((state, frozen))
    seconds = time.perf_counter() - start
    held = sum(
        shard.data.nbytes
        for array in jax.tree.leaves((state, frozen))
        for shard in array.addressable_shards
    )
    record = {
        "format": args.format,
        "path": args.path,
        "processes": jax.process_count(),
        "process": jax.process_index(),
        "param_bytes": param_bytes,
        "held_bytes": held,
        "peak_delta_bytes": _status("VmHWM") - before,
        "end_delta_bytes": _status("VmRSS") - before,
        "seconds": seconds,
    }
    with open(f"{args.out}.{jax.process_index()}", "w") as f:
        json.dump(record, f)


# ----------------------------------------------------------------------------- driver


def run_case(
    checkpoint: str, fmt: str, path: str, processes: int, tmp: str, malloc: str
) -> list[dict]:
    from launch.local import run_processes

    out = os.path.join(tmp, f"{fmt}-{path}-{processes}.json")
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={2 // processes}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO)
    if malloc == "mmap":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    argv = [sys.executable, __file__, "--worker", "--format", fmt, "--path", path]
    argv += ["--checkpoint", checkpoint, "--out", out]
    code = run_processes(argv, processes, env=env, timeout=1800)
    if code:
        raise RuntimeError(f"{fmt}/{path}/{processes} processes failed with exit code {code}")
    return [json.loads(pathlib.Path(f"{out}.{i}").read_text()) for i in range(processes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--paths", default=",".join(PATHS), help="old, new, compile (only)")
    parser.add_argument("--json", help="write every record here")
    parser.add_argument(
        "--malloc",
        choices=("mmap", "default"),
        default="mmap",
        help="mmap: MALLOC_MMAP_THRESHOLD_=65536, so that freed blocks leave the RSS (glibc's "
        "default raises the threshold to the largest freed block and keeps such blocks in the "
        "heap, counting memory no longer in use)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--format", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    formats = [f for f in args.formats.split(",") if f]
    counts = [int(n) for n in args.processes.split(",") if n]
    records = []
    with tempfile.TemporaryDirectory(prefix="startup_memory_") as tmp:
        checkpoints = write_checkpoints(tmp, formats)
        print(f"load average before: {os.getloadavg()}; malloc: {args.malloc}", flush=True)
        print(
            "| format | processes | path | param MB | held MB / process | peak extra MB / "
            "process (x params) | above held (x params) | s |"
        )
        print("|---|---:|---|---:|---:|---:|---:|---:|")
        for fmt in formats:
            for processes in counts:
                for path in [p for p in args.paths.split(",") if p]:
                    rows = run_case(checkpoints[fmt], fmt, path, processes, tmp, args.malloc)
                    records += rows
                    worst = max(rows, key=lambda r: r["peak_delta_bytes"])
                    p = worst["param_bytes"]
                    print(
                        f"| {fmt} | {processes} | {path} | {p / 1e6:.0f} | "
                        f"{worst['held_bytes'] / 1e6:.0f} | {worst['peak_delta_bytes'] / 1e6:.0f} "
                        f"({worst['peak_delta_bytes'] / p:.2f}) | "
                        f"{(worst['peak_delta_bytes'] - worst['held_bytes']) / p:.2f} | "
                        f"{worst['seconds']:.1f} |",
                        flush=True,
                    )
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)


if __name__ == "__main__":
    main()
