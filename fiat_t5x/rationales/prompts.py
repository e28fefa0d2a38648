"""Iβ: the reasoning instruction and few-shot chain-of-thought exemplars that β is prompted with.

Iβ lives in a readable YAML (or JSON) file, one entry per task, optionally with per-language
instructions/exemplars (FIAT's XOR-AttriQA prompt has exemplars per language):

    x_y_delimiter: "\\n\\n"          # optional; Flan's defaults
    example_separator: "\\n\\n\\n"
    tasks:
      xor_attriqa:
        instruction: Decide whether the passage supports the answer. Think step by step.
        input_template: "Question: {query}\\nAnswer: {prediction}\\nPassage: {passage_en}"
        target_template: "{rationale} So the answer is {answer}."   # optional (this default)
        answer_prefix: So the answer is                              # optional (this default)
        language_field: query_language                               # optional
        exemplars:
          - fields: {query: ..., prediction: ..., passage_en: ...}
            rationale: ...
            answer: "yes"
        languages:                                                   # optional overrides
          bn: {exemplars: [...], instruction: ...}

Rendering follows the Flan few-shot format: every exemplar is `inputs + x_y_delimiter + targets`,
exemplars are joined by `example_separator`, and the query comes last as `inputs + x_y_delimiter`
so β continues with its reasoning. The instruction opens the prompt, followed by the separator.
Templates use `{field}` placeholders (write `{{` and `}}` for literal braces).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Mapping
from typing import Any

from fiat_t5x.rationales.prompt_files import pick_task, read_prompt_file, task_entries
from fiat_t5x.rationales.store import sha256_of
from fiat_t5x.training.gin_cli import UsageError

DEFAULT_X_Y_DELIMITER = "\n\n"
DEFAULT_EXAMPLE_SEPARATOR = "\n\n\n"
DEFAULT_ANSWER_PREFIX = "So the answer is"
DEFAULT_TARGET_TEMPLATE = "{rationale} {answer_prefix} {answer}."


class PromptError(UsageError):
    """An Iβ file or an example does not fit the prompt spec; the message names what and where."""


@dataclasses.dataclass(frozen=True)
class Exemplar:
    """One hand-written chain-of-thought demonstration."""

    fields: Mapping[str, str]
    rationale: str
    answer: str

    def to_json(self) -> dict[str, Any]:
        return {"fields": dict(self.fields), "rationale": self.rationale, "answer": self.answer}


@dataclasses.dataclass(frozen=True)
class LanguageOverride:
    """Per-language replacement of the instruction and/or the exemplars (None keeps the default)."""

    instruction: str | None = None
    exemplars: tuple[Exemplar, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "instruction": self.instruction,
            "exemplars": None if self.exemplars is None else [e.to_json() for e in self.exemplars],
        }


@dataclasses.dataclass(frozen=True)
class PromptSpec:
    """Iβ for one task. `render(fields)` gives β's prompt for one example; `sha256` identifies it."""

    task: str
    instruction: str
    input_template: str
    exemplars: tuple[Exemplar, ...] = ()
    target_template: str = DEFAULT_TARGET_TEMPLATE
    answer_prefix: str = DEFAULT_ANSWER_PREFIX
    x_y_delimiter: str = DEFAULT_X_Y_DELIMITER
    example_separator: str = DEFAULT_EXAMPLE_SEPARATOR
    language_field: str | None = None
    languages: Mapping[str, LanguageOverride] = dataclasses.field(default_factory=dict)
    source: str = "<memory>"  # where it was read from, for error messages only (not hashed)

    def to_json(self) -> dict[str, Any]:
        """Everything that changes what β sees (so not `source`)."""
        return {
            "task": self.task,
            "instruction": self.instruction,
            "input_template": self.input_template,
            "exemplars": [e.to_json() for e in self.exemplars],
            "target_template": self.target_template,
            "answer_prefix": self.answer_prefix,
            "x_y_delimiter": self.x_y_delimiter,
            "example_separator": self.example_separator,
            "language_field": self.language_field,
            "languages": {k: v.to_json() for k, v in sorted(self.languages.items())},
        }

    @property
    def sha256(self) -> str:
        return sha256_of(self.to_json())

    def language_of(self, fields: Mapping[str, Any]) -> str | None:
        if self.language_field is None:
            return None
        value = fields.get(self.language_field)
        return None if value is None else str(value)

    def _format(self, template: str, values: Mapping[str, Any], what: str) -> str:
        try:
            return template.format_map(values)
        except KeyError as e:
            raise PromptError(
                f"{self.source}: task {self.task!r}: {what} uses the placeholder {{{e.args[0]}}} "
                f"but only {sorted(values)} are available; fix the template or the example fields"
            ) from None
        except (ValueError, IndexError) as e:
            raise PromptError(
                f"{self.source}: task {self.task!r}: {what} is not a valid format string ({e}); "
                "write {{ and }} for literal braces"
            ) from None

    def render_exemplar(self, exemplar: Exemplar) -> str:
        inputs = self._format(self.input_template, exemplar.fields, "input_template (exemplar)")
        values = {
            "rationale": exemplar.rationale,
            "answer": exemplar.answer,
            "answer_prefix": self.answer_prefix,
        }
        targets = self._format(self.target_template, values, "target_template")
        return inputs + self.x_y_delimiter + targets

    def render(self, fields: Mapping[str, Any], language: str | None = None) -> str:
        """β's prompt: instruction, exemplars (per-language when given) and the query's inputs.

        `language` defaults to the example's `language_field`; a language without an override uses
        the task-wide instruction and exemplars.
        """
        language = language if language is not None else self.language_of(fields)
        override = self.languages.get(language) if language is not None else None
        instruction = self.instruction
        exemplars = self.exemplars
        if override is not None:
            instruction = override.instruction if override.instruction is not None else instruction
            exemplars = override.exemplars if override.exemplars is not None else exemplars
        query = self._format(self.input_template, fields, "input_template") + self.x_y_delimiter
        parts = [self.render_exemplar(e) for e in exemplars] + [query]
        body = self.example_separator.join(parts)
        return f"{instruction}{self.example_separator}{body}" if instruction else body

    def extract_answer(self, text: str) -> str | None:
        """The answer after the last `answer_prefix` in β's text (trailing period dropped)."""
        matches = list(re.finditer(re.escape(self.answer_prefix), text))
        if not matches:
            return None
        tail = text[matches[-1].end() :].strip()
        tail = tail.split("\n", 1)[0].strip()
        return tail[:-1].strip() if tail.endswith(".") else tail


