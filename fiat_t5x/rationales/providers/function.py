"""A β that is a Python function of the rendered prompt: scripted reasoners, test doubles.

It is honest about what it is: its identity says `kind: function` and names the function, so
a store written by it can never be mistaken for (or mixed with) a language model's rationales.
The bundled demo uses it to run a scripted reasoner through the same generation job and store
as a real β (`fiat_tasks.fiat_demo_variants.demo_beta`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any

import gin
from fiat_t5x.rationales.providers.base import Failure, Generation, Outcome, Provider


@gin.configurable
class FunctionProvider(Provider):
    """Calls `fn(prompt) -> text` for every prompt, in order, on the calling thread.

    Gin: `BETA = @function.FunctionProvider()` with `function.FunctionProvider.fn = @my_beta`
    (a function reference, not a call) and an optional `.name`.

    Args:
      fn: the scripted β. A ValueError from it is recorded as a permanent failure of that
        example (the function cannot answer that prompt); other exceptions propagate.
      name: recorded as β's model name; defaults to the function's qualified name.
    """

    def __init__(self, fn: Callable[[str], str], name: str | None = None) -> None:
        self.fn = fn
        self.function = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        self.name = name or self.function

    def identity(self) -> dict[str, Any]:
        return {"kind": "function", "model": self.name, "function": self.function, "scripted": True}

    def decoding(self) -> dict[str, Any]:
        return {"deterministic": True}

    def generate(self, items: Iterable[tuple[Hashable, str]]) -> Iterator[tuple[Hashable, Outcome]]:
        for key, prompt in items:
            try:
                text = self.fn(prompt)
            except ValueError as e:
                yield key, Failure("function_error", f"{self.function}: {e}", permanent=True)
                continue
            if not isinstance(text, str):
                raise TypeError(f"{self.function} returned {type(text).__name__}, expected str")
            yield key, Generation(text=text, finish_reason="stop")
