"""`fiat-t5x sweep run gin/sweeps/fiat_ablations.yaml` starts with β: its `beta_rationales` step
generates every split's rationales into RATIONALE_STORE through the provider bound in gin
(gin/fiat/beta/openai.gin), on small XOR-AttriQA files in the released format, against an
OpenAI-compatible server started here."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from fiat_t5x.rationales.store import RationaleStore
from fiat_t5x.sweeps.runner import SweepRunner
from fiat_t5x.sweeps.spec import load_sweep

from .scripted_server import ScriptedServer

REPO = pathlib.Path(__file__).resolve().parents[2]
LANGUAGES = ("bn", "fi", "ja", "ru", "te")


def xor_record(lang: str, i: int, ais: bool) -> dict:
    return {
        "id": f"{lang}-{i}",
        "query": f"{lang} question {i}?",
        "query_language": lang,
        "answers": [f"answer {i}"],
        "prediction": f"prediction {i}",
        "query_translated_en": f"question {i}?",
        "prediction_translated_en": f"prediction {i}",
        "passage_in_language": f"{lang} passage {i}",
        "passage_en": f"English passage {i}",
        "passage_retrieved_language": "en",
        "ais": ais,
    }


def write_xor_attriqa(root: pathlib.Path) -> dict[str, int]:
    """train/val with every language, one test file per language; returns examples per split."""
    root.mkdir(parents=True)

    def write(name: str, records: list[dict]) -> None:
        with open(root / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)

    write("train.jsonl", [xor_record(lang, i, i % 2 == 0) for lang in LANGUAGES for i in range(2)])
    write("val.jsonl", [xor_record(lang, 10, True) for lang in LANGUAGES])
    for lang in LANGUAGES:
        write(f"{lang}.jsonl", [xor_record(lang, 20, False)])
    return {"train": 10, "validation": 5, "test": 5}


@pytest.mark.slow
def test_the_ablation_sweep_generates_rationales_first(tmp_path):
    sizes = write_xor_attriqa(tmp_path / "in-language")
    sweep = load_sweep(REPO / "gin" / "sweeps" / "fiat_ablations.yaml")
    assert sweep.variant_names[0] == "beta_rationales"
    step = sweep.variant("beta_rationales")
    store = tmp_path / "store"
    with ScriptedServer() as server:
        bindings = {
            **step.bindings,
            "RATIONALE_STORE": str(store),
            "BETA_BASE_URL": server.url + "/v1",
            "BETA_MODEL": "served-beta",
            "BETA_API_KEY_ENV": "",
            "xor_attriqa_data.data_dir": str(tmp_path / "in-language"),
        }
        configured = dataclasses.replace(step, bindings=bindings)
        sweep = dataclasses.replace(sweep, variants=(configured,))
        (result,) = SweepRunner(sweep, tmp_path / "root").run()
    log = (tmp_path / "root" / "beta_rationales" / "run.log").read_text()
    assert result.state == "done", log[-3000:]
    assert len(server.seen) == sum(sizes.values())
    written = RationaleStore.open_readonly(store)
    for split, size in sizes.items():
        assert len(written.texts("xor_attriqa_all", split)) == size
    assert written.identity.provider["model"] == "served-beta"
    assert result.metrics["beta/validation/rationales"] == 5
    assert result.metrics["beta/test/missing"] == 0
