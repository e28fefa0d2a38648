"""Iτ: the instruction that tells the tuned model τ how to use the input and β's rationale.

Iτ lives in a readable YAML (or JSON) file next to the task's gin, one entry per task:

    tasks:
      fiat_demo:
        instruction: Answer the question. A reasoning is given; check it, it may be wrong.
        input_template: "Question: {question}"          # the example's fields
        rationale_template: "Reasoning: {rationale}"    # optional (this default)
        target_template: "{answer}"                     # the label
        separator: "\\n\\n"                              # optional (this default)
        label_prefix: "[label] "                         # Distilled CoT task prefixes (optional)
        rationale_prefix: "[rationale] "

From it the rationale-injecting tasks build τ's inputs (FIAT's ablation ladder):
  FIAT                 instruction + sep + input + sep + rationale
  w/o CoT              instruction + sep + input
  w/o instruction      input
  Distilled CoT        label_prefix + input -> label;  rationale_prefix + input -> rationale
Templates use `{field}` placeholders (`{{`/`}}` for literal braces); `{rationale}` is β's text.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

from fiat_t5x.data.templates import TemplateError, placeholders
from fiat_t5x.rationales.prompt_files import pick_task, read_prompt_file, task_entries
from fiat_t5x.training.gin_cli import UsageError

RATIONALE_FIELD = "rationale"
DEFAULT_RATIONALE_TEMPLATE = "Reasoning: {rationale}"
DEFAULT_SEPARATOR = "\n\n"
DEFAULT_LABEL_PREFIX = "[label] "
DEFAULT_RATIONALE_PREFIX = "[rationale] "

_KEYS = {
    "instruction",
    "input_template",
    "rationale_template",
    "target_template",
    "separator",
    "label_prefix",
    "rationale_prefix",
}


class TuningPromptError(UsageError):
    """An Iτ file that cannot be used; the message names the file, the task and the key."""


@dataclasses.dataclass(frozen=True)
class TuningPrompt:
    """Iτ for one task; the `*_inputs` methods are the plain-Python reference renderings."""

    task: str
    instruction: str
    input_template: str
    target_template: str
    rationale_template: str = DEFAULT_RATIONALE_TEMPLATE
    separator: str = DEFAULT_SEPARATOR
    label_prefix: str = DEFAULT_LABEL_PREFIX
    rationale_prefix: str = DEFAULT_RATIONALE_PREFIX
    source: str = "<memory>"

    def __post_init__(self) -> None:
        where = f"{self.source}: task {self.task!r}"
        for name in ("input_template", "target_template", "rationale_template"):
            try:
                fields = placeholders(getattr(self, name))
            except TemplateError as e:
                raise TuningPromptError(f"{where}: {name}: {e}") from None
            if name == "rationale_template" and RATIONALE_FIELD not in fields:
                raise TuningPromptError(
                    f"{where}: rationale_template {self.rationale_template!r} must contain "
                    "{rationale}, where β's text goes"
                )
            if name != "rationale_template" and RATIONALE_FIELD in fields:
                raise TuningPromptError(
                    f"{where}: {name} may not use {{rationale}}; β's text is placed by "
                    "rationale_template"
                )

    def input_fields(self) -> tuple[str, ...]:
        """The example fields the input and the label read (the rationale excluded)."""
        names = placeholders(self.input_template) + placeholders(self.target_template)
        return tuple(dict.fromkeys(names))

    def _fill(self, template: str, fields: Mapping[str, Any]) -> str:
        try:
            return template.format_map({k: _text(v) for k, v in fields.items()})
        except KeyError as e:
            raise TuningPromptError(
                f"{self.source}: task {self.task!r}: template {template!r} needs field "
                f"{e.args[0]!r}; the example has {sorted(fields)}"
            ) from None

    def plain_inputs(self, fields: Mapping[str, Any]) -> str:
        """τ's input without Iτ and without a rationale (the "w/o instruction" rung)."""
        return self._fill(self.input_template, fields)

    def instructed_inputs(self, fields: Mapping[str, Any]) -> str:
        """Iτ + input (the "w/o CoT-augmented tuning" rung)."""
        return self.instruction + self.separator + self.plain_inputs(fields)

    def fiat_inputs(self, fields: Mapping[str, Any], rationale: str) -> str:
        """Iτ + input + β's rationale: FIAT's input to τ."""
        rationale_text = self._fill(self.rationale_template, {RATIONALE_FIELD: rationale})
        return self.instructed_inputs(fields) + self.separator + rationale_text

    def target(self, fields: Mapping[str, Any]) -> str:
        return self._fill(self.target_template, fields)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in sorted(_KEYS)}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return _text(value.item())
    return str(value)


def parse_tuning_prompts(
    data: Mapping[str, Any], source: str = "<memory>"
) -> dict[str, TuningPrompt]:
    """Every task's Iτ from a parsed file (see the module docstring)."""
    entries = task_entries(
        data,
        source,
        allowed=_KEYS,
        required_strings=("instruction", "input_template", "target_template"),
        error=TuningPromptError,
    )
    prompts = {}
    for task, raw, where in entries:
        for key, value in raw.items():
            if not isinstance(value, str):
                raise TuningPromptError(
                    f"{where}.{key} must be a string, got {type(value).__name__}"
                )
        prompts[task] = TuningPrompt(task=task, source=source, **dict(raw))
    return prompts


def load_tuning_prompt(path: str | pathlib.Path, task: str) -> TuningPrompt:
    """One task's Iτ from a .yaml/.yml/.json file; the error lists the tasks the file defines."""
    data = read_prompt_file(path, TuningPromptError, "Iτ")
    return pick_task(parse_tuning_prompts(data, str(path)), task, path, "Iτ", TuningPromptError)
