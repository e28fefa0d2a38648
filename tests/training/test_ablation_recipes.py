"""The ablation ladders mean what the paper means: neighbouring rungs differ in exactly the one
ingredient the paper removes, and full fine-tuning is T5X's recipe (Adafactor defaults).

Each rung's operative training configuration is read from the exact command line the sweep
runs (`Sweep.argv`: its gin files, then its bindings, which gin applies after every file), with
the bindings the sweep file documents for a real run, by resolving every argument of
`train_script.train`: macros, references and the defaults of each configurable that is called,
so a binding that is present but unused (LoRA settings after `lora = None`) does not count, and
a default that is silently overridden does (a sweep binding of INITIAL_CHECKPOINT_PATH would make
"w/o instruction-tuned base" equal "w/o PEFT").
"""

from __future__ import annotations

import inspect
import pathlib
from typing import Any

import pytest

import gin
from fiat_t5x import train as train_script
from fiat_t5x.sweeps.spec import Sweep, load_sweep
from fiat_t5x.training import gin_cli, optimizers
from tests.sweeps.conftest import configured_sweep, documented_bindings

REPO = pathlib.Path(__file__).resolve().parents[2]
ABLATIONS = REPO / "gin" / "sweeps" / "fiat_ablations.yaml"
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


def _recipe(sweep: Sweep, variant: str) -> dict[str, Any]:
    """The operative arguments of `train_script.train` for one variant, flattened, from the
    command line the sweep runs for it."""
    argv = sweep.argv(sweep.variant(variant), "/runs/x")
    start = argv.index(next(a for a in argv if a.startswith("--gin")))
    args = gin_cli.parse_args(argv[start:])
    gin_cli.parse_gin(args)
    gin_cli.check_macros(args, train_script.REQUIRED_MACROS)  # as `fiat-t5x train` does
    train = gin.config.ConfigurableReference("train_script.train", evaluate=False)
    recipe = _flatten(_configured(train))
    gin.clear_config()
    return recipe


def _differences(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    return {k for k in set(a) | set(b) if a.get(k, "absent") != b.get(k, "absent")}


@pytest.fixture(scope="module")
def real_bindings() -> dict[str, Any]:
    return documented_bindings(ABLATIONS)


@pytest.fixture(scope="module")
def recipes(real_bindings) -> dict[str, dict[str, dict[str, Any]]]:
    assert train_script.train  # the configurable the gin files bind
    names = ["fiat", *LADDER]
    ablations = configured_sweep(ABLATIONS, real_bindings)
    demo = load_sweep(REPO / "gin" / "sweeps" / "demo.yaml")
    return {
        "xor_attriqa": {n: _recipe(ablations, n) for n in names},
        "demo": {n: _recipe(demo, n) for n in names},
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


def test_the_fine_tune_baseline_is_the_last_rung_of_the_ladder(recipes, real_bindings):
    baselines = configured_sweep(REPO / "gin" / "sweeps" / "baselines.yaml", real_bindings)
    baseline = _recipe(baselines, "finetune")
    last = recipes["xor_attriqa"]["wo_instruction_tuned_base"]
    assert _differences(baseline, last) == set()


def test_the_ladder_starts_from_each_base_the_sweep_file_names(recipes, real_bindings):
    rungs = recipes["xor_attriqa"]
    instruction_tuned = real_bindings["INSTRUCTION_TUNED_CHECKPOINT_PATH"]
    for name in ("fiat", "wo_cot", "wo_instruction", "wo_peft"):
        assert rungs[name]["initial_checkpoint_path"] == instruction_tuned, name
    base = rungs["wo_instruction_tuned_base"]["initial_checkpoint_path"]
    assert base == real_bindings["BASE_CHECKPOINT_PATH"] != instruction_tuned
