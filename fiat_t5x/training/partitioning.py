"""Device mesh and logical-axis partitioning (the T5X `PjitPartitioner` idea, in one page).

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `lora_rank`, ...; see
`EncoderDecoderModel.logical_axes`). A rule table maps each logical name to a mesh axis
(`data` or `model`) or to None (replicated). The same gin file then shards a model on one CPU,
on a GPU box or on a TPU pod slice: only `num_partitions` (the `model` axis size) changes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
MODEL_AXIS = "model"

# T5X's standard rules for 1-D model parallelism ("Megatron" style): the wide dimensions
# (mlp, heads, joined_kv, vocab) are split over `model`; `embed` stays whole so activations
# need one all-reduce per block. LoRA's rank is tiny and stays replicated; a scanned stack's
# `layers` axis is never split. Activations have their own names (`fiat_t5x.models.activation_axes`,
# MaxText's): the batch over `data`, the wide hidden dimensions over `model` like their kernels,
# length and embed whole (a pod rule table may split `activation_length` or `activation_embed`).
STANDARD_LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", DATA_AXIS),
    ("vocab", MODEL_AXIS),
    ("embed", None),
    ("mlp", MODEL_AXIS),
    ("heads", MODEL_AXIS),
    ("joined_kv", MODEL_AXIS),
    ("kv", None),
    ("relpos_buckets", None),
    ("lora_rank", None),
    ("length", None),
    ("layers", None),
    ("activation_batch", DATA_AXIS),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", MODEL_AXIS),
    ("activation_heads", MODEL_AXIS),
    ("activation_kv", None),
    ("activation_vocab", MODEL_AXIS),
)


def device_grid(num_partitions: int, devices: Sequence[Any]) -> np.ndarray:
    """The devices as a [data, model] grid: `model` holds `num_partitions` devices that talk the
    most (neighbours on the chips' interconnect), `data` the rest.

    Within one slice `mesh_utils.create_device_mesh` picks the order from the TPU topology (on
    CPUs and GPUs it keeps the given order). Devices of several slices (`slice_index`, e.g.
    multi-slice TPU over the data-centre network) get `create_hybrid_device_mesh`: each slice
    is its own [data, model] block and the blocks are stacked along `data`, so only gradient
    reductions cross slices.
    """
    devices = list(devices)
    if num_partitions < 1 or len(devices) % num_partitions:
        raise ValueError(
            f"create_mesh: num_partitions={num_partitions} must divide the {len(devices)} "
            "devices; set `Partitioner.num_partitions` (gin/partitioning/*.gin) accordingly."
        )
    slices = sorted({getattr(d, "slice_index", 0) or 0 for d in devices})
    if len(slices) == 1:
        shape = (len(devices) // num_partitions, num_partitions)
        return mesh_utils.create_device_mesh(shape, devices)
    per_slice = len(devices) // len(slices)
    if per_slice % num_partitions:
        raise ValueError(
            f"create_mesh: num_partitions={num_partitions} must divide the {per_slice} devices "
            f"of each of the {len(slices)} slices: model parallelism stays inside a slice"
        )
    return mesh_utils.create_hybrid_device_mesh(
        (per_slice // num_partitions, num_partitions), (len(slices), 1), devices
    )


def create_mesh(num_partitions: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 2-D mesh [data, model] over all (global) devices; see `device_grid`."""
    devices = jax.devices() if devices is None else devices
    return Mesh(device_grid(num_partitions, devices), (DATA_AXIS, MODEL_AXIS))


def logical_to_spec(
    logical_axes: Sequence[str | None],
    rules: Sequence[tuple[str, str | None]],
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
) -> PartitionSpec:
    """PartitionSpec for one array from its logical axis names.

    A mesh axis is used at most once per array (the first logical axis that claims it wins).
    When `shape` and `mesh` are given, a dimension that the mesh axis does not divide is
    replicated instead (with a log line): better slower than a compile error on odd sizes.
    """
    table = dict(rules)
    used: set[str] = set()
    spec: list[str | None] = []
    for i, name in enumerate(logical_axes):
        if name is not None and name not in table:
            raise KeyError(
                f"logical axis {name!r} has no partitioning rule; add ({name!r}, <mesh axis or "
                "None>) to `Partitioner.logical_axis_rules`"
            )
        mesh_axis = table.get(name) if name is not None else None
        if mesh_axis is not None and mesh_axis in used:
            mesh_axis = None
        if mesh_axis is not None and shape is not None and mesh is not None:
            size = mesh.shape[mesh_axis]
            if shape[i] % size:
                logging.info(
                    "replicating axis %r of shape %s: not divisible by mesh axis %r of size %d",
                    name,
                    tuple(shape),
                    mesh_axis,
                    size,
                )
                mesh_axis = None
        if mesh_axis is not None:
            used.add(mesh_axis)
        spec.append(mesh_axis)
    return PartitionSpec(*spec)


class Partitioner:
    """Shardings for parameters, optimizer state and batches on one mesh."""

    def __init__(
        self,
        num_partitions: int = 1,
        logical_axis_rules: Sequence[tuple[str, str | None]] = STANDARD_LOGICAL_AXIS_RULES,
        devices: Sequence[jax.Device] | None = None,
    ) -> None:
        self.mesh = create_mesh(num_partitions, devices)
        self.logical_axis_rules = tuple(tuple(r) for r in logical_axis_rules)

    @property
    def data_parallel_size(self) -> int:
        return self.mesh.shape[DATA_AXIS]

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Trace under this mesh and rule table, so that the network's logical sharding
        constraints on activations (`nn.with_logical_constraint`) take effect; outside it they
        are no-ops. Every jitted function of the trainer is lowered inside this context."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.logical_axis_rules):
            yield

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def sharding_for(
        self, logical_axes: Sequence[str | None], shape: Sequence[int]
    ) -> NamedSharding:
        spec = logical_to_spec(logical_axes, self.logical_axis_rules, shape, self.mesh)
        return NamedSharding(self.mesh, spec)

    def param_shardings(self, params: Any, logical_axes: Any) -> Any:
        """Tree of NamedShardings matching `params` (arrays or ShapeDtypeStructs)."""
        return jax.tree.map(
            lambda x, axes: self.sharding_for(axes, x.shape),
            params,
            logical_axes,
            is_leaf=lambda a: isinstance(a, tuple),
        )

    def opt_state_shardings(self, opt_state: Any, params: Any, param_shardings: Any) -> Any:
        """Shardings for an optax state: a leaf shaped like its parameter shares its sharding.

        optax keeps per-parameter state (Adam's mu/nu, Adafactor's v) in trees keyed like the
        params, so a state leaf whose dict-key path ends with a parameter's path and has its
        shape gets that parameter's sharding. Factored row/column statistics and counters are
        small and replicated.
        """
        by_path = {}
        for (path, p), s in zip(
            jax.tree_util.tree_flatten_with_path(params)[0],
            jax.tree.leaves(param_shardings),
            strict=True,
        ):
            by_path[_dict_keys(path)] = (tuple(p.shape), s)

        def pick(path: Any, leaf: Any) -> NamedSharding:
            keys = _dict_keys(path)
            for start in range(len(keys)):
                hit = by_path.get(keys[start:])
                if hit is not None and hit[0] == tuple(leaf.shape):
                    return hit[1]
            return self.replicated

        return jax.tree_util.tree_map_with_path(pick, opt_state)

    def batch_sharding(self) -> NamedSharding:
        """Batches are split over `data` along their first (batch) dimension."""
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    def host_batch_to_global(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Assemble per-host numpy batches (this host's rows) into global sharded arrays."""
        sharding = self.batch_sharding()
        return {
            k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()
        }

    def replicated_batch_to_global(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global arrays from a batch that every host holds in full (e.g. evaluation)."""
        sharding = self.batch_sharding()
        out = {}
        for k, v in batch.items():
            v = np.asarray(v)
            out[k] = jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
        return out


def _dict_keys(path: Any) -> tuple[str, ...]:
    """The dict keys along a pytree key path (sequence/attribute entries dropped)."""
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
