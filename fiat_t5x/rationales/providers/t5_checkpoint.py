"""β as a T5X checkpoint on disk, for gin: `BETA = @t5_checkpoint.T5CheckpointProvider()`.

Building the object records settings only; the checkpoint is read when β is first asked
(a training run builds β to compare identities and must not load an XXL model for that). It
then decodes with `LocalT5Provider` (batched, fixed shapes, one compile).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Hashable, Iterable, Iterator
from typing import Any

import gin
from fiat_t5x.rationales.providers.base import (
    Outcome,
    Provider,
    ProviderConfigError,
    check_all_set,
)
from fiat_t5x.rationales.providers.local_t5 import LocalDecoding, LocalT5Provider


@gin.configurable
class T5CheckpointProvider(Provider):
    """Args:
    checkpoint: a T5X checkpoint directory (classic or Orbax; a model dir takes its newest).
    vocabulary: "byte" or a SentencePiece model file.
    model_name: β's name in the store identity; it must change when the weights do (e.g.
      "flan-t5-xxl@1184000"): the checkpoint's path is not part of the identity, so a store
      can move between machines.
    batch_size / max_input_length / max_decode_length / method / num_beams / temperature /
      top_k / top_p / seed: `LocalDecoding`.
    """

    def __init__(
        self,
        checkpoint: str,
        *,
        vocabulary: str,
        model_name: str,
        batch_size: int = 8,
        max_input_length: int = 1024,
        max_decode_length: int = 256,
        method: str = "greedy",
        num_beams: int = 4,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.checkpoint = checkpoint
        self.vocabulary = vocabulary
        self.model_name = model_name
        self.settings = LocalDecoding(
            batch_size=batch_size,
            max_input_length=max_input_length,
            max_decode_length=max_decode_length,
            method=method,
            num_beams=num_beams,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )

    def identity(self) -> dict[str, Any]:
        return {
            "kind": "local_t5_checkpoint",
            "model": self.model_name,
            "vocabulary": self.vocabulary,
        }

    def decoding(self) -> dict[str, Any]:
        return self.settings.to_json()

    def describe(self) -> dict[str, Any]:
        settings = {"checkpoint": self.checkpoint, **dataclasses.asdict(self.settings)}
        return {**super().describe(), "settings": settings}

    def check_settings(self) -> None:
        where = "t5_checkpoint.T5CheckpointProvider"
        values = {"checkpoint": self.checkpoint, "vocabulary": self.vocabulary}
        check_all_set(
            where,
            {**values, "model_name": self.model_name},
            "set BETA_CHECKPOINT, BETA_VOCABULARY and BETA_MODEL (gin/fiat/beta/local_t5.gin)",
        )
        if self.settings.batch_size < 1 or self.settings.max_input_length < 2:
            raise ProviderConfigError(f"{where}: batch_size must be >= 1 and max_input_length >= 2")

    def check(self) -> None:
        self.check_settings()
        where = "t5_checkpoint.T5CheckpointProvider"
        if not os.path.isdir(self.checkpoint):
            raise ProviderConfigError(f"{where}.checkpoint: no directory {self.checkpoint!r}")
        if self.vocabulary != "byte" and not os.path.isfile(self.vocabulary):
            raise ProviderConfigError(
                f"{where}.vocabulary must be 'byte' or a SentencePiece model file, got "
                f"{self.vocabulary!r}"
            )

    @functools.cached_property
    def loaded(self) -> LocalT5Provider:
        """The checkpoint as a LocalT5Provider (read on first access)."""
        import seqio

        from fiat_t5x.models.checkpoints.layout import infer_config
        from fiat_t5x.models.checkpoints.t5x import load_t5x_params
        from fiat_t5x.models.model import EncoderDecoderModel

        self.check()
        params = load_t5x_params(self.checkpoint)
        vocab = (
            seqio.ByteVocabulary()
            if self.vocabulary == "byte"
            else seqio.SentencePieceVocabulary(self.vocabulary)
        )
        model = EncoderDecoderModel(infer_config(params))
        return LocalT5Provider(
            model, params, vocab, model_name=self.model_name, decoding=self.settings
        )

    def generate(self, items: Iterable[tuple[Hashable, str]]) -> Iterator[tuple[Hashable, Outcome]]:
        return self.loaded.generate(items)

    def generate_batches(
        self, items: Iterable[tuple[Hashable, str]]
    ) -> Iterator[list[tuple[Hashable, Outcome]]]:
        return self.loaded.generate_batches(items)
