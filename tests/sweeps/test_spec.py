"""Sweep files: parsing, grid expansion, gin flags, and errors that name file and field."""

from __future__ import annotations

import pathlib
import sys

import pytest

import gin
from fiat_t5x.sweeps.spec import SweepFileError, gin_literal, load_sweep
from tests.sweeps.conftest import write_sweep

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_variants_merge_shared_files_and_bindings(tmp_path):
    path = write_sweep(
        tmp_path,
        """\
        name: ladder
        gin_files: [runs/base.gin]
        bindings: {TRAIN_STEPS: 100, LEARNING_RATE: 1e-3}
        variants:
          fiat: {label: FIAT, gin_files: [fiat.gin], bindings: {TRAIN_STEPS: 7}}
          finetune: {}
        """,
    )
    sweep = load_sweep(path)
    assert sweep.variant_names == ["fiat", "finetune"]
    fiat = sweep.variant("fiat")
    assert fiat.label == "FIAT"
    assert fiat.gin_files == ("runs/base.gin", "fiat.gin")
    # `1e-3` is YAML 1.1's string; the strict loader reads it as the float users mean.
    assert fiat.bindings == {"TRAIN_STEPS": 7, "LEARNING_RATE": 0.001}
    assert sweep.variant("finetune").label == "finetune"


def test_grid_expands_to_cartesian_product(tmp_path):
    path = write_sweep(
        tmp_path,
        """\
        name: grid
        grids:
          lora:
            gin_files: [fiat.gin]
            bindings: {TRAIN_STEPS: 5}
            axes: {LORA_RANK: [4, 8, 16], LEARNING_RATE: [1e-3, 3.0e-4]}
          named:
            name: "r{LORA_RANK}"
            label: "rank {LORA_RANK}"
            axes: {LORA_RANK: [2]}
        """,
    )
    sweep = load_sweep(path)
    lora = [v for v in sweep.variants if v.grid == "lora"]
    assert len(lora) == 6
    points = [(v.bindings["LORA_RANK"], v.bindings["LEARNING_RATE"]) for v in lora]
    assert points == [(r, lr) for r in (4, 8, 16) for lr in (0.001, 0.0003)]
    assert lora[0].name == "lora_lora_rank4_learning_rate0.001"
    assert all(v.bindings["TRAIN_STEPS"] == 5 for v in lora)
    named = sweep.variant("r2")
    assert named.label == "rank 2" and named.grid_point == {"LORA_RANK": 2}


def test_gin_literal_is_parsed_back_by_gin():
    values = {
        "S": "a 'quoted' path",
        "I": 3,
        "F": 1e-4,
        "B": False,
        "N": None,
        "L": [1, "x", [2.5]],
        "D": {"en": 1.0},
    }
    with gin.unlock_config():
        gin.parse_config([f"{k} = {gin_literal(v)}" for k, v in values.items()])
    try:
        for key, value in values.items():
            assert gin.query_parameter(f"%{key}") == value
    finally:
        gin.clear_config()
    assert gin_literal("@adamw") == "@adamw" and gin_literal("%MODEL_DIR") == "%MODEL_DIR"


def _one_variant_sweep(tmp_path, shared: str, variant: str):
    """A sweep file with one variant `v` reading the empty gin/a.gin."""
    (tmp_path / "gin").mkdir()
    (tmp_path / "gin" / "a.gin").write_text("")
    body = f'name: s\ngin_search_paths: ["."]\n{shared}variants:\n  v: {variant}\n'
    return load_sweep(write_sweep(tmp_path, body))


