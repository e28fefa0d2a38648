"""`fiat-t5x convert` end to end on the T5X fixture: every subcommand, config sources, refusal to
overwrite, and mismatch errors that reach the user."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pytest

from fiat_t5x import cli
from fiat_t5x.models.checkpoints import flatten, infer_config, load_t5x_params, unflatten
from fiat_t5x.models.checkpoints.hf_t5 import load_hf_t5, save_hf_t5
from fiat_t5x.models.checkpoints.peft_adapter import load_peft_adapter
from fiat_t5x.models.checkpoints.t5x_writer import save_t5x_params
from fiat_t5x.models.lora import LoraConfig, merge_lora


@pytest.fixture(scope="module")
def checkpoint(shared_dir):
    return str(shared_dir / "fixtures" / "t5x_tiny_checkpoint" / "orbax" / "checkpoint_1000")


@pytest.fixture(scope="module")
def fixture_params(checkpoint):
    return flatten(load_t5x_params(checkpoint))


def _assert_same(a, b):
    a, b = flatten(a), flatten(b)
    assert set(a) == set(b)
    for path in a:
        np.testing.assert_array_equal(np.asarray(a[path]), np.asarray(b[path]), err_msg=path)


def test_t5x_to_hf_with_gin_config(checkpoint, fixture_params, tmp_path, capsys):
    out = tmp_path / "hf"
    argv = ["convert", "t5x-to-hf", "--t5x_checkpoint", checkpoint, "--output", str(out),
            "--gin_file", "models/t5_1_1/tiny.gin"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    config, params = load_hf_t5(str(out))
    _assert_same(params, fixture_params)
    # Without --overwrite an existing output is left alone.
    assert cli.main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    # A bucket URL is refused with the fix, not written as a local folder named gs:.
    to_bucket = [*argv[:5], "gs://bucket/hf", *argv[6:]]
    assert cli.main(to_bucket) == 2
    assert "write locally, then copy it to the bucket" in capsys.readouterr().err
    assert not pathlib.Path("gs:").exists()


def test_wrong_config_names_parameter_and_shapes(checkpoint, tmp_path, capsys):
    argv = ["convert", "t5x-to-hf", "--t5x_checkpoint", checkpoint, "--output", str(tmp_path / "x"),
            "--set", "mlp_dim=128"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "checkpoint has (64, 256), the model needs (64, 128)" in err
    assert not (tmp_path / "x").exists()


def test_hf_to_t5x_round_trip(checkpoint, fixture_params, tmp_path):
    config = infer_config(fixture_params)
    save_hf_t5(unflatten(fixture_params), config, str(tmp_path / "hf"))
    argv = ["convert", "hf-to-t5x", "--hf_model", str(tmp_path / "hf"), "--output", str(tmp_path / "t5x"),
            "--step", "5"]  # fmt: skip
    assert cli.main(argv) == 0
    _assert_same(load_t5x_params(str(tmp_path / "t5x")), fixture_params)
    # The written config travels with the checkpoint: back to HF without any config flag.
    argv = ["convert", "t5x-to-hf", "--t5x_checkpoint", str(tmp_path / "t5x" / "checkpoint_5"),
            "--output", str(tmp_path / "hf2")]  # fmt: skip
    assert cli.main(argv) == 0
    assert load_hf_t5(str(tmp_path / "hf2"))[0] == load_hf_t5(str(tmp_path / "hf"))[0]


def test_export_peft_and_merge_lora(fixture_params, tmp_path):
    config = infer_config(fixture_params)
    lora = LoraConfig(rank=2, alpha=4.0, targets=("query", "value"))
    rng = np.random.default_rng(0)
    flat = dict(fixture_params)
    for path, (fan_in, fan_out) in {
        p[: -len("/kernel")]: v.shape for p, v in fixture_params.items() if p.endswith("/kernel")
    }.items():
        if lora.targets_path(path):
            flat[f"{path}/lora_a"] = rng.normal(size=(fan_in, 2)).astype(np.float32)
            flat[f"{path}/lora_b"] = rng.normal(size=(2, fan_out)).astype(np.float32)
    with_lora = unflatten(flat)
    save_t5x_params(with_lora, config, str(tmp_path / "tuned"))
    argv = ["convert", "export-peft", "--checkpoint", str(tmp_path / "tuned"), "--output",
            str(tmp_path / "adapter"), "--lora_alpha", "4", "--base_model", "hf_base"]  # fmt: skip
    assert cli.main(argv) == 0
    lora_params, lora2 = load_peft_adapter(str(tmp_path / "adapter"), config)
    assert (lora2.rank, lora2.alpha, lora2.rank_stabilized) == (2, 4.0, False)
    assert lora2.targets == ("query", "value")
    _assert_same(lora_params, {p: v for p, v in flat.items() if p.endswith(("/lora_a", "/lora_b"))})

    save_hf_t5(unflatten(fixture_params), config, str(tmp_path / "base"))
    argv = ["convert", "merge-lora", "--base", str(tmp_path / "base"), "--adapter",
            str(tmp_path / "adapter"), "--output", str(tmp_path / "merged")]  # fmt: skip
    assert cli.main(argv) == 0
    merged = load_hf_t5(str(tmp_path / "merged"))[1]
    expected = flatten(merge_lora(with_lora, lora))
    merged = flatten(merged)
    for path, value in expected.items():
        np.testing.assert_allclose(merged[path], value, atol=1e-6, err_msg=path)
    assert not np.allclose(
        merged["encoder/layers_0/attention/query/kernel"],
        fixture_params["encoder/layers_0/attention/query/kernel"],
    )


def test_t5x_to_hf_merges_lora_from_gin(fixture_params, tmp_path):
    config = dataclasses.replace(infer_config(fixture_params))
    flat = dict(fixture_params)
    flat["decoder/layers_1/self_attention/value/lora_a"] = np.ones((64, 8), np.float32) * 0.01
    flat["decoder/layers_1/self_attention/value/lora_b"] = np.ones((8, 64), np.float32) * 0.02
    save_t5x_params(unflatten(flat), config, str(tmp_path / "tuned"))
    argv = ["convert", "t5x-to-hf", "--t5x_checkpoint", str(tmp_path / "tuned"), "--output",
            str(tmp_path / "hf"), "--gin_file", "models/t5_1_1/tiny.gin", "--gin_file",
            "peft/lora.gin", "--gin_bindings", "LORA_TARGETS=('decoder/layers_1/self_attention/value',)"]  # fmt: skip
    assert cli.main(argv) == 0
    params = flatten(load_hf_t5(str(tmp_path / "hf"))[1])
    path = "decoder/layers_1/self_attention/value/kernel"
    # PEFT-default alpha 8, rank 8: scale 1; A@B sums 8 products 0.01 * 0.02 everywhere.
    np.testing.assert_allclose(params[path], fixture_params[path] + 8 * 0.01 * 0.02, atol=1e-6)
