"""The provider interface: turn rendered Iβ prompts into β's text, or into recorded failures.

A provider owns its own concurrency strategy (threads for HTTP, batches for a local model), so the
job only hands it `(key, prompt)` pairs and consumes `(key, outcome)` pairs in completion order.
The job (a single thread) is the only writer of the store; providers never touch it.

Providers are gin-bound objects (`BETA = @openai_http.OpenAIProvider()`): constructing one only
records its settings, so a training run can build β to compare identities without a key or a
checkpoint load. `check_settings()` validates the settings (a training run calls it before
comparing identities), `check()` also the environment (the key) and is called by the job
before the store is created; problems there, and endpoint-level refusals while
running (`EndpointError`), are configuration errors that stop the job with one message.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Any

import gin
from fiat_t5x.training.gin_cli import UsageError


class ProviderConfigError(UsageError):
    """β's settings cannot work (bad URL, unset key variable, ...): fix the configuration."""


class EndpointError(UsageError):
    """β's endpoint refuses every request (wrong key, wrong route, unreachable host).

    Not about one example, so the job stops at once, records nothing for the requests it
    concerns, and the corrected rerun continues on the same store.
    """


def check_all_set(where: str, values: Mapping[str, Any], hint: str = "") -> None:
    """Raises ProviderConfigError naming the parameters still bound to %gin.REQUIRED (gin passes
    the REQUIRED marker through when a required macro was never set)."""
    unset = [name for name, value in values.items() if value is gin.REQUIRED]
    if unset:
        how = hint or f"bind them in gin, e.g. --gin.{where}.{unset[0]}=..."
        raise ProviderConfigError(f"{where}: {', '.join(unset)} not set; {how}")


@dataclasses.dataclass(frozen=True)
class Generation:
    """β's answer for one prompt.

    Attributes:
      text: the generated text (the rationale, usually ending with the answer).
      prompt_tokens / completion_tokens: token counts from the server's `usage` field (or our own
        tokenizer for a local model); None when the source does not report them.
      finish_reason: "stop", "length", ... as reported; None when unknown.
      attempts: requests made for this prompt, retries included.
    """

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    attempts: int = 1


@dataclasses.dataclass(frozen=True)
class Failure:
    """No text for one prompt.

    Attributes:
      kind: short machine-readable cause ("http_400", "timeout", "malformed_response", ...).
      message: human-readable detail, already free of secrets.
      permanent: True when retrying cannot help (a 4xx other than 408/429, a prompt too long for a
        local model, an id missing from a replay file). A non-permanent failure means the retry
        budget ran out on transient errors; a resumed job tries those again.
      attempts: requests made for this prompt.
    """

    kind: str
    message: str
    permanent: bool
    attempts: int = 1


Outcome = Generation | Failure


class Provider(abc.ABC):
    """Produces β's text for prompts. Subclasses: OpenAI-compatible HTTP, local T5, replay."""

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """What determines the outputs (kind, model, endpoint, ...), never secrets or hosts.

        The store hashes this together with the decoding settings and Iβ, so two providers with the
        same identity must produce interchangeable rationales.
        """

    @abc.abstractmethod
    def decoding(self) -> dict[str, Any]:
        """Decoding settings (temperature, max tokens, stop sequences, ...) recorded per rationale."""

    def check_settings(self) -> None:  # noqa: B027 - optional hook
        """Raises ProviderConfigError when the settings cannot work; reads no environment and
        loads nothing (a training run calls it before comparing identities)."""

    def check(self) -> None:
        """`check_settings`, plus what running needs (keys, files): called by the job before it
        creates the store, so a bad setting costs no request and no store."""
        self.check_settings()

    def describe(self) -> dict[str, Any]:
        """Plain, secret-free settings for job.json and logs (identity, decoding, connection)."""
        return {"identity": self.identity(), "decoding": self.decoding()}

    def redact(self, text: str) -> str:
        """`text` without this provider's secrets (none by default)."""
        return text

    @abc.abstractmethod
    def generate(self, items: Iterable[tuple[Hashable, str]]) -> Iterator[tuple[Hashable, Outcome]]:
        """Yields one `(key, outcome)` per input item, in completion order (not input order).

        `items` is consumed lazily, so a caller can stream millions of prompts; a provider keeps
        only a bounded number in flight. Closing the returned generator early (KeyboardInterrupt,
        an error in the consumer) cancels work that has not started.
        """

    def generate_batches(
        self, items: Iterable[tuple[Hashable, str]]
    ) -> Iterator[list[tuple[Hashable, Outcome]]]:
        """Like `generate`, but groups outcomes that became available together, so the job can
        store a group with one fsync (group commit) instead of one fsync per example.

        The consumer saves each group before asking for the next, so a provider bounds what a
        crash costs by pulling new items only when resumed: answers received but not yet saved,
        plus requests in flight, never exceed its `max_unsaved` (if it has one).
        May raise EndpointError; groups yielded before it are valid and should be saved.
        """
        for pair in self.generate(items):
            yield [pair]

    def close(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Releases connections or devices; safe to call twice."""

    def __enter__(self) -> Provider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
