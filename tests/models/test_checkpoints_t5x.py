"""T5X checkpoint import: the real-T5X fixture in both formats, plus formats the fixture lacks
(multi-chunk and bf16 zarr arrays, scanned layers), written here with TensorStore / flax / orbax."""

from __future__ import annotations

import json
import os

import flax.serialization
import ml_dtypes
import numpy as np
import pytest
import tensorstore as ts

from fiat_t5x.models.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    check_shapes,
    detect_t5x_format,
    flatten,
    infer_config,
    load_t5x_params,
    param_shapes,
)
from fiat_t5x.models.checkpoints.lazy_arrays import InMemoryArray, materialize
from fiat_t5x.models.checkpoints.model_layout import to_contract_layout
from fiat_t5x.models.config import T5Config


@pytest.fixture(scope="module")
def fixture_dir(shared_dir):
    return shared_dir / "fixtures" / "t5x_tiny_checkpoint"


@pytest.fixture(scope="module")
def legacy_params(fixture_dir):
    return flatten(load_t5x_params(str(fixture_dir / "legacy" / "checkpoint_1000")))


@pytest.fixture(scope="module")
def orbax_params(fixture_dir):
    return flatten(load_t5x_params(str(fixture_dir / "orbax" / "checkpoint_1000")))


def test_fixture_formats_are_detected(fixture_dir):
    assert detect_t5x_format(str(fixture_dir / "legacy" / "checkpoint_1000"))[0] == "t5x_legacy"
    fmt, directory = detect_t5x_format(str(fixture_dir / "orbax" / "checkpoint_1000"))
    assert fmt == "t5x_orbax" and directory.endswith("state")
    # A model directory resolves to its latest checkpoint_N.
    assert detect_t5x_format(str(fixture_dir / "legacy"))[1].endswith("checkpoint_1000")


