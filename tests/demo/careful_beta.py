"""Another β for the demo's tests: it reads every question right and never slips.

A test double for "the demo with a real β": the demo sweep takes it through
`--gin_file` like any provider, and its identity (a FunctionProvider: `kind: function`, its
own name) keeps its store apart from the scripted β's.
"""

from __future__ import annotations

import re

from fiat_t5x.rationales.providers.function import FunctionProvider

_SUBTRACT = ("gives", "verschenkt", "donne", "anatoa")
_ASKS_WRONG = ("Is she wrong?", "Irrt sie sich?", "A-t-elle tort ?", "Je, amekosea?")


def careful_rationale(prompt: str) -> str:
    question = re.findall(r"^Q: (.*)$", prompt, re.MULTILINE)[-1]
    a, b, claim = (int(n) for n in re.findall(r"\d+", question))
    result = a - b if any(word in question for word in _SUBTRACT) else a + b
    asks_wrong = question.endswith(_ASKS_WRONG)
    answer = "yes" if (result == claim) != asks_wrong else "no"
    return f"{a} and {b} make {result}; she says {claim}, so the answer is {answer}."


def careful_beta() -> FunctionProvider:
    return FunctionProvider(careful_rationale, name="careful test reader")
