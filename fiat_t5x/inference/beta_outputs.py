"""β's text for a list of examples: read from a rationale store, generating the missing ones.

Both FIAT's inference (Algorithm 2, stage 1) and the few-shot CoT ICL baseline need β's output
for every example; the store is the cache, so β is asked at most once per example, through
the same crash-safe generation job as training-time rationales.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fiat_t5x.rationales.generate import Example, generate_rationales, identity_for
from fiat_t5x.rationales.injection import MissingRationaleError
from fiat_t5x.rationales.prompts import PromptSpec
from fiat_t5x.rationales.providers.base import Provider
from fiat_t5x.rationales.store import RationaleStore

logger = logging.getLogger(__name__)


def beta_texts(
    examples: Sequence[Example],
    *,
    store_dir: str,
    task: str,
    split: str,
    prompt: PromptSpec | None = None,
    provider: Provider | None = None,
    progress: bool = False,
) -> dict[str, str]:
    """example id -> β's text for every example.

    Ids without a stored rationale are generated with `provider` and `prompt` (and stored) when
    both are given; otherwise, or when β fails on some, `MissingRationaleError` names them.
    """
    stored: dict[str, str] = {}
    if RationaleStore.is_store(store_dir):  # local or a bucket
        stored = RationaleStore.open_readonly(store_dir).texts(task, split)
    missing = [e for e in examples if e.example_id not in stored]
    if missing and provider is not None and prompt is not None:
        logger.info(
            "asking β for %d of %d examples of %s/%s", len(missing), len(examples), task, split
        )
        with RationaleStore.open_for_writing(store_dir, identity_for(provider, prompt)) as store:
            generate_rationales(
                missing,
                task=task,
                split=split,
                prompt=prompt,
                provider=provider,
                store=store,
                progress=progress,
            )
            stored = store.texts(task, split)
        missing = [e for e in examples if e.example_id not in stored]
    if missing:
        ids = [e.example_id for e in missing]
        raise MissingRationaleError(
            f"{task}/{split}: {len(ids)} of {len(examples)} examples have no β output in the store "
            f"{store_dir} (ids: {', '.join(ids[:10])}{', ...' if len(ids) > 10 else ''}); generate "
            "them with `fiat-t5x rationales generate`, or give a β provider and Iβ to generate them "
            "on the fly",
            ids,
        )
    return {e.example_id: stored[e.example_id] for e in examples}
