"""`fiat-t5x convert` straight from a trained MODEL_DIR: a 2-step LoRA run over the real T5X
fixture base is exported as a PEFT adapter (model + LoRA from MODEL_DIR/config.gin) and as a
merged HF model (model from --gin_file, base from a flag); PEFT and transformers must then give
the logits the trainer had in memory."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
import transformers

import fiat_tasks.demo  # noqa: F401  (registers fiat_demo_plain)
import gin
from fiat_t5x import cli
from fiat_t5x import train as train_script
from fiat_t5x.models.checkpoints import load_t5x_params
from fiat_t5x.models.checkpoints.hf_t5 import save_hf_t5
from fiat_t5x.training import data as data_lib
from fiat_t5x.training import gin_cli, optimizers
from fiat_t5x.training.partitioning import Partitioner
from tests.models import hf_reference as ref
from tests.training.training_helpers import TINY_GIN, make_batch, tiny_model


@pytest.fixture(scope="module")
def run(tmp_path_factory, fixture_checkpoint):
    """(model_dir, HF base dir, our logits): 2 LoRA steps through the Python API, with the gin
    model parsed first so that config.gin holds it (as a CLI run's does)."""
    root = tmp_path_factory.mktemp("export_run")
    model_dir = str(root / "run")
    gin_cli.parse_gin(
        gin_cli.GinArgs(
            gin_files=[TINY_GIN],
            bindings=["DROPOUT_RATE = 0.0", f"INITIAL_CHECKPOINT_PATH = '{fixture_checkpoint}'"],
        )
    )
    model = tiny_model()  # tiny_model.gin's model, built independently of gin
    try:
        result = train_script.train(
            model=model,
            model_dir=model_dir,
            train_steps=2,
            train_dataset_cfg=data_lib.DatasetConfig(
                "fiat_demo_plain",
                {"inputs": 96, "targets": 8},
                batch_size=4,
                shuffle=False,
                pack=False,
            ),  # fmt: skip
            initial_checkpoint_path=fixture_checkpoint,
            partitioner=Partitioner(devices=jax.devices()[:1]),
            optimizer=optax.adam,  # moves the zero-initialised lora_b visibly in 2 steps
            learning_rate=optimizers.constant_schedule(1e-2),
        )
    finally:
        gin.clear_config()
    batch = make_batch(rows=2, enc=16, dec=8, seed=1)
    full = optimizers.merge_params(jax.device_get(result.state.params), result.frozen)
    ours = np.asarray(jax.jit(model.compute_logits)(full, batch))
    base_dir = str(root / "hf_base")
    save_hf_t5(load_t5x_params(fixture_checkpoint), model.config, base_dir)
    return model_dir, base_dir, batch, ours


def test_export_peft_from_model_dir_loads_in_peft_with_our_logits(run, tmp_path):
    import peft

    model_dir, base_dir, batch, ours = run
    adapter = str(tmp_path / "adapter")
    argv = ["convert", "export-peft", "--model_dir", model_dir, "--output", adapter,
            "--base_model", base_dir]  # fmt: skip
    assert cli.main(argv) == 0
    hf_base = transformers.T5ForConditionalGeneration.from_pretrained(base_dir).eval()
    peft_model = peft.PeftModel.from_pretrained(hf_base, adapter).eval()
    assert sorted(peft_model.peft_config["default"].target_modules) == ["q", "v"]
    theirs = ref.hf_logits(peft_model, batch)
    assert ref.max_diff_on_targets(ours, theirs, batch) <= 1e-4
    with peft_model.disable_adapter():  # the trained adapter matters: the check is not vacuous
        plain = ref.hf_logits(peft_model, batch)
    assert ref.max_diff_on_targets(plain, theirs, batch) > 1e-3


def test_t5x_to_hf_from_model_dir_with_flags_gives_our_logits(run, tmp_path, fixture_checkpoint):
    model_dir, _, batch, ours = run
    merged = str(tmp_path / "merged")
    argv = ["convert", "t5x-to-hf", "--model_dir", model_dir, "--output", merged,
            "--gin_file", TINY_GIN, "--gin_bindings", "DROPOUT_RATE = 0.0",
            "--initial_checkpoint_path", fixture_checkpoint]  # fmt: skip
    assert cli.main(argv) == 0
    hf = transformers.T5ForConditionalGeneration.from_pretrained(merged).eval()
    assert ref.max_diff_on_targets(ours, ref.hf_logits(hf, batch), batch) <= 1e-4


def test_a_run_passed_as_a_t5x_checkpoint_points_to_model_dir(run, tmp_path, capsys):
    model_dir, _, _, _ = run
    argv = ["convert", "export-peft", "--checkpoint", model_dir, "--output",
            str(tmp_path / "a"), "--lora_alpha", "8"]  # fmt: skip
    assert cli.main(argv) == 2
    assert "pass --model_dir instead" in capsys.readouterr().err


def test_model_dir_without_config_or_checkpoint_is_explained(tmp_path, capsys):
    argv = ["convert", "export-peft", "--model_dir", str(tmp_path), "--output", str(tmp_path / "a")]
    assert cli.main(argv) == 2
    assert "config.gin does not exist" in capsys.readouterr().err
    argv += ["--gin_file", TINY_GIN, "--gin_bindings", "DROPOUT_RATE = 0.0",
             "--initial_checkpoint_path", "None"]  # fmt: skip
    assert cli.main(argv) == 2
    assert "no intact checkpoint_N" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