def test_argv_resolves_gin_files_and_sets_model_dir(tmp_path):
    sweep = _one_variant_sweep(
        tmp_path, "", "{gin_files: [gin/a.gin], bindings: {MIXTURE_OR_TASK_NAME: demo}}"
    )
    argv = sweep.argv(sweep.variant("v"), tmp_path / "root" / "v")
    assert argv[:3] == [sys.executable, "-m", "fiat_t5x.train"]
    assert f"--gin_file={tmp_path / 'gin' / 'a.gin'}" in argv
    assert "--gin.MIXTURE_OR_TASK_NAME='demo'" in argv
    assert f"--gin.MODEL_DIR='{tmp_path / 'root' / 'v'}'" in argv


def test_root_in_bindings_and_extra_flags_point_variants_at_each_other(tmp_path):
    sweep = _one_variant_sweep(
        tmp_path,
        'bindings: {STORE: "{root}/beta/store", PATHS: ["{root}/a", 3]}\n',
        "{gin_files: [gin/a.gin]}",
    ).with_extra_args(["--gin.STEPS=4", "--gin.OUT='{root}/x'"])
    root = tmp_path / "root"
    argv = sweep.argv(sweep.variant("v"), root / "v")
    assert f"--gin.STORE='{root}/beta/store'" in argv
    assert f"--gin.PATHS=['{root}/a', 3]" in argv
    # Added flags come last, so they win over the variant's own bindings.
    assert argv[-2:] == ["--gin.STEPS=4", f"--gin.OUT='{root}/x'"]
    with pytest.raises(SweepFileError, match="only --gin_file=FILE and --gin.NAME=VALUE"):
        sweep.with_extra_args(["--only=v"])


def test_missing_gin_file_is_reported_when_run_not_when_parsed(tmp_path):
    path = write_sweep(
        tmp_path,
        """\
        name: s
        variants:
          v: {gin_files: [gin/not_written_yet.gin]}
        """,
    )
    sweep = load_sweep(path)  # parses fine
    with pytest.raises(
        SweepFileError, match=r"sweep.yaml: variant 'v'.*gin_files\[0\].*not_written"
    ):
        sweep.resolve_gin_files(sweep.variant("v"))


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        (
            "name: s\nvariants:\n  a: {}\n  a: {}\n",
            r"sweep.yaml:4: key 'a' repeats the one on line 3",
        ),
        (
            "name: s\nvariants:\n  a: {gin_file: [x]}\n",
            r"variants.a: unknown field\(s\) \['gin_file'\]",
        ),
        (
            "name: s\nvariants:\n  a: {bindings: {1x: 2}}\n",
            r"variants.a.bindings: '1x' is not a gin",
        ),
        ("name: 'a b'\nvariants: {a: {}}\n", r"field 'name' must be a directory-safe"),
        ("name: s\n", r"no variants"),
        ("name: s\ngrids:\n  g: {axes: {R: []}}\n", r"grids.g.axes.R: must be a non-empty list"),
        ("name: s\ngrids:\n  g: {name: 'x{Q}', axes: {R: [1]}}\n", r"grids.g.name: template"),
        (
            "name: s\nvariants: {a: {}}\nreport: {method: b}\n",
            r"report.method: 'b' is not a variant",
        ),
        ("name: s\nvariants: {a: {}}\nreport: {baselines: [a]}\n", r"'baselines' needs 'method'"),
        (
            "name: s\nvariants: {a: {}}\nreport: {languages: [{key: acc}]}\n",
            r"report.languages\[0\].key 'acc' must contain \{language\}",
        ),
        ("name: s\nvariants: [a\n", r"sweep.yaml:\d+: invalid YAML"),
    ],
)
def test_errors_name_file_and_field(tmp_path, body, pattern):
    path = write_sweep(tmp_path, body)
    with pytest.raises(SweepFileError, match=pattern):
        load_sweep(path)


def test_bundled_sweep_files_parse():
    """Every sweep under gin/sweeps/ parses (their gin files may still be missing)."""
    paths = sorted((REPO / "gin" / "sweeps").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"fiat_ablations", "baselines", "lora_grid", "demo"}
    for path in paths:
        sweep = load_sweep(path)
        assert sweep.variants, path
