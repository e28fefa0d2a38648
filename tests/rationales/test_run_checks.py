"""One path from the rationale store to τ and back: a training run checks the store before step
1 (another Iβ, missing validation rationales: refused, nothing trained), records its identity
in MODEL_DIR, and FIAT inference with another β is then refused by name."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest
import seqio
import tensorflow as tf

import gin
from fiat_t5x import train as train_script
from fiat_t5x.inference.two_stage import fiat_infer
from fiat_t5x.rationales import run_checks
from fiat_t5x.rationales.generate import identity_for
from fiat_t5x.rationales.injection import STORE_ENV, register_fiat_variants
from fiat_t5x.rationales.prompts import load_prompt
from fiat_t5x.rationales.providers.openai_http import OpenAIProvider
from fiat_t5x.rationales.store import RationaleRecord, RationaleStore, StoreMismatchError
from fiat_t5x.training.data import DatasetConfig
from fiat_t5x.training.gin_cli import UsageError

from .helpers import IBETA, write_ibeta

HERE = pathlib.Path(__file__).resolve().parent
TINY_GIN = str(HERE.parent / "training" / "tiny_model.gin")
BASE = "run_checks_toy"
SPLITS = {"train": 8, "validation": 4, "test": 4}
ITAU = {
    "tasks": {
        BASE: {
            "instruction": "Answer.",
            "input_template": "Q: {question}",
            "rationale_template": "R: {rationale}",
            "target_template": "{answer}",
        }
    }
}


def ids(split: str) -> list[str]:
    return [f"{split}-{i}" for i in range(SPLITS[split])]


def _dataset_fn(split, shuffle_files=False, seed=None):
    return tf.data.Dataset.from_tensor_slices(
        {
            "id": ids(split),
            "question": [f"what is {i}?" for i in range(SPLITS[split])],
            "answer": [str(i) for i in range(SPLITS[split])],
        }
    )


@pytest.fixture(scope="module")
def toy_fiat(tmp_path_factory):
    """`run_checks_toy` and its FIAT variants, reading the store of `injection.rationale_store`."""
    if BASE in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(BASE)
    seqio.TaskRegistry.add(
        BASE,
        source=seqio.FunctionDataSource(_dataset_fn, splits=tuple(SPLITS)),
        output_features={"targets": seqio.Feature(seqio.ByteVocabulary())},
    )
    itau = tmp_path_factory.mktemp("itau") / "itau.json"
    itau.write_text(json.dumps(ITAU))
    register_fiat_variants(BASE, itau)
    return itau


def beta(model: str = "beta-a") -> OpenAIProvider:
    return OpenAIProvider(base_url="http://127.0.0.1:1/v1", model=model, api_key_env="")


def write_store(directory: pathlib.Path, ibeta_file: pathlib.Path, splits=tuple(SPLITS)) -> str:
    prompt = load_prompt(ibeta_file, "toy")
    provider = beta()
    identity = identity_for(provider, prompt)
    with RationaleStore.open_for_writing(directory, identity, fsync=False) as store:
        store.append(
            RationaleRecord(
                BASE, split, i, f"because {i}", "openai_http", "beta-a", prompt.sha256, "p", {}, "t"
            )
            for split in splits
            for i in ids(split)
        )
    return str(directory)


def train_args(model_dir: pathlib.Path, store: str, *extra: str) -> list[str]:
    return [
        f"--gin_file={TINY_GIN}",
        "--gin_file=runs/finetune.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.MIXTURE_OR_TASK_NAME='{BASE}_fiat'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
        "--gin.TRAIN_STEPS=2",
        "--gin.BATCH_SIZE=2",
        "--gin.INITIAL_CHECKPOINT_PATH=None",
        f"--gin.injection.rationale_store.directory='{store}'",
        "--gin.train_script.train.start_checks=[@run_checks.RationaleChecks()]",
        *extra,
    ]


def nothing_trained(model_dir: pathlib.Path) -> bool:
    made = {p.name for p in model_dir.iterdir()} if model_dir.exists() else set()
    return not any(n.startswith("checkpoint") or n == "metrics.jsonl" for n in made)


def test_training_refuses_a_store_written_with_another_ibeta_before_step_1(
    toy_fiat, tmp_path, capsys
):
    store = write_store(tmp_path / "store", write_ibeta(tmp_path))
    other = json.loads(json.dumps(IBETA))
    other["tasks"]["toy"]["instruction"] = "Think it through, then answer."
    (tmp_path / "other.json").write_text(json.dumps(other))
    args = train_args(
        tmp_path / "run",
        store,
        "--gin.EVAL_PERIOD=0",
        f"--gin.run_checks.RationaleChecks.ibeta_file='{tmp_path / 'other.json'}'",
        "--gin.run_checks.RationaleChecks.ibeta_task='toy'",
    )
    assert train_script.main(args) == 2
    err = capsys.readouterr().err
    assert f"the rationale store {store} is not the one this run expects" in err
    assert "its Iβ differs from this run's IBETA_FILE/IBETA_TASK" in err
    assert nothing_trained(tmp_path / "run")


def test_training_refuses_missing_validation_rationales_before_step_1(toy_fiat, tmp_path, capsys):
    store = write_store(tmp_path / "store", write_ibeta(tmp_path), splits=("train", "test"))
    args = train_args(tmp_path / "run", store, "--gin.EVAL_PERIOD=1")
    assert train_script.main(args) == 2
    err = capsys.readouterr().err
    assert "before training:" in err and f"task '{BASE}_fiat' split 'validation'" in err
    assert "4 of 4 examples have no rationale" in err and "validation-0" in err
    assert nothing_trained(tmp_path / "run")


def test_the_store_identity_is_recorded_and_fiat_infer_refuses_another_beta(
    toy_fiat, tmp_path, monkeypatch
):
    gin.clear_config()  # the store comes from $FIAT_RATIONALE_STORE here, not a leftover binding
    ibeta = write_ibeta(tmp_path)
    store = write_store(tmp_path / "store", ibeta, splits=("train", "validation"))
    monkeypatch.setenv(STORE_ENV, store)
    model_dir = tmp_path / "run"
    datasets = [
        DatasetConfig(f"{BASE}_fiat", {"inputs": 64, "targets": 8}, 2, split=split)
        for split in ("train", "validation")
    ]

    def check(provider):
        return run_checks.RationaleChecks(
            ibeta_file=str(ibeta), ibeta_task="toy", beta=provider, infer_split="test"
        )(str(model_dir), datasets)

    with pytest.raises(UsageError, match=f"{BASE}_fiat' split 'test'"):
        check(None)  # no β to generate test rationales at inference: all must be there now
    with pytest.raises(StoreMismatchError, match="its β is openai_http model 'beta-a'.*'beta-b'"):
        check(beta("beta-b"))
    assert not (model_dir / run_checks.RECORD_FILE).exists()
    distilled_eval = DatasetConfig(f"{BASE}_distilled_cot", {"inputs": 64, "targets": 8}, 2)
    validation_only = dataclasses.replace(distilled_eval, split="validation")
    run_checks.RationaleChecks()(str(tmp_path / "d"), [validation_only])  # joins train only
    assert not (tmp_path / "d").exists()
    record = check(beta())  # with β configured, FIAT inference may generate the test rationales
    assert not (model_dir / run_checks.RECORD_FILE).exists()  # written once the run starts
    record()
    record = json.loads((model_dir / run_checks.RECORD_FILE).read_text())
    (entry,) = record["stores"]
    assert entry["identity"]["provider"]["model"] == "beta-a"
    assert entry["rationales"] == {f"{BASE}/train": 8, f"{BASE}/validation": 4, f"{BASE}/test": 0}

    infer = dict(
        model=None, model_dir=str(model_dir), initial_checkpoint_path=None, task=BASE,
        itau_file=str(toy_fiat), task_feature_lengths={"inputs": 64, "targets": 8},
        store_dir=store, ibeta_file=str(ibeta), ibeta_task="toy",
    )  # fmt: skip
    with pytest.raises(
        StoreMismatchError,
        match=r"τ in .* was trained on rationales of β "
        r"openai_http model 'beta-a'.*configured β is openai_http model 'beta-b'",
    ):
        fiat_infer(**infer, beta=beta("beta-b"))

    # Resuming the run on a store of another β is refused as well.
    other = tmp_path / "other"
    prompt = load_prompt(ibeta, "toy")
    with RationaleStore.open_for_writing(other, identity_for(beta("beta-b"), prompt)) as s:
        s.append(
            RationaleRecord(BASE, sp, i, "x", "openai_http", "beta-b", prompt.sha256, "p", {}, "t")
            for sp in SPLITS
            for i in ids(sp)
        )
    monkeypatch.setenv(STORE_ENV, str(other))
    with pytest.raises(StoreMismatchError, match="was trained on rationales of another store"):
        run_checks.RationaleChecks()(str(model_dir), datasets)
