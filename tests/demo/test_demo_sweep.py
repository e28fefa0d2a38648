"""`make demo`'s sweep end to end on a cut-down setting: the real gin files and entry points
(β's rationales, the instruction-tuned base, ICL, FIAT, a full-fine-tuning step, Distilled CoT)
with a few steps each and 40 evaluated examples, then the report with its bootstrap intervals
and paired tests; a second run skips every finished variant; and the β step with another β
given to the whole sweep by `--gin_file` (the scripted one is a default, not a lock)."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
SWEEP = REPO / "gin" / "sweeps" / "demo.yaml"
SUBSET = ("beta_rationales", "instruction_base", "icl", "fiat", "wo_peft", "distilled_cot")
FEW_STEPS = {"TRAIN_STEPS": 4, "EVAL_PERIOD": 4, "CHECKPOINT_PERIOD": 4, "BATCH_SIZE": 8}
EVALUATED = 40


def _cut_down(tmp_path: pathlib.Path) -> pathlib.Path:
    """demo.yaml with a subset of its variants, a few steps each, 40 evaluated examples."""
    spec = yaml.safe_load(SWEEP.read_text(encoding="utf-8"))
    spec["name"] = "demo_cut_down"
    spec["gin_search_paths"] = [str(REPO), str(REPO / "gin")]
    spec["variants"] = {name: spec["variants"][name] for name in SUBSET}
    for name, variant in spec["variants"].items():
        if name in ("fiat", "wo_peft", "distilled_cot"):
            variant["bindings"] = {
                **variant.get("bindings", {}),
                **FEW_STEPS,
                "train_script.train.eval_num_examples": EVALUATED,
            }
    spec["variants"]["instruction_base"]["bindings"] = {**FEW_STEPS, "EVAL_PERIOD": 0}
    spec["variants"]["icl"]["bindings"] = {
        **spec["variants"]["icl"].get("bindings", {}),
        "icl.icl_baseline.limit": EVALUATED,
    }
    report = spec["report"]
    report["rows"] = [r for r in report["rows"] if r in SUBSET]
    report["baselines"] = [b for b in report["baselines"] if b in SUBSET]
    report["ladder"] = [r for r in report["ladder"] if r in SUBSET]
    report["curves"][0]["variants"] = ["fiat", "wo_peft"]
    report["cot_gain"] = [p for p in report["cot_gain"] if p["without_cot"] in SUBSET]
    report["bootstrap"] = {"resamples": 200}
    path = tmp_path / "demo_cut_down.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fiat_t5x.cli", "sweep", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "XLA_FLAGS": ""},
    )


def _csv(path: pathlib.Path, key: str = "Method") -> dict[str, dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return {row[key]: row for row in csv.DictReader(f)}


def _rows(path: pathlib.Path) -> dict:
    """Every metrics row of a step merged (the job's counts, then β's quality)."""
    merged: dict = {}
    for line in path.read_text().splitlines():
        merged.update(json.loads(line))
    return merged


@pytest.mark.slow
def test_demo_sweep_cut_down(tmp_path):
    sweep = _cut_down(tmp_path)
    root, out = tmp_path / "root", tmp_path / "report"
    run = _sweep("run", str(sweep), "--root", str(root))
    assert run.returncode == 0, run.stdout + run.stderr
    # The steps wrote where the variants read: the sweep's plain paths.
    assert list((root / "instruction_base" / "base").glob("checkpoint_4"))
    identity = json.loads((root / "beta_rationales" / "store" / "identity.json").read_text())
    assert identity["provider"]["kind"] == "scripted"
    beta = _rows(root / "beta_rationales" / "metrics.jsonl")
    assert beta["beta/validation/rationales"] == 400
    # β is right where it reads the question, and at chance on Swahili, by design.
    assert beta["beta/validation/answer_accuracy/en"] > 85
    assert beta["beta/validation/answer_accuracy/sw"] < 65

    report = _sweep("report", str(sweep), "--root", str(root), "--out", str(out))
    assert report.returncode == 0, report.stdout + report.stderr
    labels = {n: v["label"] for n, v in yaml.safe_load(sweep.read_text())["variants"].items()}
    main = _csv(out / "main.csv")
    for name in ("icl", "distilled_cot", "fiat", "wo_peft"):
        row = main[labels[name]]
        done = json.loads((root / name / "DONE").read_text())
        (accuracy,) = [
            v for k, v in done["final_metrics"].items() if re.fullmatch(r"eval/[^/]+/accuracy", k)
        ]
        value, low, high = (float(row[f"Demo Acc{s}"]) for s in ("", " low", " high"))
        assert value == pytest.approx(accuracy)
        assert low <= value <= high, (name, row)
        records = list((root / name / "records" / "eval").glob("*/step_*.jsonl"))
        assert records, f"{name} wrote no per-example records"
    gain = main[f"{labels['fiat']}: gain over best baseline"]
    assert gain["Demo Acc significant"] in ("True", "False") and gain["Demo Acc p"] != ""
    comparisons = _csv(out / "comparisons.csv", key="Comparison")
    assert set(comparisons) == {
        f"{labels['fiat']} vs {labels[b]}" for b in ("icl", "distilled_cot")
    }
    for row in comparisons.values():
        assert float(row["Demo Acc low"]) <= float(row["Demo Acc"]) <= float(row["Demo Acc high"])
    languages = _csv(out / "languages_demo_acc.csv")
    for language in ("en", "de", "fr", "sw", "mean"):
        row = languages[labels["fiat"]]
        assert (
            float(row[f"{language} low"]) <= float(row[language]) <= float(row[f"{language} high"])
        )
    markdown = (out / "main.md").read_text()
    assert f"| {labels['fiat']} | " in markdown and " [" in markdown
    ladder = _csv(out / "ladder.csv", key="Step")
    assert list(ladder) == [f"{labels['fiat']} → {labels['wo_peft']}"]
    assert (out / "curves_0.png").is_file() and (out / "cot_gain_0.png").is_file()

    again = _sweep("run", str(sweep), "--root", str(root))
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count(": skipped") == len(SUBSET)

    # Another β for the whole sweep: a gin file binding BETA, added to every variant.
    other = tmp_path / "careful_beta.gin"
    other.write_text(
        "from __gin__ import dynamic_registration\n"
        "from tests.demo import careful_beta\n"
        "BETA = @careful_beta.careful_beta()\n"
    )
    root2 = tmp_path / "root_careful"
    run = _sweep(
        "run", str(sweep), "--root", str(root2), "--only", "beta_rationales", f"--gin_file={other}"
    )
    assert run.returncode == 0, run.stdout + run.stderr
    identity = json.loads((root2 / "beta_rationales" / "store" / "identity.json").read_text())
    assert identity["provider"]["model"] == "careful test reader"
    quality = _rows(root2 / "beta_rationales" / "metrics.jsonl")
    assert quality["beta/validation/answer_accuracy/sw"] == 100.0  # it reads Swahili too
