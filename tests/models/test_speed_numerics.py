"""The CPU speed settings (`fiat_t5x.cpu_tuning`) keep the numerics and stay off accelerators.

Speed changes of issue #16: glibc allocator settings applied when `fiat_t5x` is imported on a
CPU host, and per-compile XLA:CPU options for the train/eval steps. The step compiled with the
options gives the loss and gradients of the step compiled without them and of transformers +
PEFT on the same weights; the switches (environment, gin, backend) do what they say; importing
`fiat_t5x` starts no JAX backend, also where gin is missing (the GPU bench host).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import peft
import pytest
import safetensors.numpy
import torch

import gin
from fiat_t5x import cpu_tuning
from fiat_t5x.models.checkpoints import flatten, unflatten
from fiat_t5x.models.checkpoints.peft_adapter import save_peft_adapter
from fiat_t5x.models.lora import LoraConfig
from fiat_t5x.models.model import EncoderDecoderModel
from fiat_t5x.training import optimizers, partitioning
from fiat_t5x.training.trainer import Trainer
from tests import gpu_host
from tests.models import hf_reference as ref

LORA = LoraConfig(rank=4, alpha=8.0, targets=("query", "value"))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _python(code: str, **env: str) -> dict:
    """Run `code` in a fresh interpreter (env overrides; None-valued keys removed); its last
    stdout line is JSON."""
    full = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    full.update(env)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd=REPO
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# The GPU bench host has no gin, seqio or TensorFlow: block them, then import what
# bench/gpu_step.py imports (the models, the trainer, transformers' config conversion).
_GPU_HOST = gpu_host.BLOCK_MISSING + (
    "import fiat_t5x.training.trainer, fiat_t5x.models.checkpoints.hf_t5, fiat_t5x.models.presets\n"
)

_IMPORT_PROBE = """
import json, sys
import fiat_t5x
{prelude}
from fiat_t5x import cpu_tuning
from jax._src import xla_bridge
print(json.dumps({{"host": cpu_tuning.prepare_process(), "backends": list(xla_bridge._backends),
                  "gin": sys.modules.get("gin") is not None}}))
"""


@pytest.mark.parametrize(
    ("env", "prelude", "applied"),
    [
        ({"JAX_PLATFORMS": "cpu"}, "", True),
        ({"JAX_PLATFORMS": "cpu", "FIAT_T5X_CPU_TUNING": "0"}, "", False),
        ({"JAX_PLATFORMS": "cuda"}, "", False),  # an accelerator host: nothing applied
        ({"JAX_PLATFORMS": "cuda"}, _GPU_HOST, False),
    ],
    ids=["cpu", "env_off", "gpu_host", "gpu_host_without_gin"],
)
def test_import_applies_host_settings_only_on_cpu_and_starts_no_backend(env, prelude, applied):
    result = _python(_IMPORT_PROBE.format(prelude=prelude), **env)
    assert result["backends"] == []  # importing fiat_t5x must not start JAX (or CUDA)
    assert result["host"] == ({"keep_freed_memory": True} if applied else {})
    assert result["gin"] == (prelude == "")


def test_backend_detection_and_switches(monkeypatch):
    # This session's backend is started and is the CPU: options apply unless switched off.
    assert cpu_tuning.default_backend_is_cpu()
    assert cpu_tuning.xla_compiler_options() == {"xla_cpu_copy_insertion_use_region_analysis": True}
    assert cpu_tuning.xla_compiler_options(enabled=False) == {}
    with gin.unlock_config():
        gin.bind_parameter("fiat_t5x.cpu_tuning.xla_compiler_options.enabled", False)
    try:
        assert cpu_tuning.xla_compiler_options() == {}  # the gin knob
    finally:
        gin.clear_config()
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_copy_insertion_use_region_analysis=false")
    assert cpu_tuning.xla_compiler_options() == {}  # the user's own flag wins
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setenv(cpu_tuning.ENV_SWITCH, "off")
    assert cpu_tuning.xla_compiler_options() == {}
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.delenv(cpu_tuning.ENV_SWITCH)
    assert cpu_tuning.xla_compiler_options() == {}  # never on an accelerator backend


# ----------------------------------------------------------------------------- numerics


@pytest.fixture(scope="module")
def lora_pair(tmp_path_factory):
    """Our LoRA model and PEFT's on the same tiny HF base with the same non-zero factors."""
    base_dir = tmp_path_factory.mktemp("speed") / "base"
    hf_model, config, base_params = ref.saved_tiny_hf_model(base_dir, "t5_1_1", seed=3)
    # Mean cross-entropy over real target tokens, no z-loss: transformers' `labels` loss.
    model = EncoderDecoderModel(
        config, LORA, z_loss=0.0, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS"
    )
    flat = flatten(base_params)
    rng = np.random.default_rng(0)
    for path, value in flatten(model.init_params(jax.random.PRNGKey(0))).items():
        if path.endswith(("lora_a", "lora_b")):
            flat[path] = rng.normal(0.0, 0.2, np.shape(value)).astype(np.float32)
    params = unflatten(flat)
    adapter_dir = base_dir.parent / "adapter"
    save_peft_adapter(params, config, LORA, str(adapter_dir), base_model_name_or_path=str(base_dir))
    peft_model = peft.PeftModel.from_pretrained(hf_model, str(adapter_dir), is_trainable=True)
    return model, config, params, peft_model, base_dir


