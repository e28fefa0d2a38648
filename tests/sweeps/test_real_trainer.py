"""A two-variant sweep through the real trainer (`python -m fiat_t5x.train`), tiny config."""

from __future__ import annotations

import csv
import json
import textwrap

import pytest

from fiat_t5x.sweeps import cli
from fiat_t5x.sweeps.runner import variant_status

SWEEP = """\
name: real_tiny
gin_files: [models/byt5/tiny.gin, runs/finetune.gin]
bindings:
  MIXTURE_OR_TASK_NAME: fiat_demo_plain
  TASK_FEATURE_LENGTHS: {inputs: 128, targets: 8}
  TRAIN_STEPS: 2
  EVAL_PERIOD: 2
  BATCH_SIZE: 8
  EVAL_BATCH_SIZE: 8
  INITIAL_CHECKPOINT_PATH: null
  train_script.train.eval_num_examples: 8
variants:
  lora: {label: LoRA, gin_files: [peft/lora.gin]}
  full: {label: Full fine-tuning, gin_files: [peft/full_finetune.gin]}
report:
  method: lora
  baselines: [full]
  columns:
    - {task: Demo, metric: Acc, key: "eval/*/accuracy"}
    - {task: Demo, metric: Loss, key: eval/loss_per_token, higher_is_better: false}
"""


@pytest.mark.slow
def test_two_variant_sweep_with_the_real_trainer(tmp_path):
    sweep = tmp_path / "real.yaml"
    sweep.write_text(textwrap.dedent(SWEEP))
    root, out = tmp_path / "root", tmp_path / "report"
    assert cli.main(["run", str(sweep), "--root", str(root)]) == 0, root / "lora" / "run.log"
    assert cli.main(["report", str(sweep), "--root", str(root), "--out", str(out)]) == 0
    with open(out / "main.csv", newline="") as f:
        rows = {row["Method"]: row for row in csv.DictReader(f)}
    for name, label in (("lora", "LoRA"), ("full", "Full fine-tuning")):
        assert variant_status(root, name).state == "done"
        records = [json.loads(x) for x in (root / name / "metrics.jsonl").read_text().splitlines()]
        last_eval = [r for r in records if "eval/loss_per_token" in r][-1]
        assert last_eval["step"] == 2
        accuracy = last_eval["eval/fiat_demo_plain/accuracy"]
        assert float(rows[label]["Demo Acc"]) == accuracy
        # The trainer's evaluation wrote per-example records: the accuracy has an interval.
        assert float(rows[label]["Demo Acc low"]) <= accuracy <= float(rows[label]["Demo Acc high"])
        assert float(rows[label]["Demo Loss"]) == last_eval["eval/loss_per_token"]
        assert (root / name / "config.gin").exists() or any((root / name).glob("*.gin"))
    # Re-running skips both finished variants (no new trainer process).
    assert cli.main(["run", str(sweep), "--root", str(root)]) == 0
    assert (root / "lora" / "run.log").read_text().count("=== ") == 1
