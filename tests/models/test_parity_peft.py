"""LoRA parity with PEFT: our adapter, exported, loads in `peft.PeftModel.from_pretrained` on the
same HF base and gives our logits; the merged HF export gives them too; the adapter re-imports."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import transformers

from fiat_t5x.models.checkpoints import flatten
from fiat_t5x.models.checkpoints.hf_t5 import save_hf_t5
from fiat_t5x.models.checkpoints.peft_adapter import (
    load_peft_adapter,
    save_peft_adapter,
    with_adapter,
)
from fiat_t5x.models.lora import LoraConfig
from fiat_t5x.models.model import EncoderDecoderModel
from tests.models import hf_reference as ref

LORAS = {
    # PEFT's default for T5 (q, v) with rsLoRA scaling;
    "qv_rslora": LoraConfig(rank=4, alpha=8.0, targets=("query", "value"), rank_stabilized=True),
    # a regex over paths (decoder cross-attention out + encoder MLP wo) that short names cannot say.
    "regex": LoraConfig(rank=2, alpha=3.0, targets=(r"decoder/.*/encoder_decoder_attention/out", r"encoder/layers_1/mlp/wo")),
}  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    directory = tmp_path_factory.mktemp("peft") / "base"
    _, config, params = ref.saved_tiny_hf_model(directory, "t5_1_1", seed=1)
    return directory, config, params


@pytest.fixture(scope="module", params=sorted(LORAS))
def adapted(request, base, tmp_path_factory):
    directory, config, base_params = base
    lora = LORAS[request.param]
    model = EncoderDecoderModel(config, lora)
    params = flatten(model.init_params(jax.random.PRNGKey(0)))
    flat = flatten(base_params)
    rng = np.random.default_rng(0)
    for path, value in params.items():  # non-zero A *and* B, so the adapter really matters
        flat[path] = (
            rng.normal(0.0, 0.1, np.shape(value)).astype(np.float32)
            if path.endswith(("lora_a", "lora_b"))
            else flat[path]
        )
    from fiat_t5x.models.checkpoints import unflatten

    params = unflatten(flat)
    adapter_dir = tmp_path_factory.mktemp(request.param) / "adapter"
    save_peft_adapter(
        params, config, lora, str(adapter_dir), base_model_name_or_path=str(directory)
    )
    ours = np.asarray(model.compute_logits(params, ref.batch()))
    return request.param, lora, model, params, adapter_dir, ours


def test_peft_loads_the_adapter_with_our_logits(base, adapted):
    import peft

    directory, _, _ = base
    name, _, _, _, adapter_dir, ours = adapted
    hf_base = transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()
    peft_model = peft.PeftModel.from_pretrained(hf_base, str(adapter_dir)).eval()
    b = ref.batch()
    theirs = ref.hf_logits(peft_model, b)
    assert ref.max_diff_on_targets(ours, theirs, b) <= 1e-4
    # The adapter changes the logits, so the comparison above is not vacuous.
    with peft_model.disable_adapter():
        plain = ref.hf_logits(peft_model, b)
    assert ref.max_diff_on_targets(plain, theirs, b) > 1e-2
    written = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert written["target_modules"] == (
        ["q", "v"] if name == "qv_rslora" else written["target_modules"]
    )
    assert isinstance(written["target_modules"], list) == (name == "qv_rslora")


def test_merged_export_gives_unmerged_logits(adapted, tmp_path):
    _, lora, model, params, _, ours = adapted
    save_hf_t5(params, model.config, str(tmp_path / "merged"), lora=lora)
    merged = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    b = ref.batch()
    assert ref.max_diff_on_targets(ours, ref.hf_logits(merged, b), b) <= 1e-4


def test_adapter_reimports(base, adapted):
    _, config, base_params = base
    _, lora, _, params, adapter_dir, _ = adapted
    lora_params, lora2 = load_peft_adapter(str(adapter_dir), config)
    assert (lora2.rank, lora2.alpha, lora2.rank_stabilized) == (
        lora.rank,
        lora.alpha,
        lora.rank_stabilized,
    )
    combined = flatten(with_adapter(base_params, lora_params))
    original = flatten(params)
    assert set(combined) == set(original)
    for path, value in original.items():
        np.testing.assert_array_equal(combined[path], np.asarray(value), err_msg=path)
    # The re-imported config targets exactly the same modules.
    paths = {p.rsplit("/", 2)[0] for p in original if p.endswith("kernel")}
    assert {p for p in paths if lora.targets_path(p)} == {p for p in paths if lora2.targets_path(p)}
