"""The sharded start-up on 8 fake devices: the same parameters as the checkpoint readers and
the full init give, every array placed with the partitioner's sharding, each host reading only
its devices' blocks, and the fresh init computing only the missing parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from fiat_t5x.models.checkpoints import flatten, load_t5x_params
from fiat_t5x.models.checkpoints import lazy_arrays as lazy_lib
from fiat_t5x.models.checkpoints.hf_t5 import save_hf_t5
from fiat_t5x.models.lora import is_lora_path
from fiat_t5x.training import initial_params as startup
from fiat_t5x.training.optimizers import TrainableSelector, flatten_params, held_in_compute_dtype
from fiat_t5x.training.partitioning import Partitioner
from tests.training.training_helpers import tiny_model

SEED = 3


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def mesh_4x2():
    return Partitioner(num_partitions=2)


@pytest.fixture(scope="module")
def reference(model, fixture_checkpoint):
    """Today's numpy path: the whole checkpoint in memory, the whole network initialised."""
    base = flatten(load_t5x_params(fixture_checkpoint))
    fresh = flatten_params(jax.device_get(model.init_params(jax.random.PRNGKey(SEED))))
    return base, {k: v for k, v in fresh.items() if is_lora_path(k)}


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory, model, fixture_checkpoint):
    directory = tmp_path_factory.mktemp("hf") / "tiny"
    save_hf_t5(load_t5x_params(fixture_checkpoint), model.config, str(directory))
    return str(directory)


def _checkpoint(name, fixture_checkpoint, hf_checkpoint):
    if name == "hf":
        return hf_checkpoint
    if name == "orbax_url":  # a bucket on a pod (gs://); file:// takes the same kvstore path
        return "file://" + fixture_checkpoint.replace("/legacy/", "/orbax/")
    return fixture_checkpoint.replace("/legacy/", f"/{name}/")


@pytest.mark.parametrize("fmt", ["legacy", "orbax", "orbax_url", "hf"])
def test_sharded_startup_gives_todays_parameters_with_the_partitioners_shardings(
    fmt, model, mesh_4x2, reference, fixture_checkpoint, hf_checkpoint
):
    path = _checkpoint(fmt, fixture_checkpoint, hf_checkpoint)
    trainable, frozen = startup.initial_params(model, mesh_4x2, path, None, SEED)
    base, lora = reference
    got_frozen = flatten_params(frozen)
    got_trainable = flatten_params(trainable)
    assert set(got_frozen) == set(base) and set(got_trainable) == set(lora)
    axes = flatten_params(model.logical_axes())
    for path_, array in {**got_frozen, **got_trainable}.items():
        want = mesh_4x2.sharding_for(axes[path_], array.shape)
        assert isinstance(array, jax.Array) and array.sharding == want, path_
        for shard in array.addressable_shards:  # each device holds its block only
            assert shard.data.shape == want.shard_shape(array.shape), path_
        expected = base[path_] if path_ in base else lora[path_]
        np.testing.assert_array_equal(np.asarray(array), expected, err_msg=path_)
    # The big kernels really are split over `model`: the check above is not vacuous.
    kernel = got_frozen["encoder/layers_0/mlp/wi_0/kernel"]
    assert kernel.addressable_shards[0].data.shape == (64, 128)


def test_each_block_is_read_once_and_no_sharded_array_is_read_whole(
    model, mesh_4x2, fixture_checkpoint, monkeypatch
):
    reads = []
    original = lazy_lib.TensorStoreArray._read

    def recording(self, index):
        reads.append((self.name, tuple((s.start, s.stop) for s in index), self.shape))
        return original(self, index)

    monkeypatch.setattr(lazy_lib.TensorStoreArray, "_read", recording)
    startup.initial_params(model, mesh_4x2, fixture_checkpoint, None, SEED)
    assert reads and len(reads) == len(set(reads))  # replicas share one read
    axes = flatten_params(model.logical_axes())
    for name, block, shape in reads:
        sharding = mesh_4x2.sharding_for(axes[name], shape)
        assert tuple(b - a for a, b in block) == sharding.shard_shape(shape), name
    sharded = {name for name, _, shape in reads if mesh_4x2.sharding_for(axes[name], shape).spec != jax.sharding.PartitionSpec(*([None] * len(shape)))}  # fmt: skip
    assert "decoder/logits_dense/kernel" in sharded


def test_bf16_frozen_weights_are_converted_on_the_way(
    model, mesh_4x2, fixture_checkpoint, reference
):
    selector = TrainableSelector(frozen_dtype="bfloat16")
    trainable, frozen = startup.initial_params(model, mesh_4x2, fixture_checkpoint, selector, SEED)
    base, _ = reference
    for path_, array in flatten_params(frozen).items():
        # Kernels and embedding in bf16; norm scales and the position-bias table as they were.
        dtype = jax.numpy.bfloat16 if held_in_compute_dtype(path_) else np.float32
        assert array.dtype == dtype, path_
        assert np.asarray(array).tobytes() == base[path_].astype(dtype).tobytes()
    assert any(a.dtype == jax.numpy.bfloat16 for a in jax.tree.leaves(frozen))
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(trainable))


