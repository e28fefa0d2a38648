"""Chain-of-thought targets: the reasoning, then a final-answer sentence; and reading it back.

The Flan Collection ends CoT targets with about fifteen different final-answer sentences
("The answer is X.", "So the final answer is X.", "Final answer: X.", ...), each after a space
or a newline. Here a CoT template writes `{chain_of_thought}{answer_sentence}` and the
`{answer_sentence}` placeholder is filled per example with one of `ANSWER_FORMS` (a joiner and
a sentence, drawn uniformly by stable hash), so every template meets every form.

`extract_answer` recovers X from any of these forms and from "answer:" forms (a model's output
or a target): it takes the text after the *last* answer cue, to the end of that line, and strips
one final period so that numbers like "0.5" survive. `normalize_answer` unwraps "(B)" / "[B]"
to "B" so that a target "(B)" and a prediction "B" compare equal, on both sides, as Flan's
postprocessor does.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

from fiat_t5x.data.templates import Template, TemplateError, parse_template

# The classic sentence; `format_cot` and `cot_target` use it (Iβ prompts and the demo do too).
ANSWER_SENTENCE = "So the answer is {answer}."

# Final-answer sentences: every one carries a cue `extract_answer` reads ("answer is",
# "final answer", "answer:"). None starts with a one-word label like "Answer:", which would
# repeat a few-shot prompt's "Answer: " targets prefix on consecutive lines.
ANSWER_SENTENCES: tuple[str, ...] = (
    "So the answer is {answer}.",
    "The answer is {answer}.",
    "Therefore, the answer is {answer}.",
    "Thus, the answer is {answer}.",
    "Hence the answer is {answer}.",
    "So, the answer is {answer}.",
    "So the final answer is {answer}.",
    "The final answer is {answer}.",
    "Therefore, the final answer is {answer}.",
    "Final answer: {answer}.",
    "The final answer: {answer}.",
    "The answer: {answer}.",
    "So, the final answer is {answer}.",
    "That makes the final answer {answer}.",
    "In the end, the answer is {answer}.",
)
# What separates the reasoning from the sentence.
ANSWER_JOINERS: tuple[str, ...] = (" ", "\n")
# Every (joiner, sentence) pair; `answer_form` features index this tuple.
ANSWER_FORMS: tuple[tuple[str, str], ...] = tuple(
    (joiner, sentence) for sentence in ANSWER_SENTENCES for joiner in ANSWER_JOINERS
)
# The placeholder a CoT template's targets end with; filled with joiner + sentence.
ANSWER_SENTENCE_FIELD = "answer_sentence"
COT_TARGET = "{chain_of_thought}{" + ANSWER_SENTENCE_FIELD + "}"

# The last cue wins; "final answer is" and "Final answer:" are one cue each.
_CUE = re.compile(r"final\s+answer\s*(?:is\b|:)?|answer\s*(?:is\b|:)", re.IGNORECASE)
_WRAPPED = re.compile(r"^[(\[]\s*([^()\[\]]+?)\s*[)\]]$")


def answer_sentence(form: int, answer: str) -> str:
    """Joiner + sentence of `ANSWER_FORMS[form]` with the answer filled in."""
    joiner, sentence = ANSWER_FORMS[form]
    return joiner + sentence.format(answer=answer)


def split_sentence(sentence: str) -> tuple[str, str]:
    """("Final answer: ", ".") for "Final answer: {answer}.": the text around `{answer}`."""
    head, _, tail = sentence.partition("{answer}")
    return head, tail


def cot_target(reasoning_field: str = "chain_of_thought", answer_field: str = "answer") -> str:
    """A CoT target pattern with the classic sentence: "{reasoning} So the answer is {answer}."."""
    return (
        "{" + reasoning_field + "} " + ANSWER_SENTENCE.replace("{answer}", "{" + answer_field + "}")
    )


def format_cot(reasoning: str, answer: str) -> str:
    """The classic CoT target text for one example (plain Python)."""
    return f"{reasoning.rstrip()} {ANSWER_SENTENCE.format(answer=answer)}"


def extract_answer(text: str) -> str | None:
    """X from "... the answer is X." / "Final answer: X." / ... (None without an answer cue).

    The answer runs from the last cue to the end of that line; a leading ":" and one trailing
    period are removed. The answer is not normalised (see `normalize_answer`).
    """
    matches = list(_CUE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].split("\n", 1)[0].strip()
    rest = rest.lstrip(":").strip()
    if rest.endswith("."):
        rest = rest[:-1].rstrip()
    return rest or None


def normalize_answer(answer: str) -> str:
    """Strips whitespace and unwraps one pair of brackets: "(B)" -> "B", "[b]" -> "b"."""
    answer = answer.strip()
    wrapped = _WRAPPED.match(answer)
    return wrapped.group(1) if wrapped else answer


def postprocess_cot(output: str | bytes, example=None, is_target: bool = False) -> str:
    """SeqIO postprocessor for CoT tasks, the same on predictions and targets.

    The extracted final answer (or the whole text when it gives none), normalised.
    """
    del example, is_target
    text = output.decode("utf-8") if isinstance(output, bytes) else output
    answer = extract_answer(text)
    return normalize_answer(text if answer is None else answer)


def cot_postprocessor(then: Callable | None = None) -> Callable:
    """`postprocess_cot`, followed by the task's own postprocessor when it has one.

    The task's postprocessor sees the extracted answer, so one that attaches the example's
    metadata (`metrics.postprocess_with_metadata`: id, language) still does, and the task's
    metrics (per-language F1 / exact match) work on its CoT variants.
    """
    if then is None:
        return postprocess_cot
    return functools.partial(_postprocess_cot_then, then=then)


def _postprocess_cot_then(output, example=None, is_target: bool = False, *, then: Callable):
    return then(postprocess_cot(output), example=example, is_target=is_target)


def check_cot_templates(templates: Sequence[Template], answer_field: str) -> None:
    """Each CoT target must let `extract_answer` find the answer.

    Targets end with `{answer_sentence}` (a drawn form) or spell their own final sentence, which
    is checked by rendering it with a sentinel answer.
    """
    sentinel = "ANSWER-SENTINEL-42"
    for index, template in enumerate(templates):
        if template.targets.endswith("{" + ANSWER_SENTENCE_FIELD + "}"):
            continue
        values = {
            name: (sentinel if name == answer_field else "Some reasoning.")
            for _, name in parse_template(template.targets)
            if name is not None
        }
        if (
            answer_field not in values
            or extract_answer(template.targets.format(**values)) != sentinel
        ):
            label = template.name or f"#{index}"
            raise TemplateError(
                f"CoT template {label}: targets {template.targets!r} must end with "
                f"{{{ANSWER_SENTENCE_FIELD}}} or with a final-answer sentence such as "
                f"{ANSWER_SENTENCE.replace('{answer}', '{' + answer_field + '}')!r}, so that the "
                "final answer can be extracted"
            )