def _loss_and_lora_grads(model, params, batch, compiler_options):
    trainable, frozen = optimizers.TrainableSelector().split(params)

    def loss(t):
        merged = optimizers.merge_params(t, frozen)
        return model.loss(merged, batch)[0]

    step = jax.jit(jax.value_and_grad(loss), compiler_options=compiler_options or None)
    value, grads = step(trainable)
    return float(value), jax.device_get(grads)


def _torch_loss_and_grads(peft_model, batch) -> tuple[float, dict[str, np.ndarray]]:
    peft_model.zero_grad()
    enc = torch.tensor(batch["encoder_input_tokens"], dtype=torch.long)
    labels = torch.tensor(batch["decoder_target_tokens"], dtype=torch.long)
    labels[labels == 0] = -100
    out = peft_model(
        input_ids=enc,
        attention_mask=(enc > 0).long(),
        decoder_input_ids=torch.tensor(batch["decoder_input_tokens"], dtype=torch.long),
        labels=labels,
    )
    out.loss.backward()
    grads = {
        name.replace(".default", ""): p.grad.numpy()
        for name, p in peft_model.named_parameters()
        if p.requires_grad
    }
    return out.loss.item(), grads


def test_tuned_compile_keeps_loss_and_lora_grads_and_matches_peft(lora_pair, tmp_path):
    model, config, params, peft_model, base_dir = lora_pair
    batch = ref.batch()
    options = cpu_tuning.xla_compiler_options()
    assert options  # the tuned path is really exercised
    loss, grads = _loss_and_lora_grads(model, params, batch, options)
    plain_loss, plain_grads = _loss_and_lora_grads(model, params, batch, None)
    np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
    for (path, g), (_, h) in zip(
        sorted(flatten(grads).items()), sorted(flatten(plain_grads).items()), strict=True
    ):
        np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-7, err_msg=path)
    # Against PEFT: our gradients, written as an adapter, name and lay out PEFT's tensors.
    torch_loss, torch_grads = _torch_loss_and_grads(peft_model, batch)
    np.testing.assert_allclose(loss, torch_loss, rtol=1e-5)
    save_peft_adapter(
        unflatten({**flatten(params), **flatten(grads)}),
        config,
        LORA,
        str(tmp_path / "grads"),
        base_model_name_or_path=str(base_dir),
    )
    ours = safetensors.numpy.load_file(str(tmp_path / "grads" / "adapter_model.safetensors"))
    assert sorted(ours) == sorted(torch_grads)
    for name, g in ours.items():
        scale = np.abs(torch_grads[name]).max()
        np.testing.assert_allclose(g, torch_grads[name], atol=1e-4 * scale, err_msg=name)


def test_tuned_train_step_equals_untuned_and_drops_copies(tiny_config, tiny_batch):
    """Full fine-tuning (every parameter donated and updated): one Adafactor step compiled with
    and without the CPU options gives the same loss and parameters, with fewer copies."""
    model = EncoderDecoderModel(tiny_config)
    params = jax.device_get(model.init_params(jax.random.PRNGKey(1)))
    batch = {k: np.asarray(v) for k, v in tiny_batch.items()}

    def one_step(enabled: bool):
        with gin.unlock_config():
            gin.bind_parameter("fiat_t5x.cpu_tuning.xla_compiler_options.enabled", enabled)
        try:
            schedule = optimizers.constant_schedule(1e-2)
            trainer = Trainer(
                model,
                partitioning.Partitioner(num_partitions=1, devices=jax.devices()[:1]),
                optax.adafactor(schedule),
                schedule,
                optimizers.TrainableSelector(optimizers.ALL_PATTERNS),
            )
            state, frozen = trainer.create_state(params)
            state, metrics = trainer.train_step(
                state, frozen, trainer.partitioner.host_batch_to_global(batch)
            )
        finally:
            gin.clear_config()
        copies = trainer._compiled_train.as_text().count(" copy(")
        return float(metrics["loss"]), jax.device_get(state.params), copies

    loss, new_params, copies = one_step(True)
    plain_loss, plain_params, plain_copies = one_step(False)
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    for (path, a), (_, b) in zip(
        sorted(flatten(new_params).items()), sorted(flatten(plain_params).items()), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=path)
    assert copies < plain_copies, (copies, plain_copies)