def test_fixture_formats_match_param_stats(fixture_dir, legacy_params, orbax_params):
    stats = json.loads((fixture_dir / "param_stats.json").read_text())
    targets = {k[len("target/") :]: v for k, v in stats.items() if k.startswith("target/")}
    assert set(legacy_params) == set(targets) == set(orbax_params)
    for path, want in targets.items():
        got = legacy_params[path]
        assert list(got.shape) == want["shape"], path
        assert str(got.dtype) == want["dtype"], path
        np.testing.assert_allclose(got.astype(np.float64).sum(), want["sum"], rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(got.reshape(-1)[:4], np.float32(want["first4"]))
        # The two runs were deterministic: the formats hold bit-identical params.
        np.testing.assert_array_equal(orbax_params[path], got)


def test_fixture_config_is_inferred_and_fits(legacy_params):
    config = infer_config(legacy_params)
    assert (config.vocab_size, config.emb_dim, config.num_heads, config.head_dim) == (
        384,
        64,
        4,
        16,
    )
    assert (config.mlp_dim, config.num_encoder_layers, config.num_decoder_layers) == (256, 2, 2)
    assert config.is_gated and not config.logits_via_embedding
    check_shapes(legacy_params, param_shapes(config), source="fixture")


def _write_zarr(root, name, array, chunks, dtype_name):
    spec = {
        "driver": "zarr",
        "kvstore": {"driver": "file", "path": os.path.join(root, name + "/")},
        "metadata": {
            "shape": list(array.shape),
            "chunks": list(chunks),
            "dtype": "bfloat16" if dtype_name == "bfloat16" else "<f4",
            "compressor": {"id": "gzip", "level": 1},
        },
        "create": True,
    }
    ts.open(spec).result().write(array).result()
    return {
        "driver": "zarr",
        "dtype": dtype_name,
        "kvstore": {"driver": "file", "path": name + "/"},
        "metadata": {"chunks": list(chunks), "shape": list(array.shape)},
    }


def test_legacy_multichunk_bf16_and_inline_arrays(tmp_path):
    """Public checkpoints are multi-chunk and often bf16; small leaves are inline msgpack."""
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((10, 12)).astype(np.float32)
    embedding = rng.standard_normal((7, 4)).astype(ml_dtypes.bfloat16)
    scale = rng.standard_normal((4,)).astype(np.float32)
    root = str(tmp_path / "checkpoint_7")
    os.makedirs(root)
    target = {
        "encoder": {
            "layers_0": {
                "mlp": {"wo": {"kernel": _write_zarr(root, "k", kernel, (3, 5), "float32")}}
            },
            "encoder_norm": {"scale": scale},  # inline: flax's ExtType code 1
        },
        "token_embedder": {"embedding": _write_zarr(root, "e", embedding, (2, 4), "bfloat16")},
    }
    missing_state = {"driver": "zarr", "kvstore": {"driver": "file", "path": "no_such_dir/"}}
    tree = {
        "version": 3,
        "optimizer": {"target": target, "state": {"step": np.int32(7), "v": missing_state}},
    }
    with open(os.path.join(root, "checkpoint"), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(tree))
    assert len(os.listdir(os.path.join(root, "k"))) > 2  # really several chunks on disk

    params = flatten(load_t5x_params(str(tmp_path)))  # the optimizer state is never opened
    np.testing.assert_array_equal(params["encoder/layers_0/mlp/wo/kernel"], kernel)
    np.testing.assert_array_equal(params["encoder/encoder_norm/scale"], scale)
    assert params["token_embedder/embedding"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(params["token_embedder/embedding"], embedding)
    as_f32 = flatten(load_t5x_params(root, dtype=np.float32))
    assert as_f32["token_embedder/embedding"].dtype == np.float32


def test_orbax_reads_only_target(tmp_path):
    import orbax.checkpoint as ocp

    target = {"decoder": {"decoder_norm": {"scale": np.arange(4, dtype=np.float32)}}}
    state = {"step": np.int32(3), "big": np.ones((5,), np.float32)}
    ocp.PyTreeCheckpointer().save(
        str(tmp_path / "checkpoint_3" / "state"), {"target": target, "state": state}
    )
    params = load_t5x_params(str(tmp_path))
    assert flatten(params).keys() == {"decoder/decoder_norm/scale"}
    np.testing.assert_array_equal(params["decoder"]["decoder_norm"]["scale"], np.arange(4))


def _stack(per_layer, axis):
    return np.stack(per_layer, axis=axis)


def test_scanned_umt5_layout_is_unstacked():
    """scalable_t5 with scan_layers: layer axis at param_scan_axis=1, 3-D attention kernels,
    per-layer `relative_posemb` (umT5). Built from per-layer contract params, then compared."""
    rng = np.random.default_rng(1)
    emb, heads, kv, mlp, buckets, depth = 8, 2, 3, 16, 5, 3

    def layer():
        return {
            "q": rng.standard_normal((emb, heads * kv)).astype(np.float32),
            "o": rng.standard_normal((heads * kv, emb)).astype(np.float32),
            "wi": rng.standard_normal((emb, mlp)).astype(np.float32),
            "scale": rng.standard_normal((emb,)).astype(np.float32),
            "rel": rng.standard_normal((heads, buckets)).astype(np.float32),
        }

    layers = [layer() for _ in range(depth)]
    scanned_tree = {
        "encoder": {
            "layers": {
                "attention": {
                    "query": {
                        "kernel": _stack([p["q"].reshape(emb, heads, kv) for p in layers], 1)
                    },
                    "out": {"kernel": _stack([p["o"].reshape(heads, kv, emb) for p in layers], 1)},
                },
                "mlp": {"wi_0": {"kernel": _stack([p["wi"] for p in layers], 1)}},
                "pre_mlp_layer_norm": {"scale": _stack([p["scale"] for p in layers], 1)},
                "relative_posemb": {"rel_embedding": _stack([p["rel"] for p in layers], 1)},
            },
            "encoder_norm": {"scale": np.ones((emb,), np.float32)},
        }
    }
    lazy = {path: InMemoryArray(value) for path, value in flatten(scanned_tree).items()}
    out = materialize(to_contract_layout(lazy))
    assert len(out) == 5 * depth + 1
    for i, p in enumerate(layers):
        prefix = f"encoder/layers_{i}"
        np.testing.assert_array_equal(out[f"{prefix}/attention/query/kernel"], p["q"])
        np.testing.assert_array_equal(out[f"{prefix}/attention/out/kernel"], p["o"])
        np.testing.assert_array_equal(out[f"{prefix}/mlp/wi_0/kernel"], p["wi"])
        np.testing.assert_array_equal(out[f"{prefix}/pre_mlp_layer_norm/scale"], p["scale"])
        np.testing.assert_array_equal(out[f"{prefix}/relpos_bias/rel_embedding"], p["rel"])
    with pytest.raises(CheckpointError, match="param_scan_axis"):
        to_contract_layout(lazy, param_scan_axis=2)


def test_mismatches_name_path_and_both_shapes(legacy_params):
    wrong = T5Config(
        vocab_size=384, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
        num_encoder_layers=2, num_decoder_layers=3,
    )  # fmt: skip
    with pytest.raises(CheckpointMismatchError) as err:
        check_shapes(legacy_params, param_shapes(wrong), source="ckpt_dir")
    message = str(err.value)
    assert "ckpt_dir" in message
    assert (
        "encoder/layers_0/mlp/wi_0/kernel: checkpoint has (64, 256), the model needs (64, 128)"
        in message
    )
    assert (
        "missing (14)" in message
    )  # a decoder layer: 3 norms, 8 attention, 3 mlp and "decoder/layers_2/mlp/wo/kernel" in message
    extra = dict(legacy_params, **{"encoder/extra/kernel": np.zeros(2)})
    with pytest.raises(CheckpointMismatchError, match=r"unexpected \(1\): encoder/extra/kernel"):
        check_shapes(extra, param_shapes(infer_config(legacy_params)), source="x")


def test_not_a_checkpoint_says_what_it_expected(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="not a T5X checkpoint"):
        load_t5x_params(str(tmp_path))
    with pytest.raises(CheckpointError, match="unknown T5Config fields"):
        infer_config({"token_embedder": {"embedding": np.zeros((4, 2))}}, vocab=3)


def test_a_scanned_checkpoint_on_disk_reads_lazily_into_either_layout(tmp_path):
    """scalable_t5 (layer axis 1, 3-D attention kernels) written with Orbax: the lazy readers
    give the contract's per-layer params, and a scanned run's stacks on axis 1 (the stored
    array itself) or axis 0 (a transposed view), without unstacking."""
    import orbax.checkpoint as ocp

    from fiat_t5x.models.checkpoints import lazy_arrays, model_layout
    from fiat_t5x.models.checkpoints.t5x import open_t5x_params

    rng = np.random.default_rng(2)
    emb, heads, kv, mlp, depth = 8, 2, 3, 16, 3
    query = rng.standard_normal((emb, depth, heads, kv)).astype(np.float32)
    out = rng.standard_normal((heads, depth, kv, emb)).astype(np.float32)
    wi = rng.standard_normal((emb, depth, mlp)).astype(np.float32)
    tree = {
        "encoder": {
            "layers": {
                "attention": {"query": {"kernel": query}, "out": {"kernel": out}},
                "mlp": {"wi_0": {"kernel": wi}},
            }
        }
    }
    ocp.PyTreeCheckpointer().save(str(tmp_path / "checkpoint_5" / "state"), {"target": tree})
    contract = flatten(load_t5x_params(str(tmp_path)))
    assert len(contract) == 3 * depth
    for i in range(depth):
        np.testing.assert_array_equal(
            contract[f"encoder/layers_{i}/attention/query/kernel"], query[:, i].reshape(emb, -1)
        )
        np.testing.assert_array_equal(
            contract[f"encoder/layers_{i}/attention/out/kernel"], out[:, i].reshape(-1, emb)
        )
        np.testing.assert_array_equal(contract[f"encoder/layers_{i}/mlp/wi_0/kernel"], wi[:, i])
    lazy = open_t5x_params(str(tmp_path))
    for axis in (0, 1):
        shapes = {
            "encoder/layers/mlp/wi_0/kernel": (emb, depth, mlp) if axis else (depth, emb, mlp),
            "encoder/layers/attention/query/kernel": (emb, depth, heads * kv)
            if axis
            else (depth, emb, heads * kv),
        }
        stacked = model_layout.to_model_layout(lazy, shapes, axis)
        mlp_stack = stacked["encoder/layers/mlp/wi_0/kernel"]
        if axis == 1:
            assert isinstance(mlp_stack, lazy_arrays.TensorStoreArray)  # the stored array
        else:
            assert isinstance(mlp_stack, lazy_arrays.Transposed)
        np.testing.assert_array_equal(mlp_stack.read(), np.moveaxis(wi, 1, axis))
        q = stacked["encoder/layers/attention/query/kernel"].read()
        np.testing.assert_array_equal(q, np.moveaxis(query.reshape(emb, depth, -1), 1, axis))


@pytest.mark.parametrize("fmt", ["legacy", "orbax"])
def test_a_bucket_url_reads_like_the_local_directory(fmt, fixture_dir, legacy_params):
    """Pods read the base from a bucket: a TensorStore kvstore URL (`gs://...` in production;
    `file://` here, through the same kvstore code path) reads the fixture bit for bit, also
    from the model directory (latest checkpoint_N found by listing)."""
    url = f"file://{fixture_dir / fmt}"
    assert detect_t5x_format(url)[1] == f"{url}/checkpoint_1000" + (
        "/state" if fmt == "orbax" else ""
    )
    params = flatten(load_t5x_params(url))
    assert params.keys() == legacy_params.keys()
    for path, value in legacy_params.items():
        np.testing.assert_array_equal(params[path], value, err_msg=path)
