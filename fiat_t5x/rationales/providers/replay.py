"""Rationales produced elsewhere (another cluster, a colleague's run, a hosted batch API), replayed.

The file is JSON lines, one object per example: `{"id": "...", "rationale": "..."}` (field names
configurable), optionally with `prompt_tokens`/`completion_tokens`. An example whose id is not in
the file gets a permanent failure, so a store built by replay says exactly what is missing.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import pathlib
from collections.abc import Hashable, Iterable, Iterator
from typing import Any

import gin
from fiat_t5x.data.sources import read_jsonl
from fiat_t5x.rationales.providers.base import (
    Failure,
    Generation,
    Outcome,
    Provider,
    ProviderConfigError,
    check_all_set,
)


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    """Attributes:
    path: the JSONL file.
    model: who wrote these rationales (e.g. "palm2-l via batch API"), recorded as β's model.
    id_field / text_field: field names of the example id and the rationale text.
    """

    path: str
    model: str = "replay"
    id_field: str = "id"
    text_field: str = "rationale"


@gin.configurable
class ReplayProvider(Provider):
    """Looks rationales up by example id; the prompt is ignored (β already answered it).

    Gin: `BETA = @replay.ReplayProvider()` with `replay.ReplayProvider.path = '...'` and
    `.model = '...'`. The file is read on first use, not when the object is built.
    """

    def __init__(
        self,
        path: str,
        *,
        model: str = "replay",
        id_field: str = "id",
        text_field: str = "rationale",
    ) -> None:
        self.config = ReplayConfig(path, model=model, id_field=id_field, text_field=text_field)

    @functools.cached_property
    def _by_id(self) -> dict[str, dict[str, Any]]:
        cfg = self.config
        try:
            records = read_jsonl(
                cfg.path, required=(cfg.id_field, cfg.text_field), non_empty=(cfg.id_field,)
            )
        except (OSError, ValueError) as e:
            raise ProviderConfigError(f"replay.ReplayProvider.path: {e}") from None
        by_id: dict[str, dict[str, Any]] = {}
        for record in records:
            example_id = str(record[cfg.id_field])
            if example_id in by_id:
                raise ProviderConfigError(
                    f"{record.location}: example id {example_id!r} appears twice in the replay "
                    "file; keep one rationale per id"
                )
            by_id[example_id] = dict(record.fields)
        return by_id

    @functools.cached_property
    def _file_sha256(self) -> str:
        try:
            return hashlib.sha256(pathlib.Path(self.config.path).read_bytes()).hexdigest()
        except OSError as e:
            raise ProviderConfigError(f"replay.ReplayProvider.path: {e}") from None

    def identity(self) -> dict[str, Any]:
        return {"kind": "replay", "model": self.config.model, "file_sha256": self._file_sha256}

    def decoding(self) -> dict[str, Any]:
        return {}

    def check_settings(self) -> None:
        check_all_set(
            "replay.ReplayProvider",
            vars(self.config),
            "set BETA_REPLAY_FILE and BETA_MODEL (gin/fiat/beta/replay.gin)",
        )

    def check(self) -> None:
        self.check_settings()
        self._by_id  # noqa: B018 - reading the file is the check

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "settings": dataclasses.asdict(self.config)}

    def generate_batches(
        self, items: Iterable[tuple[Hashable, str]]
    ) -> Iterator[list[tuple[Hashable, Outcome]]]:
        """Groups of 256: a lookup is instant, so one fsync per example would dominate."""
        items = iter(items)
        while group := list(self.generate(itertools.islice(items, 256))):
            yield group

    def generate(self, items: Iterable[tuple[Hashable, str]]) -> Iterator[tuple[Hashable, Outcome]]:
        cfg = self.config
        for key, _prompt in items:
            fields = self._by_id.get(str(key))
            if fields is None:
                message = f"id {key!r} is not in the replay file {cfg.path}"
                yield key, Failure("missing_in_replay", message, permanent=True)
                continue
            yield (
                key,
                Generation(
                    text=str(fields[cfg.text_field]),
                    prompt_tokens=fields.get("prompt_tokens"),
                    completion_tokens=fields.get("completion_tokens"),
                ),
            )
