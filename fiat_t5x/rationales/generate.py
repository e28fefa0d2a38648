"""The generation job: β's rationale for every example of a task split, resumable and concurrent.

    with RationaleStore.open_for_writing(store_dir, identity_for(provider, prompt)) as store:
        summary = generate_rationales(examples, task=..., split=..., prompt=prompt,
                                      provider=provider, store=store)

Examples already settled in the store (a rationale, or a permanent failure unless
`retry_failed`) are skipped, so rerunning a killed job asks β only for what is missing. This
thread is the store's only writer: outcomes are appended (and fsynced) as they arrive, in
completion order, a group of simultaneous ones per fsync, and the provider sends new requests
only after the previous group is on disk. A crash therefore loses at most the provider's
`max_unsaved` requests (in flight, or answered and not yet saved: 1.5 × concurrency by default for HTTP),
which are asked again on resume; none is stored twice.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from fiat_t5x.rationales.prompts import PromptError, PromptSpec
from fiat_t5x.rationales.providers.base import Failure, Generation, Provider
from fiat_t5x.rationales.store import (
    FailureRecord,
    RationaleRecord,
    RationaleStore,
    StoreIdentity,
    sha256_of,
    utc_now,
)
from fiat_t5x.training.gin_cli import UsageError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Example:
    """One input example: its stable id and its raw fields (what Iβ's templates read)."""

    example_id: str
    fields: Mapping[str, Any]


@dataclasses.dataclass
class JobSummary:
    """What a job did; `failed_*` count outcomes of this run, `already_*` the store before it."""

    task: str
    split: str
    total: int
    already_done: int = 0
    already_failed: int = 0
    generated: int = 0
    failed_permanent: int = 0
    failed_transient: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0

    @property
    def remaining(self) -> int:
        """Examples still without a rationale or a permanent failure."""
        return (
            self.total
            - self.already_done
            - self.already_failed
            - self.generated
            - self.failed_permanent
        )

    def describe(self) -> str:
        rate = self.generated / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (
            f"{self.task}/{self.split}: {self.total} examples; {self.already_done} already had "
            f"rationales, {self.already_failed} permanent failures kept; this run generated "
            f"{self.generated} ({rate:.1f}/s over {self.elapsed_s:.1f}s), "
            f"{self.failed_permanent} failed permanently, {self.failed_transient} ran out of "
            f"retries (rerun to retry them); tokens: {self.prompt_tokens} prompt, "
            f"{self.completion_tokens} completion; {self.remaining} remaining"
        )


def identity_for(provider: Provider, prompt: PromptSpec) -> StoreIdentity:
    """The store identity of rationales that `provider` writes for prompts rendered from `prompt`."""
    return StoreIdentity(provider.identity(), provider.decoding(), prompt.sha256)


def check_unique_ids(examples: Sequence[Example], where: str) -> None:
    seen: set[str] = set()
    duplicates = []
    for example in examples:
        if example.example_id in seen:
            duplicates.append(example.example_id)
        seen.add(example.example_id)
    if duplicates:
        raise UsageError(
            f"{where}: {len(duplicates)} duplicate example ids (first: {duplicates[:5]}); the store "
            "is keyed by id, so every example needs its own"
        )


def check_renders(prompt: PromptSpec, examples: Iterable[Example], task: str, split: str) -> None:
    """Renders Iβ for every example; the first one that cannot be rendered raises PromptError
    naming its id (so a typo in Iβ stops a job before any request and before any store)."""
    for example in examples:
        try:
            prompt.render(example.fields)
        except PromptError as e:
            raise PromptError(f"example id {example.example_id!r} of {task}/{split}: {e}") from None


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="ex",
        desc="rationales",
        disable=not enabled,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def generate_rationales(
    examples: Iterable[Example],
    *,
    task: str,
    split: str,
    prompt: PromptSpec,
    provider: Provider,
    store: RationaleStore,
    retry_failed: bool = False,
    progress: bool = True,
) -> JobSummary:
    """Asks β for every unsettled example and appends each outcome to `store`.

    Args:
      examples: the task split's examples (ids must be unique).
      task / split: the store key's first two parts.
      prompt: Iβ for this task; its sha256 must be the one in the store's identity.
      provider: β.
      store: opened for writing.
      retry_failed: also retry examples whose last outcome was a permanent failure.
      progress: show a tqdm bar (done/total, rate, ETA, failures, tokens) on stderr.
    """
    examples = list(examples)
    check_unique_ids(examples, f"{task}/{split}")
    expected = identity_for(provider, prompt)
    if expected.sha256 != store.identity.sha256:
        raise ValueError(
            f"store {store.directory} has identity {store.identity.sha256[:12]} but this provider "
            f"and Iβ give {expected.sha256[:12]} (differs in "
            f"{', '.join(store.identity.differences(expected))}); open the store with identity_for()"
        )
    summary = JobSummary(task=task, split=split, total=len(examples))
    pending: list[Example] = []
    for example in examples:
        if store.rationale(task, split, example.example_id) is not None:
            summary.already_done += 1
        elif store.is_settled(task, split, example.example_id, retry_failed=retry_failed):
            summary.already_failed += 1
        else:
            pending.append(example)
    check_renders(prompt, pending, task, split)  # a template error stops it before any request
    logger.info(
        "%s/%s: %d examples, %d settled, %d to generate with %s",
        task,
        split,
        len(examples),
        len(examples) - len(pending),
        len(pending),
        provider.identity().get("model"),
    )
    identity = provider.identity()
    decoding = provider.decoding()
    kind, model = str(identity.get("kind")), str(identity.get("model"))
    prompt_hashes: dict[str, str] = {}

    def items() -> Iterator[tuple[str, str]]:
        for example in pending:
            text = prompt.render(example.fields)
            prompt_hashes[example.example_id] = sha256_of(text)
            yield example.example_id, text

    def _record(example_id: str, outcome: Generation | Failure) -> RationaleRecord | FailureRecord:
        prompt_sha = prompt_hashes.pop(example_id)
        if isinstance(outcome, Generation):
            summary.generated += 1
            summary.prompt_tokens += outcome.prompt_tokens or 0
            summary.completion_tokens += outcome.completion_tokens or 0
            return RationaleRecord(
                task=task,
                split=split,
                example_id=example_id,
                text=outcome.text,
                provider=kind,
                model=model,
                ibeta_sha256=prompt.sha256,
                prompt_sha256=prompt_sha,
                decoding=decoding,
                time=utc_now(),
                prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
                finish_reason=outcome.finish_reason,
                attempts=outcome.attempts,
            )
        if outcome.permanent:
            summary.failed_permanent += 1
        else:
            summary.failed_transient += 1
        logger.warning(
            "%s/%s id %s: no rationale (%s%s): %s",
            task,
            split,
            example_id,
            outcome.kind,
            "" if outcome.permanent else ", will retry on resume",
            outcome.message[:300],
        )
        return FailureRecord(
            task=task,
            split=split,
            example_id=example_id,
            kind=outcome.kind,
            message=outcome.message,
            permanent=outcome.permanent,
            provider=kind,
            model=model,
            ibeta_sha256=prompt.sha256,
            time=utc_now(),
            attempts=outcome.attempts,
        )

    start = time.monotonic()
    bar = _progress_bar(len(examples), len(examples) - len(pending), progress)
    groups = provider.generate_batches(items())
    try:
        for group in groups:
            store.append([_record(example_id, outcome) for example_id, outcome in group])
            bar.set_postfix(
                failed=summary.failed_permanent + summary.failed_transient,
                tokens=summary.prompt_tokens + summary.completion_tokens,
                refresh=False,
            )
            bar.update(len(group))
    finally:
        groups.close()
        bar.close()
        summary.elapsed_s = time.monotonic() - start
    return summary
