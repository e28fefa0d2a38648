"""Shared helpers for sweep tests: a tiny gin tree and sweep files driving the fake trainer."""

from __future__ import annotations

import pathlib
import sys
import textwrap
from typing import Any

import pytest
import yaml

from fiat_t5x.sweeps.spec import Sweep, parse_sweep
from fiat_t5x.sweeps.yaml_loader import load_yaml

FAKE_TRAINER = pathlib.Path(__file__).with_name("fake_trainer.py")


def fake_command() -> list[str]:
    return [sys.executable, str(FAKE_TRAINER)]


@pytest.fixture
def gin_tree(tmp_path: pathlib.Path) -> pathlib.Path:
    """tmp/gin/{base,fiat,wo_cot}.gin: tiny configs the fake trainer understands."""
    gin_dir = tmp_path / "gin"
    gin_dir.mkdir()
    (gin_dir / "base.gin").write_text("TRAIN_STEPS = 3\nSCORE = 10.0\n")
    (gin_dir / "fiat.gin").write_text(
        "include 'gin/base.gin'\nSCORE = 80.0\nLANG_SCORES = {'en': 90.0, 'de': 80.0, 'sw': 60.0}\n"
    )
    (gin_dir / "wo_cot.gin").write_text(
        "include 'gin/base.gin'\nSCORE = 70.0\nLANG_SCORES = {'en': 85.0, 'de': 72.0, 'sw': 40.0}\n"
    )
    return tmp_path


def write_sweep(directory: pathlib.Path, body: str, name: str = "sweep.yaml") -> pathlib.Path:
    path = directory / name
    path.write_text(textwrap.dedent(body))
    return path


TWO_VARIANTS = """\
name: two
gin_search_paths: ["."]
command: {command}
variants:
  fiat:
    label: FIAT
    gin_files: [gin/fiat.gin]
  wo_cot:
    label: w/o CoT
    gin_files: [gin/wo_cot.gin]
    bindings: {{WAIT_FOR: {wait_for}}}
report:
  method: fiat
  baselines: [wo_cot]
  columns:
    - {{task: Demo, metric: Acc, key: eval/demo/accuracy}}
    - {{task: Demo, metric: Loss, key: train/loss, higher_is_better: false}}
  languages:
    - {{task: Demo, metric: Acc, key: "eval/demo/accuracy/{{language}}"}}
  cot_gain:
    - {{with_cot: fiat, without_cot: wo_cot, key: "eval/demo/accuracy/{{language}}"}}
  curves:
    - {{key: eval/demo/accuracy, variants: [fiat, wo_cot]}}
"""


def two_variant_sweep(directory: pathlib.Path, wait_for: str = "") -> pathlib.Path:
    """A FIAT vs w/o-CoT sweep on the fake trainer; `wait_for` makes wo_cot block on a file."""
    import json

    body = TWO_VARIANTS.format(command=json.dumps(fake_command()), wait_for=json.dumps(wait_for))
    return write_sweep(directory, body)


def documented_bindings(path: pathlib.Path) -> dict[str, Any]:
    """The `bindings:` block a sweep file shows in its comments (what a user uncomments and
    fills in: the data, β, the two base checkpoints)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index("# bindings:") + 1
    block = []
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        block.append(line[len("#   ") :])
    assert block, f"{path}: no documented bindings"
    return yaml.safe_load("\n".join(block))


def configured_sweep(path: pathlib.Path, bindings: dict[str, Any]) -> Sweep:
    """The sweep file with `bindings` as its shared bindings (as if the user had set them)."""
    data = dict(load_yaml(path))
    data["bindings"] = {**(data.get("bindings") or {}), **bindings}
    return parse_sweep(data, path)