def _exemplars(raw: Any, where: str) -> tuple[Exemplar, ...]:
    if not isinstance(raw, list):
        raise PromptError(f"{where}: exemplars must be a list, got {type(raw).__name__}")
    out = []
    for i, item in enumerate(raw):
        here = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise PromptError(f"{here}: an exemplar must be a mapping with fields/rationale/answer")
        missing = {"fields", "rationale", "answer"} - set(item)
        unknown = set(item) - {"fields", "rationale", "answer"}
        if missing or unknown:
            raise PromptError(
                f"{here}: exemplar keys must be fields, rationale, answer (missing {sorted(missing)}, "
                f"unknown {sorted(unknown)})"
            )
        if not isinstance(item["fields"], dict):
            raise PromptError(f"{here}.fields must be a mapping of field name to text")
        fields = {str(k): str(v) for k, v in item["fields"].items()}
        out.append(Exemplar(fields, str(item["rationale"]), str(item["answer"])))
    return tuple(out)


_TASK_KEYS = {
    "instruction",
    "input_template",
    "exemplars",
    "target_template",
    "answer_prefix",
    "x_y_delimiter",
    "example_separator",
    "language_field",
    "languages",
}


def parse_prompts(data: Mapping[str, Any], source: str = "<memory>") -> dict[str, PromptSpec]:
    """Builds every task's PromptSpec from a parsed Iβ file (see the module docstring)."""
    entries = task_entries(
        data,
        source,
        allowed=_TASK_KEYS,
        required_strings=("instruction", "input_template"),
        error=PromptError,
    )
    file_defaults = {
        k: data[k] for k in ("x_y_delimiter", "example_separator", "answer_prefix") if k in data
    }
    specs = {}
    for task, raw, where in entries:
        languages = {}
        for lang, override in (raw.get("languages") or {}).items():
            lwhere = f"{where}.languages.{lang}"
            if not isinstance(override, Mapping) or set(override) - {"instruction", "exemplars"}:
                raise PromptError(f"{lwhere}: may only set 'instruction' and/or 'exemplars'")
            languages[str(lang)] = LanguageOverride(
                override.get("instruction"),
                _exemplars(override["exemplars"], f"{lwhere}.exemplars")
                if "exemplars" in override
                else None,
            )
        options = {**file_defaults, **{k: raw[k] for k in _TASK_KEYS if k in raw}}
        options["exemplars"] = _exemplars(raw.get("exemplars", []), f"{where}.exemplars")
        options["languages"] = languages
        specs[task] = PromptSpec(task=task, source=source, **options)
    return specs


def load_prompts(path: str | pathlib.Path) -> dict[str, PromptSpec]:
    """Reads an Iβ file (.yaml/.yml or .json)."""
    return parse_prompts(read_prompt_file(path, PromptError, "Iβ"), str(path))


def load_prompt(path: str | pathlib.Path, task: str) -> PromptSpec:
    """One task's Iβ; the error lists the tasks the file does define."""
    return pick_task(load_prompts(path), task, path, "Iβ", PromptError)
