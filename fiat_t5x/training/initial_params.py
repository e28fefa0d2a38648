"""The starting parameters, created where they will live: a pretrained base (T5X or Hugging Face)
read shard by shard onto the mesh, plus freshly initialised parameters the base lacks (the LoRA
factors), or a random init when there is no base.

Nothing here holds the whole model on one device or in one host's memory:
* each host reads, for each parameter, only the blocks its own devices hold (TensorStore /
  safetensors reads by index domain, `lazy_arrays`), converts them to the stored dtype (e.g.
  bf16 frozen weights) and places them with the partitioner's sharding; one array's blocks are
  in host memory at a time;
* missing parameters are created by one jitted function whose outputs carry the partitioner's
  shardings, and which computes only them (`EncoderDecoderModel.initializer(paths)`).

The base is read again at every (re)start, which is why training checkpoints never hold it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from fiat_t5x import storage
from fiat_t5x.models.checkpoints.lazy_arrays import LazyArray, normalize_index
from fiat_t5x.models.checkpoints.model_layout import to_model_layout
from fiat_t5x.models.checkpoints.tree import cast_floating
from fiat_t5x.models.lora import is_lora_path
from fiat_t5x.training.optimizers import TrainableSelector, flatten_params, unflatten_params
from fiat_t5x.training.partitioning import Partitioner


def is_huggingface_checkpoint(path: str) -> bool:
    """A local Hugging Face model directory: config.json beside *.safetensors (or a safetensors
    file). Bucket URLs hold T5X checkpoints."""
    if storage.is_url(path):
        return False
    if os.path.isfile(path):
        return path.endswith(".safetensors")
    names = os.listdir(path) if os.path.isdir(path) else []
    return "config.json" in names and any(n.endswith(".safetensors") for n in names)


def open_checkpoint(path: str, model: Any, *, checkpoint_scan_axis: int = 1) -> dict:
    """The base parameters at `path` as unread arrays in the model's layout (flat paths).

    T5X checkpoints in any layout (example network, scalable_t5 scanned on
    `checkpoint_scan_axis`, umT5) and HF directories are accepted; a scanned model gets its
    layers stacked on `config.param_scan_axis` (lazily: nothing is read here).
    """
    if not storage.exists(path):
        raise FileNotFoundError(
            f"INITIAL_CHECKPOINT_PATH={path!r} does not exist; point it at a T5X checkpoint_N "
            "directory (local or gs://) or a Hugging Face model directory, or set it to None to "
            "train from scratch"
        )
    if is_huggingface_checkpoint(path):
        from fiat_t5x.models.checkpoints.hf_t5 import open_hf_t5

        _, contract = open_hf_t5(path)
    else:
        from fiat_t5x.models.checkpoints.t5x import open_t5x_params

        contract = open_t5x_params(path, param_scan_axis=checkpoint_scan_axis)
    shapes = {k: tuple(v.shape) for k, v in flatten_params(model.param_shapes()).items()}
    return to_model_layout(contract, shapes, getattr(model.config, "param_scan_axis", 1))


def check_fits(base: Mapping[str, Any], expected: Mapping[str, Any], path: str) -> None:
    """Every model parameter but the LoRA factors must be in the checkpoint, with its shape,
    and nothing else may be: raises naming the paths."""
    missing = sorted(k for k in expected if k not in base and not is_lora_path(k))
    unexpected = sorted(k for k in base if k not in expected)
    wrong = sorted(
        f"{k}: checkpoint {tuple(base[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in base and tuple(base[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint {path} does not fit the model config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}. Check the gin model "
            "file (sizes, gated MLP, tied logits, scan_layers) against the checkpoint."
        )


def place(array: LazyArray, sharding: NamedSharding, dtype: Any) -> jax.Array:
    """`array` as a `jax.Array` with `sharding`, in `dtype`: this process reads the blocks of
    its own devices, each distinct block once (replicas share it), and nothing else."""
    blocks: dict[tuple, np.ndarray] = {}
    shards = []
    for device, index in sharding.addressable_devices_indices_map(array.shape).items():
        index = normalize_index(index, array.shape)
        key = tuple((s.start, s.stop) for s in index)
        if key not in blocks:
            blocks[key] = np.ascontiguousarray(cast_floating(array.read(index), dtype))
        shards.append(jax.device_put(blocks[key], device))
    # Transfers are asynchronous: wait, so that this array's host blocks are freed before the
    # next array is read (else every block of the model could be in flight at once).
    return jax.block_until_ready(
        jax.make_array_from_single_device_arrays(array.shape, sharding, shards)
    )


@dataclasses.dataclass(frozen=True)
class StartupPlan:
    """Where each parameter of a run comes from, and how it is stored and sharded.

    shapes: flat path -> ShapeDtypeStruct in the stored dtype, with the target sharding.
    trainable: the paths the optimizer updates. fresh: the paths initialised (not loaded).
    """

    shapes: dict[str, jax.ShapeDtypeStruct]
    trainable: frozenset[str]
    fresh: frozenset[str]

    def subset(self, paths: Any) -> dict:
        """Nested ShapeDtypeStructs of `paths` (with shardings)."""
        return unflatten_params({k: self.shapes[k] for k in sorted(paths)})

    def split(self, flat: Mapping[str, Any]) -> tuple[dict, dict]:
        """(trainable, frozen) nested dicts of a flat tree."""
        trainable = {k: v for k, v in flat.items() if k in self.trainable}
        frozen = {k: v for k, v in flat.items() if k not in self.trainable}
        return unflatten_params(trainable), unflatten_params(frozen)


def plan_startup(
    model: Any,
    partitioner: Partitioner,
    selector: TrainableSelector | None,
    loaded: Any,
) -> StartupPlan:
    """The plan for `model` on `partitioner`'s mesh when the paths in `loaded` come from a
    checkpoint (empty: a random init). Needs no checkpoint data: preflight uses it abstractly."""
    selector = selector or TrainableSelector()
    params = model.param_shapes()
    flat = flatten_params(params)
    shardings = flatten_params(partitioner.param_shardings(params, model.logical_axes()))
    selector.split(params)  # raises when the selector matches nothing
    shapes = {
        k: jax.ShapeDtypeStruct(v.shape, selector.stored_dtype(k, v.dtype), sharding=shardings[k])
        for k, v in flat.items()
    }
    trainable = frozenset(k for k in flat if selector.is_trainable(k))
    fresh = frozenset(k for k in flat if k not in set(loaded))
    return StartupPlan(shapes, trainable, fresh)


def fresh_params_function(model: Any, plan: StartupPlan) -> Any:
    """The jitted `rng -> fresh params` of `plan` (nested, stored dtypes, target shardings)."""
    init = model.initializer(plan.fresh)

    def fresh(rng: jax.Array) -> dict:
        flat = flatten_params(init(rng))
        return unflatten_params({k: v.astype(plan.shapes[k].dtype) for k, v in flat.items()})

    shardings = jax.tree.map(lambda s: s.sharding, plan.subset(plan.fresh))
    return jax.jit(fresh, out_shardings=shardings)


def initial_params(
    model: Any,
    partitioner: Partitioner,
    path: str | None,
    selector: TrainableSelector | None = None,
    seed: int = 0,
) -> tuple[dict, dict]:
    """(trainable, frozen): nested dicts of `jax.Array`s sharded by `partitioner`'s rules, the
    frozen ones in `selector.frozen_dtype` when set.

    Every parameter must come from the checkpoint at `path` except LoRA factors, which are
    initialised (lora_b = 0, so the adapted model starts equal to the base); `path=None` is a
    random init from `seed`. Shape mismatches and missing or unexpected parameters raise,
    naming the paths, before anything is read or initialised.
    """
    base: dict[str, LazyArray] = {}
    if path is not None:
        base = open_checkpoint(path, model)
        check_fits(base, flatten_params(model.param_shapes()), path)
    else:
        logging.info("INITIAL_CHECKPOINT_PATH is None: the base is a random init (seed %d)", seed)
    plan = plan_startup(model, partitioner, selector, base)
    placed: dict[str, jax.Array] = {}
    with partitioner.context():
        if plan.fresh:
            fresh = fresh_params_function(model, plan)(jax.random.PRNGKey(seed))
            placed.update(flatten_params(fresh))
    for k, array in base.items():
        spec = plan.shapes[k]
        placed[k] = place(array, spec.sharding, spec.dtype)
    if path is not None:
        logging.info(
            "placed %d base parameters from %s on the mesh; initialised %d (%s)",
            len(base),
            path,
            len(plan.fresh),
            "LoRA factors" if all(is_lora_path(k) for k in plan.fresh) else "missing",
        )
    return plan.split(placed)