def test_the_fresh_init_computes_only_the_missing_parameters(model, mesh_4x2):
    """XLA drops everything the LoRA init does not return (the other parameters, the dummy
    forward pass): its compiled memory is about the LoRA factors' own, a small fraction of
    the model's per device."""
    key = jax.ShapeDtypeStruct((2,), np.uint32)
    base = [k for k in flatten_params(model.param_shapes()) if not is_lora_path(k)]
    plan = startup.plan_startup(model, mesh_4x2, None, base)
    assert plan.fresh and all(is_lora_path(k) for k in plan.fresh)
    with mesh_4x2.context():
        memory = startup.fresh_params_function(model, plan).lower(key).compile().memory_analysis()

    def per_device(paths):
        shapes = [plan.shapes[k] for k in paths]
        return sum(np.prod(s.sharding.shard_shape(s.shape)) * s.dtype.itemsize for s in shapes)

    lora, model_bytes = per_device(plan.fresh), per_device(plan.shapes)
    used = memory.output_size_in_bytes + memory.temp_size_in_bytes
    assert lora <= memory.output_size_in_bytes < 1.1 * lora  # (+ the output tuple)
    assert used < 0.1 * model_bytes, (used, lora, model_bytes)


def test_lazy_views_read_the_right_blocks():
    rng = np.random.default_rng(0)
    value = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    base = lazy_lib.InMemoryArray(value)
    index = (slice(1, 3), slice(0, 2), slice(1, 5), slice(2, 6))
    cases = {
        "transposed": (lazy_lib.Transposed(base, (2, 0, 3, 1)), value.transpose(2, 0, 3, 1)),
        "layer": (lazy_lib.LayerOf(base, 2, 1), value[:, 2]),
        "merged": (lazy_lib.MergedAxes(base, 2), value.reshape(3, 4, 30)),
        "scaled": (lazy_lib.Scaled(base, 0.5), value * 0.5),
    }
    for name, (view, want) in cases.items():
        np.testing.assert_array_equal(view.read(), want, err_msg=name)
        sub = tuple(slice(1, min(3, n)) for n in view.shape)
        np.testing.assert_array_equal(view.read(sub), want[sub], err_msg=name)
    merged = lazy_lib.MergedAxes(base, 2)  # a range that cuts through heads
    np.testing.assert_array_equal(
        merged.read((slice(None),) * 2 + (slice(7, 23),)), value.reshape(3, 4, 30)[:, :, 7:23]
    )
    layers = [lazy_lib.LayerOf(base, i, 1) for i in range(4)]
    assert lazy_lib.stack_layers(layers, 1) is base  # same stack, same axis: passed through
    restacked = lazy_lib.stack_layers(layers, 0)  # scanned on axis 1, read on axis 0
    assert isinstance(restacked, lazy_lib.Transposed)
    np.testing.assert_array_equal(restacked.read(index), value.transpose(1, 0, 2, 3)[index])
    stacked = lazy_lib.stack_layers([lazy_lib.LayerOf(base, i, 1) for i in (0, 2)], 0)
    assert isinstance(stacked, lazy_lib.StackedLayers)  # not a whole stack: layer by layer
    np.testing.assert_array_equal(stacked.read(), value[:, [0, 2]].transpose(1, 0, 2, 3))


_PEAK_SCRIPT = r"""
import json, sys
import jax
from fiat_t5x.models.config import T5Config
from fiat_t5x.models.model import EncoderDecoderModel
from fiat_t5x.training.initial_params import initial_params
from fiat_t5x.training.optimizers import TrainableSelector
from fiat_t5x.training.partitioning import Partitioner

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

model = EncoderDecoderModel(T5Config(**json.loads(sys.argv[2])))
partitioner = Partitioner(num_partitions=2)
model.param_shapes()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
before = status("VmRSS")
params, _ = initial_params(model, partitioner, sys.argv[1], TrainableSelector([".*"]))
jax.block_until_ready(params)
leaves = jax.tree.leaves(params)
print(json.dumps({
    "peak": status("VmHWM") - before,
    "held": sum(s.data.nbytes for a in leaves for s in a.addressable_shards),
    "params": sum(a.nbytes for a in leaves),
}))
"""


# glibc otherwise raises its mmap threshold to the largest freed block and keeps freed blocks in
# the heap: the RSS would then count memory the process no longer uses (bench/startup_memory.py
# reports both).
_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}


@pytest.mark.slow
def test_peak_host_memory_of_the_startup_is_its_share_plus_one_array(tmp_path):
    """A 100 MB checkpoint placed on a model-parallel mesh of 2 CPU devices (whose memory is
    host RAM): the start-up's peak RSS is what the devices end up holding plus a few arrays'
    blocks, not the several whole copies of the model the old path made (4-5x, measured in
    bench/startup_memory.py)."""
    from fiat_t5x.models.checkpoints import param_shapes, save_t5x_params, unflatten
    from fiat_t5x.models.config import T5Config

    fields = dict(
        vocab_size=8192, emb_dim=512, num_heads=8, head_dim=64, mlp_dim=2048,
        num_encoder_layers=2, num_decoder_layers=2, dtype="float32",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    shapes = param_shapes(T5Config(**fields))
    params = unflatten({k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()})
    checkpoint = save_t5x_params(params, T5Config(**fields), str(tmp_path / "ckpt"))
    del params
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, checkpoint, json.dumps(fields)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", **_MALLOC},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    largest = max(np.prod(s) * 4 for s in shapes.values())
    assert measured["params"] > 100e6 and measured["held"] >= measured["params"]
    assert measured["peak"] < measured["held"] + 4 * largest, measured
