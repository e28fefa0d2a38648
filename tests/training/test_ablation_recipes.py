"""The ablation ladders mean what the paper means: neighbouring rungs differ in exactly the one
ingredient the paper removes, and full fine-tuning is T5X's recipe (Adafactor defaults).

Each rung's operative training configuration is read from its gin stack (as the sweep runs it)
by resolving every argument of `train_script.train`: macros, references and the defaults of
each configurable that is called, so a binding that is present but unused (LoRA settings after
`lora = None`) does not count, and a default that is silently overridden does.
"""

from __future__ import annotations

import inspect
import pathlib
from typing import Any

import pytest

import gin
from fiat_t5x import train as train_script
from fiat_t5x.sweeps.spec import gin_literal, load_sweep
from fiat_t5x.training import gin_cli, optimizers

REPO = pathlib.Path(__file__).resolve().parents[2]
# Values the dataset files leave %gin.REQUIRED (paths on the user's machine), in a gin file
# stacked right after the dataset file, so the rungs' own files still override them (a
# `--gin.INITIAL_CHECKPOINT_PATH` flag would win over gin/ablations/wo_instruction_tuned_base.gin).
REQUIRED = """
INITIAL_CHECKPOINT_PATH = '/ckpt/flan_t5_base/checkpoint_1184000'
BASE_CHECKPOINT_PATH = '/ckpt/t5_1_1_base/checkpoint_1000000'
RATIONALE_STORE = '/data/rationales'
"""
# What each rung may change: the paper's one ingredient, as the arguments of train() it reaches.
TASK = ("train_dataset_cfg.mixture_or_task_name", "eval_dataset_cfg.mixture_or_task_name")
PEFT = ("model.lora", "trainable.", "optimizer.", "learning_rate.")
BASE = ("initial_checkpoint_path",)
LADDER = {
    "wo_cot": TASK,
    "wo_instruction": TASK,
    "wo_peft": PEFT,
    "wo_instruction_tuned_base": BASE,
}


def _resolve(value: Any) -> Any:
    """A gin value with macros and references replaced by what they configure."""
    if isinstance(value, gin.config.ConfigurableReference):
        if value.selector == "gin.macro":
            return _resolve(gin.query_parameter(f"%{value.scopes[-1]}"))
        return _configured(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    return value


def _configured(reference: gin.config.ConfigurableReference) -> dict[str, Any]:
    """{'@': the configurable, every argument: its binding or else its default}."""
    wrapped = reference.configurable.wrapped
    signature = inspect.signature(wrapped.__init__ if inspect.isclass(wrapped) else wrapped)
    values = {
        name: p.default
        for name, p in signature.parameters.items()
        if name != "self" and p.default is not inspect.Parameter.empty
    }
    values.update(gin.get_bindings(reference.scoped_selector, resolve_references=False))
    resolved = {k: _resolve(v) for k, v in values.items()}
    return {"@": reference.scoped_selector + ("()" if reference.evaluate else ""), **resolved}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def _recipe(sweep_file: str, variant: str, paths_file: pathlib.Path | None) -> dict[str, Any]:
    """The operative arguments of `train_script.train` for one variant of a sweep, flattened."""
    sweep = load_sweep(REPO / sweep_file)
    v = sweep.variant(variant)
    dataset, *rung = [str(f) for f in sweep.resolve_gin_files(v)]
    bindings = {**v.bindings, "MODEL_DIR": "/runs/x"}
    gin_cli.parse_gin(
        gin_cli.GinArgs(
            gin_files=[dataset, *([str(paths_file)] if paths_file else []), *rung],
            bindings=[f"{k} = {gin_literal(value)}" for k, value in bindings.items()],
        )
    )
    train = gin.config.ConfigurableReference("train_script.train", evaluate=False)
    recipe = _flatten(_configured(train))
    gin.clear_config()
    return recipe


def _differences(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    return {k for k in set(a) | set(b) if a.get(k, "absent") != b.get(k, "absent")}


@pytest.fixture(scope="module")
def paths_file(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("gin") / "paths.gin"
    path.write_text(REQUIRED)
    return path


@pytest.fixture(scope="module")
def recipes(paths_file) -> dict[str, dict[str, dict[str, Any]]]:
    assert train_script.train  # the configurable the gin files bind
    names = ["fiat", *LADDER]
    return {
        "xor_attriqa": {n: _recipe("gin/sweeps/fiat_ablations.yaml", n, paths_file) for n in names},
        "demo": {n: _recipe("gin/sweeps/demo.yaml", n, None) for n in names},
    }


@pytest.mark.parametrize("ladder", ["xor_attriqa", "demo"])
def test_each_rung_removes_exactly_its_ingredient(recipes, ladder):
    rungs = recipes[ladder]
    names = list(rungs)
    for previous, rung in zip(names, names[1:], strict=False):
        changed = _differences(rungs[previous], rungs[rung])
        allowed = LADDER[rung]
        assert changed, f"{ladder}: {rung} changes nothing against {previous}"
        stray = sorted(k for k in changed if not k.startswith(allowed))
        assert not stray, (
            f"{ladder}: {rung} should change only {allowed} against {previous}, but also "
            + "; ".join(f"{k}: {rungs[previous].get(k)} -> {rungs[rung].get(k)}" for k in stray)
        )


def test_full_fine_tuning_uses_t5x_adafactor_defaults(recipes):
    defaults = inspect.signature(optimizers.adafactor).parameters
    lora, full = recipes["xor_attriqa"]["wo_instruction"], recipes["xor_attriqa"]["wo_peft"]
    assert full["optimizer.@"] == "optimizers.adafactor"
    for name, parameter in defaults.items():
        if parameter.default is not inspect.Parameter.empty:
            assert full[f"optimizer.{name}"] == parameter.default, name
    assert full["model.lora"] is None and full["trainable.patterns"] == (".*",)
    # LoRA keeps its own setting (relative steps for the zero-initialised lora_b).
    assert lora["optimizer.multiply_by_parameter_scale"] is False


def test_the_fine_tune_baseline_is_the_last_rung_of_the_ladder(recipes, paths_file):
    baseline = _recipe("gin/sweeps/baselines.yaml", "finetune", paths_file)
    last = recipes["xor_attriqa"]["wo_instruction_tuned_base"]
    assert _differences(baseline, last) == set()
