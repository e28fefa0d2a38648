"""Parity with transformers' PyTorch T5 family: import a random HF model, compare logits and
greedy decodes; export our params back and compare the state dict and config."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from fiat_t5x.models.checkpoints import CheckpointError, CheckpointMismatchError
from fiat_t5x.models.checkpoints.hf_t5 import load_hf_t5, save_hf_t5
from fiat_t5x.models.model import EncoderDecoderModel
from tests.models import hf_reference as ref

FAMILIES = ("t5_1_1", "t5_original", "mt5", "umt5")


@pytest.fixture(scope="module", params=FAMILIES)
def imported(request, tmp_path_factory):
    family = request.param
    directory = tmp_path_factory.mktemp(family) / "hf"
    model, config, params = ref.saved_tiny_hf_model(directory, family)
    return family, model, directory, config, params


def test_config_is_read(imported):
    family, _, _, config, _ = imported
    assert config.per_layer_relpos_bias == (family == "umt5")
    assert config.logits_via_embedding == (family in ("t5_original", "umt5"))
    assert config.mlp_activations == (("relu",) if family == "t5_original" else ("gelu", "linear"))
    assert config.num_decoder_layers == (1 if family == "t5_1_1" else 2)


def test_logits_and_greedy_decodes_match_transformers(imported):
    _, hf_model, _, config, params = imported
    model = EncoderDecoderModel(config.__class__(**{**config.__dict__, "dtype": "float32"}))
    b = ref.batch()
    ours = np.asarray(model.compute_logits(params, b))
    theirs = ref.hf_logits(hf_model, b)
    assert ref.max_diff_on_targets(ours, theirs, b) <= 1e-4
    decoded = np.asarray(model.predict_batch(params, b, max_decode_length=ref.DEC_LEN))
    np.testing.assert_array_equal(decoded, ref.hf_greedy(hf_model, b, ref.DEC_LEN))


def test_export_round_trips_state_dict(imported, tmp_path):
    family, hf_model, directory, config, params = imported
    save_hf_t5(params, config, str(tmp_path / "out"), model_type="mt5" if family == "mt5" else None)
    original = load_file(str(directory / "model.safetensors"))
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))
    # transformers 5 ties lm_head to shared even when the config says untied, and then omits it
    # from the file; we always write an untied head explicitly.
    assert set(original) <= set(exported) <= set(original) | {"lm_head.weight"}
    state = hf_model.state_dict()
    for key, value in exported.items():
        np.testing.assert_array_equal(value, state[key].numpy(), err_msg=key)
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (
        written["model_type"] == json.loads((directory / "config.json").read_text())["model_type"]
    )
    assert load_hf_t5(str(tmp_path / "out"))[0] == config


def test_pickle_is_refused_and_loaded_only_when_asked(imported, tmp_path):
    import shutil

    import torch

    _, hf_model, directory, config, params = imported
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        load_hf_t5(str(tmp_path))
    config2, params2 = load_hf_t5(str(tmp_path), allow_pickle=True)
    assert config2 == config
    np.testing.assert_array_equal(
        params2["encoder"]["layers_0"]["attention"]["query"]["kernel"],
        params["encoder"]["layers_0"]["attention"]["query"]["kernel"],
    )


def test_unknown_config_keys_and_bad_shapes_are_named(imported, tmp_path):
    import shutil

    _, _, directory, _, _ = imported
    shutil.copytree(directory, tmp_path / "m")
    hf = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**hf, "rotary_dim": 8}))
    with pytest.raises(CheckpointError, match=r"unknown config keys \['rotary_dim'\]"):
        load_hf_t5(str(tmp_path / "m"))
    load_hf_t5(str(tmp_path / "m"), strict_config=False)
    (tmp_path / "m" / "config.json").write_text(json.dumps({**hf, "d_ff": hf["d_ff"] * 2}))
    with pytest.raises(
        CheckpointMismatchError,
        match=r"mlp/wo/kernel: checkpoint has \(48, 32\), the model needs \(96, 32\)",
    ):
        load_hf_t5(str(tmp_path / "m"))
