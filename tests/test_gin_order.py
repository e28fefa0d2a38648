"""gin keeps a stack's last assignment, so a model's defaults loaded after a file that overrides
them undo it silently (pod.gin before xxl.gin leaves an XXL run unscanned, without remat, in
fp32). `gin_assignments.lost_to_model_defaults` finds exactly that, and nothing in the stacks
gin is meant to layer."""

from __future__ import annotations

import glob

import pytest

from fiat_t5x import gin_assignments, gin_files
from fiat_t5x.sweeps.spec import load_sweep

POD_RECIPE = [
    "models/flan_t5/xxl.gin",
    "peft/lora.gin",
    "runs/finetune.gin",
    "partitioning/pod.gin",
]


def _lost(names: list[str]) -> dict[str, tuple[str, str]]:
    search = gin_files.search_paths([])
    files = [gin_files.find(name) for name in names]
    lost = gin_assignments.lost_to_model_defaults(files, search)
    return {key: (before.file, later.file) for key, before, later in lost}


def test_pod_settings_before_the_model_are_reported_with_both_files():
    lost = _lost([POD_RECIPE[-1], *POD_RECIPE[:-1]])
    # NUM_PARTITIONS is reset too, by runs/finetune.gin's own include: not a model's default.
    assert set(lost) == {"ACTIVATION_DTYPE", "SCAN_LAYERS", "REMAT_POLICY"}
    before, later = lost["SCAN_LAYERS"]
    assert before.endswith("gin/models/pod_memory.gin")
    assert later.endswith("gin/models/flan_t5/architecture.gin")


@pytest.mark.parametrize(
    "names",
    [
        POD_RECIPE,
        ["fiat/xor_attriqa.gin", "ablations/wo_peft.gin"],
        ["fiat/xor_attriqa.gin", "ablations/wo_instruction_tuned_base.gin"],
        ["fiat/xor_attriqa.gin", "partitioning/model_parallel_2.gin"],
    ],
)
def test_stacks_layered_as_documented_lose_nothing(names):
    assert _lost(names) == {}


def test_no_shipped_sweep_variant_loses_a_setting():
    checked = 0
    for path in sorted(glob.glob(str(gin_files.gin_dir() / "sweeps" / "*.yaml"))):
        sweep = load_sweep(path)
        search = [str(p) for p in sweep.search_paths()] + gin_files.search_paths([])
        for variant in sweep.variants:
            files = [str(f) for f in sweep.resolve_gin_files(variant)]
            assert gin_assignments.lost_to_model_defaults(files, search) == [], variant.name
            checked += 1
    assert checked >= 10
