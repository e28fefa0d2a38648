"""Input inversion: swap what a task gives and what it asks (Flan Collection).

An `Inversion` declares which fields the inputs may show (`given`) and which the targets must
produce (`asked`), with templates for it. Registration checks each template against that
declaration, so an inverted task cannot leak the asked fields into its inputs. The `_inverted`
variant of a task renders every example with one template drawn (stable hash) from the union of
its inversions; the feature `template_index` indexes `flatten_inversions(...)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

from fiat_t5x.data.templates import Template, TemplateError, placeholders, validate_templates


@dataclasses.dataclass(frozen=True)
class Inversion:
    """A declarative inversion.

    Attributes:
      name: e.g. "answer->question".
      given: fields the inputs may name.
      asked: fields the targets name (each must appear in every template's targets).
      templates: the `(inputs, targets)` patterns.
    """

    name: str
    given: tuple[str, ...]
    asked: tuple[str, ...]
    templates: tuple[Template, ...]


def validate_inversions(
    inversions: Sequence[Inversion], fields: Collection[str], *, task: str
) -> None:
    """Checks fields exist, inputs only use `given`, targets use exactly `asked`."""
    for inversion in inversions:
        for name in inversion.given + inversion.asked:
            if name not in fields:
                raise TemplateError(
                    f"task {task!r}: inversion {inversion.name!r} names field {name!r}, which the "
                    f"task does not declare ({', '.join(sorted(fields))})"
                )
        overlap = set(inversion.given) & set(inversion.asked)
        if overlap:
            raise TemplateError(
                f"task {task!r}: inversion {inversion.name!r} both gives and asks {sorted(overlap)}"
            )
        validate_templates(
            inversion.templates,
            fields,
            task=task,
            kind=f"inversion {inversion.name!r}",
            inputs_fields=inversion.given,
            targets_fields=inversion.asked,
        )
        for index, template in enumerate(inversion.templates):
            missing = [a for a in inversion.asked if a not in placeholders(template.targets)]
            if missing:
                raise TemplateError(
                    f"task {task!r}: inversion {inversion.name!r} template "
                    f"{template.name or '#' + str(index)} does not produce asked field(s) {missing} "
                    "in its targets"
                )


def flatten_inversions(inversions: Sequence[Inversion]) -> tuple[tuple[Inversion, Template], ...]:
    """Every (inversion, template) pair in order; `template_index` of `_inverted` points here."""
    return tuple((inv, t) for inv in inversions for t in inv.templates)


def cot_inversions(
    question: str = "question", answer: str = "answer", reasoning: str = "chain_of_thought"
) -> tuple[Inversion, ...]:
    """The four CoT inversions of the Flan Collection, three templates each.

    reasoning+answer -> question, question+answer -> reasoning, reasoning -> question+answer,
    answer -> question+reasoning. The question is shown as the data gives it (with its own list
    of choices, for multiple-choice datasets), so an inverted target keeps the choices.
    """
    q, a, r = "{" + question + "}", "{" + answer + "}", "{" + reasoning + "}"
    return (
        Inversion(
            "answer->question",
            given=(answer, reasoning),
            asked=(question,),
            templates=(
                Template(
                    f"Come up with a question that this reasoning answers with {a}.\n\n{r}", q
                ),
                Template(f"Reasoning: {r}\nAnswer: {a}\nWhat was the question?", q),
                Template(
                    f"Here is a line of reasoning and where it ends up.\n{r}\nIt concludes: {a}\n"
                    "Write the question it was answering.",
                    f"Question: {q}",
                ),
            ),
        ),
        Inversion(
            "question+answer->reasoning",
            given=(question, answer),
            asked=(reasoning,),
            templates=(
                Template(f"Question: {q}\nAnswer: {a}\nExplain how we arrive at this answer:", r),
                Template(f"{q}\nThe answer is {a}. Give the step-by-step reasoning.", r),
                Template(f"Why is {a} the right answer here?\n\n{q}", f"Here is why: {r}"),
            ),
        ),
        Inversion(
            "reasoning->question+answer",
            given=(reasoning,),
            asked=(question, answer),
            templates=(
                Template(
                    f"{r}\nWhat question and answer does this reasoning justify?",
                    f"Question: {q}\nAnswer: {a}",
                ),
                Template(
                    f"Reverse engineer the question and answer from this reasoning: {r}",
                    f"Q: {q}\nA: {a}",
                ),
                Template(
                    f"Invent a question that the explanation below settles, and give its answer."
                    f"\n{r}",
                    f"{q}\nThe answer: {a}",
                ),
            ),
        ),
        Inversion(
            "answer->question+reasoning",
            given=(answer,),
            asked=(question, reasoning),
            templates=(
                Template(
                    f"Write a question whose answer is {a}, with the reasoning that leads there.",
                    f"Question: {q}\nReasoning: {r}",
                ),
                Template(
                    f"The answer is {a}. Make up a matching question and explain the steps.",
                    f"{q}\n{r}",
                ),
                Template(
                    f"Answer: {a}\nWhat question, and what line of thought, could lead to it?",
                    f"Q: {q}\nThought process: {r}",
                ),
            ),
        ),
    )
