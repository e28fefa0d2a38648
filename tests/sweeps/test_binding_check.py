"""A sweep binding that would erase what its variants' gin files set apart is refused before
anything runs: bound in the sweep, INITIAL_CHECKPOINT_PATH would make the last rung of the
ablation ladder ("w/o instruction-tuned base") a copy of "w/o PEFT"."""

from __future__ import annotations

import pathlib

import pytest
import yaml

import gin
from fiat_t5x.sweeps import cli
from fiat_t5x.sweeps.binding_check import check_bindings_keep_variants_apart
from fiat_t5x.sweeps.spec import SweepFileError, load_sweep
from fiat_t5x.training import gin_cli
from tests.sweeps.conftest import configured_sweep, documented_bindings, write_sweep

REPO = pathlib.Path(__file__).resolve().parents[2]
SWEEPS = REPO / "gin" / "sweeps"


def _ablations_with(tmp_path: pathlib.Path, **bindings) -> pathlib.Path:
    """gin/sweeps/fiat_ablations.yaml with its documented bindings plus `bindings`."""
    data = yaml.safe_load((SWEEPS / "fiat_ablations.yaml").read_text(encoding="utf-8"))
    data["bindings"] = {**documented_bindings(SWEEPS / "fiat_ablations.yaml"), **bindings}
    path = tmp_path / "ablations.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _line(path: str, text: str) -> int:
    lines = (REPO / path).read_text(encoding="utf-8").splitlines()
    return lines.index(text) + 1


def test_binding_initial_checkpoint_path_is_refused_before_anything_runs(tmp_path, capsys):
    sweep = _ablations_with(tmp_path, INITIAL_CHECKPOINT_PATH="/ckpts/flan_t5_base")
    root = tmp_path / "root"
    assert cli.main(["run", str(sweep), "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    assert err.startswith("fiat-t5x sweep: error: ")
    assert "binding INITIAL_CHECKPOINT_PATH='/ckpts/flan_t5_base'" in err
    rung = "gin/ablations/wo_instruction_tuned_base.gin"
    line = _line(rung, "INITIAL_CHECKPOINT_PATH = %BASE_CHECKPOINT_PATH")
    assert (
        f"variant wo_instruction_tuned_base: {rung}:{line} sets it to %BASE_CHECKPOINT_PATH" in err
    )
    line = _line(
        "gin/fiat/xor_attriqa.gin", "INITIAL_CHECKPOINT_PATH = %INSTRUCTION_TUNED_CHECKPOINT_PATH"
    )
    others = "variants beta_rationales, fiat, wo_cot, wo_instruction, wo_peft"
    assert f"{others}: gin/fiat/xor_attriqa.gin:{line} sets it to %INSTRUCTION_TUNED" in err
    assert "derived from BASE_CHECKPOINT_PATH, INSTRUCTION_TUNED_CHECKPOINT_PATH" in err
    assert not root.exists()  # no variant started, not even β's step


def test_binding_the_learning_rate_would_give_w_o_peft_lora_s_rate(tmp_path):
    sweep = load_sweep(_ablations_with(tmp_path, LEARNING_RATE=3e-4))
    with pytest.raises(SweepFileError) as e:
        check_bindings_keep_variants_apart(sweep)
    message = str(e.value)
    assert "binding LEARNING_RATE=0.0003" in message
    line = _line("gin/ablations/wo_peft.gin", "LEARNING_RATE = %FULL_FINETUNE_LEARNING_RATE")
    assert (
        f"variants wo_peft, wo_instruction_tuned_base: gin/ablations/wo_peft.gin:{line}" in message
    )
    assert "derived from FULL_FINETUNE_LEARNING_RATE" in message
    assert "INITIAL_CHECKPOINT_PATH" not in message  # only what is wrong is named


@pytest.mark.parametrize("name", ["fiat_ablations", "baselines"])
def test_the_shipped_sweeps_with_their_documented_bindings_pass(name):
    documented = documented_bindings(SWEEPS / "fiat_ablations.yaml")
    check_bindings_keep_variants_apart(configured_sweep(SWEEPS / f"{name}.yaml", documented))


@pytest.mark.parametrize("name", ["demo", "lora_grid"])
def test_the_shipped_sweeps_as_they_are_pass(name):
    check_bindings_keep_variants_apart(load_sweep(SWEEPS / f"{name}.yaml"))


def test_which_bindings_erase_a_difference(tmp_path):
    gin_dir = tmp_path / "gin"
    gin_dir.mkdir()
    (gin_dir / "common.gin").write_text("X = 1\nSAME = 'a'\nd.C:\n  pack = True\n")
    (gin_dir / "other.gin").write_text("include 'gin/common.gin'\nX = %Y\nd.C.pack = False\n")

    def check(shared: str, own: str = "", own_one: str = "") -> None:
        body = (
            f'name: s\ngin_search_paths: ["."]\n{shared}variants:\n'
            f"  one: {{gin_files: [gin/common.gin]{own_one}}}\n"
            f"  two: {{gin_files: [gin/other.gin]{own}}}\n"
        )
        check_bindings_keep_variants_apart(load_sweep(write_sweep(tmp_path, body)))

    check("bindings: {SAME: b, UNSET: 3}\n")  # every file sets it alike, or none sets it
    check("", ", bindings: {X: 5}")  # one variant's own value keeps them apart
    check("", ", bindings: {X: 5}", ", bindings: {X: 5}")  # each variant's own choice (smoke runs)
    check("bindings: {X: 5}\n", ", bindings: {X: 6}")  # the shared value reaches one file only
    with pytest.raises(
        SweepFileError, match=r"binding X=5 .*variant one: \S*gin/common.gin:1 sets"
    ):
        check("bindings: {X: 5}\n")
    with pytest.raises(
        SweepFileError, match=r"binding d.C.pack=True .*variant two: \S*gin/other.gin:3 sets it"
    ):
        check("bindings: {d.C.pack: true}\n")  # block and dotted forms are the same key


def test_a_macro_the_files_set_is_no_typo_even_where_nothing_reads_it():
    """The ladder's first rung reads INSTRUCTION_TUNED_CHECKPOINT_PATH, not BASE_CHECKPOINT_PATH
    (only the last rung does): binding both for every rung is right; a misspelling is not."""
    common = ["--gin_file=gin/fiat/xor_attriqa.gin", "--gin.MODEL_DIR='/runs/x'"]
    for name, value in documented_bindings(SWEEPS / "fiat_ablations.yaml").items():
        common.append(f"--gin.{name}={value!r}")
    args = gin_cli.parse_args(common)
    gin_cli.parse_gin(args)
    gin_cli.check_macros(args, ["MODEL_DIR"])
    typo = gin_cli.parse_args([*common, "--gin.BASE_CHECKPOINT_PATHS='/x'"])
    gin_cli.parse_gin(typo)
    with pytest.raises(gin_cli.UsageError, match="no loaded gin file reads the macro BASE_CHE"):
        gin_cli.check_macros(typo, ["MODEL_DIR"])
    gin.clear_config()
