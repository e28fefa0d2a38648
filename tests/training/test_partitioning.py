"""Mesh construction and logical-axis rules (no compiles)."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from fiat_t5x.training import partitioning
from tests.training.training_helpers import tiny_model

RULES = partitioning.STANDARD_LOGICAL_AXIS_RULES


def test_mesh_is_data_by_model():
    mesh = partitioning.create_mesh(2)
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    assert mesh.axis_names == ("data", "model")


def test_mesh_rejects_a_partition_count_that_does_not_divide_the_devices():
    with pytest.raises(ValueError, match="num_partitions=3 must divide the 8 devices"):
        partitioning.create_mesh(3)


def test_logical_rules_megatron_style():
    # q/k/v kernels split their output heads, `out` its input heads, LoRA rank replicated.
    assert partitioning.logical_to_spec(("embed", "joined_kv"), RULES) == P(None, "model")
    assert partitioning.logical_to_spec(("joined_kv", "embed"), RULES) == P("model", None)
    assert partitioning.logical_to_spec(("embed", "lora_rank"), RULES) == P(None, None)
    assert partitioning.logical_to_spec(("lora_rank", "joined_kv"), RULES) == P(None, "model")
    assert partitioning.logical_to_spec(("vocab", "embed"), RULES) == P("model", None)


def test_a_mesh_axis_is_used_once_per_array():
    assert partitioning.logical_to_spec(("heads", "mlp"), RULES) == P("model", None)


def test_indivisible_dimension_is_replicated():
    mesh = partitioning.create_mesh(2)
    spec = partitioning.logical_to_spec(("embed", "joined_kv"), RULES, shape=(64, 63), mesh=mesh)
    assert spec == P(None, None)


def test_unknown_logical_axis_names_the_fix():
    with pytest.raises(KeyError, match="no partitioning rule"):
        partitioning.logical_to_spec(("nonsense",), RULES)


def test_model_parameters_and_adam_state_are_sharded_like_their_params():
    import optax

    model = tiny_model()
    part = partitioning.Partitioner(num_partitions=2)
    shapes = model.param_shapes()
    shardings = part.param_shardings(shapes, model.logical_axes())
    q = shardings["encoder"]["layers_0"]["attention"]["query"]
    assert q["kernel"].spec == P(None, "model")
    assert q["lora_a"].spec == P(None, None)
    assert q["lora_b"].spec == P(None, "model")
    opt_state = jax.eval_shape(optax.adam(1e-3).init, shapes)
    opt_sh = part.opt_state_shardings(opt_state, shapes, shardings)
    mu = opt_sh[0].mu["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    assert mu.spec == P(None, "model")
    assert opt_sh[0].count.spec == P()


class _FakeDevice:
    """What the mesh builder reads from a device (an id, its process, slice and kind)."""

    platform = "cpu"
    device_kind = "cpu"

    def __init__(self, id_: int, slice_index: int) -> None:
        self.id, self.process_index, self.slice_index = id_, id_ // 2, slice_index

    def __repr__(self) -> str:
        return f"D{self.id}s{self.slice_index}"


def test_a_multislice_mesh_keeps_model_groups_inside_a_slice_and_spans_slices_with_data():
    # Two slices of 4 devices, listed interleaved as a runtime may list them.
    devices = [_FakeDevice(i, slice_index=i % 2) for i in range(8)]
    grid = partitioning.device_grid(2, devices)
    assert grid.shape == (4, 2)
    for row in grid:  # every model-parallel group talks inside one slice only
        assert len({d.slice_index for d in row}) == 1
    assert [row[0].slice_index for row in grid] == [0, 0, 1, 1]  # data crosses the slices
    with pytest.raises(ValueError, match="model parallelism stays inside a slice"):
        partitioning.device_grid(8, devices)


def test_activation_constraints_apply_only_under_the_partitioners_context():
    import flax.linen as nn
    import jax.numpy as jnp

    part = partitioning.Partitioner(
        num_partitions=2, logical_axis_rules=(*RULES, ("activation_batch", "data"))
    )

    def f(x):
        return nn.with_logical_constraint(x * 2, ("activation_batch", None))

    x = jax.ShapeDtypeStruct((8, 4), jnp.float32)
    assert "sharding_constraint" not in jax.jit(f).lower(x).as_text()
    with part.context():
        text = jax.jit(f).lower(x).as_text()
    assert "sharding_constraint" in text and '{"data"}' in text.replace(" ", "")
