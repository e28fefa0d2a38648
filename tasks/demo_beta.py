"""The demo's β: a scripted reasoner (not a language model) whose mistakes are systematic.

It reads a demo question (`fiat_tasks.demo`) the way a good but imperfect large model would
and writes an English chain of thought ending Flan-CoT style:

    She buys 77 more, so we add: 56 + 77 = 133. She says 133, so she is right.
    The question asks if she is wrong, so the answer is no.

How it reasons: it finds the story's two numbers and Ana's claim, picks the operation from the
verb (it knows the verbs of all four languages), computes, compares with the claim, and then
answers the question it believes was asked, from a lexicon of question phrases.

Where it errs, by construction:
- **Systematic, learnable from labels**: its lexicon lacks the Swahili "Je, amekosea?" ("Is
  she wrong?"), and an unknown question falls back to the default reading "is she right?". So
  on every Swahili is-she-wrong question its reasoning is right and its final answer flipped.
  The labelled data reveal this (the input says "amekosea", the answer is the opposite of β's),
  which is what FIAT's τ can learn and β's few-shot answers (ICL) cannot.
- **Slips, not learnable**: on a fixed `SLIP_RATE` share of questions (by a hash of the text)
  its arithmetic is off in the way that flips its judgement of the claim. Nothing in the
  input reveals these without redoing the arithmetic.

`ScriptedDemoBeta` wraps it as a rationale provider whose store identity says `kind: scripted`
(and names this module, the slip rate and the lexicon version), so a store it writes can never
be mistaken for a language model's.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from fiat_t5x.rationales.providers.function import FunctionProvider
from fiat_tasks import demo

SLIP_RATE = 0.05
# Bump when the reasoning changes: it is part of the store identity.
VERSION = 2

_ADD_VERBS = ("buys", "kauft", "achète", "ananunua")
_SUBTRACT_VERBS = ("gives", "verschenkt", "donne", "anatoa")
# The question phrases β understands. Swahili "Je, amekosea?" (is she wrong?) is missing on
# purpose: β reads an unknown question as the default "is she right?".
_KNOWN_QUESTIONS = {
    "Is she right?": demo.RIGHT,
    "Is she wrong?": demo.WRONG,
    "Hat sie recht?": demo.RIGHT,
    "Irrt sie sich?": demo.WRONG,
    "A-t-elle raison ?": demo.RIGHT,
    "A-t-elle tort ?": demo.WRONG,
    "Je, yuko sahihi?": demo.RIGHT,
}
_DEFAULT_READING = demo.RIGHT
_NUMBER = re.compile(r"\d+")


def _stable_fraction(text: str) -> float:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def slips_on(question: str, slip_rate: float = SLIP_RATE) -> bool:
    """Whether β's arithmetic slips on this question (a fixed share of all questions)."""
    return _stable_fraction(question) < slip_rate


def reading_of(question: str) -> str:
    """The question β believes was asked: RIGHT or WRONG (unknown phrases read as RIGHT)."""
    for phrase, asks in _KNOWN_QUESTIONS.items():
        if question.endswith(phrase):
            return asks
    return _DEFAULT_READING


def scripted_rationale(question: str, slip_rate: float = SLIP_RATE) -> str:
    """β's English chain of thought for one demo question (see the module docstring)."""
    numbers = [int(n) for n in _NUMBER.findall(question)]
    if len(numbers) != 3:
        raise ValueError(
            f"not a demo question (expected two numbers and a claimed result): {question!r}"
        )
    a, b, claim = numbers
    subtract = any(verb in question for verb in _SUBTRACT_VERBS)
    if not subtract and not any(verb in question for verb in _ADD_VERBS):
        raise ValueError(f"not a demo question (no known verb): {question!r}")
    result = a - b if subtract else a + b
    if slips_on(question, slip_rate):
        # A slip that flips the judgement: a true claim gets a result off by 1..9, a false
        # claim gets "confirmed".
        result = (
            result + 1 + int(_stable_fraction(question[::-1]) * 9) if result == claim else claim
        )
    judged = demo.RIGHT if result == claim else demo.WRONG
    asks = reading_of(question)
    answer = demo.YES if judged == asks else demo.NO
    if subtract:
        work = f"She gives {b} away, so we subtract: {a} - {b} = {result}."
    else:
        work = f"She buys {b} more, so we add: {a} + {b} = {result}."
    return (
        f"{work} She says {claim}, so she is {judged}. "
        f"The question asks if she is {asks}, so the answer is {answer}."
    )


def beta_answer(question: str, slip_rate: float = SLIP_RATE) -> str:
    """The final answer of β's chain of thought ("yes"/"no")."""
    return scripted_rationale(question, slip_rate).rsplit(" ", 1)[-1].rstrip(".")


_QUESTION_LINE = re.compile(r"^Q: (.*)$", re.MULTILINE)


def beta_from_prompt(prompt: str) -> str:
    """β as a function of its rendered Iβ prompt: the rationale for the last "Q:" line."""
    questions = _QUESTION_LINE.findall(prompt)
    if not questions:
        raise ValueError("the prompt has no 'Q:' line; render it with the demo's Iβ")
    return scripted_rationale(questions[-1])


class ScriptedDemoBeta(FunctionProvider):
    """The scripted β as a rationale provider; its identity says `kind: scripted`."""

    def __init__(self) -> None:
        super().__init__(beta_from_prompt, name="fiat_demo scripted reasoner")

    def identity(self) -> dict[str, Any]:
        return {
            "kind": "scripted",
            "model": self.name,
            "function": self.function,
            "version": VERSION,
            "slip_rate": SLIP_RATE,
            "scripted": True,
        }
