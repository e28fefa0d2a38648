"""β as one of our own T5 models (e.g. Flan-T5-XXL on the same accelerators), decoded in batches.

Prompts are tokenized with the given vocabulary, EOS-terminated and padded to a fixed
`[batch_size, max_input_length]`, so every batch reuses one compiled decode; the last batch is
filled with padding rows that are thrown away. A prompt longer than `max_input_length` is a
permanent failure (truncating a few-shot prompt would silently drop the query at its end).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Hashable, Iterable, Iterator
from typing import Any, Protocol

import numpy as np

from fiat_t5x.models.batch_decoder import BatchDecoder
from fiat_t5x.models.decoding import EOS_ID, PAD_ID, until_eos
from fiat_t5x.rationales.providers.base import Failure, Generation, Outcome, Provider


class Vocabulary(Protocol):
    """What we need from a tokenizer (seqio.Vocabulary satisfies it)."""

    def encode(self, s: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class LocalDecoding:
    """Attributes:
    batch_size: prompts per decode call (fixed shape: one compile).
    max_input_length: prompt tokens at most, EOS included.
    max_decode_length: generated tokens at most.
    method / num_beams / temperature / top_k / top_p: passed to `predict_batch`;
      "greedy" matches the paper's temperature 0.
    seed: PRNG seed for sampling.
    """

    batch_size: int = 8
    max_input_length: int = 512
    max_decode_length: int = 128
    method: str = "greedy"
    num_beams: int = 4
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        out = {
            "method": self.method,
            "max_input_length": self.max_input_length,
            "max_decode_length": self.max_decode_length,
        }
        if self.method == "beam":
            out["num_beams"] = self.num_beams
        if self.method == "sample":
            out.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
            out["seed"] = self.seed
        return out


class LocalT5Provider(Provider):
    """Decodes through the one decode path (`fiat_t5x.models.batch_decoder.BatchDecoder`).

    Args:
      model: a `fiat_t5x.models.model.EncoderDecoderModel`.
      params: its parameters (LoRA already merged, or a plain checkpoint).
      vocabulary: encodes prompts and decodes outputs (ids without EOS).
      model_name: how the store names this β, e.g. the checkpoint path and step; it is part of the
        store's identity, so use a name that changes when the weights do.
      decoding: batch shape and decoding method.
      partitioner: the mesh to decode on (`fiat_t5x.training.partitioning.Partitioner`, e.g.
        training's); None: the default device.
    """

    def __init__(
        self,
        model: Any,
        params: Any,
        vocabulary: Vocabulary,
        *,
        model_name: str,
        decoding: LocalDecoding = LocalDecoding(),
        partitioner: Any = None,
    ) -> None:
        if decoding.batch_size < 1 or decoding.max_input_length < 2:
            raise ValueError(
                f"LocalDecoding needs batch_size >= 1, max_input_length >= 2: {decoding}"
            )
        self.model = model
        self.params = params
        self.vocabulary = vocabulary
        self.model_name = model_name
        self.settings = decoding
        self.partitioner = partitioner
        self._decoder: BatchDecoder | None = None
        self._rng = None

    def identity(self) -> dict[str, Any]:
        config = dataclasses.asdict(self.model.config)
        return {"kind": "local_t5", "model": self.model_name, "config": config}

    def decoding(self) -> dict[str, Any]:
        return self.settings.to_json()

    def _decode_batch(self, token_lists: list[list[int]]) -> np.ndarray:
        """[len(token_lists), max_decode_length] int32 from up to batch_size EOS-terminated
        prompts (padded to one shape by the decoder: one compile)."""
        import jax

        s = self.settings
        if self._decoder is None:  # places the parameters once
            self._decoder = BatchDecoder(
                self.model,
                self.params,
                partitioner=self.partitioner,
                batch_size=s.batch_size,
                max_decode_length=s.max_decode_length,
                method=s.method,
                num_beams=s.num_beams,
                temperature=s.temperature,
                top_k=s.top_k,
                top_p=s.top_p,
            )
            self.params = self._decoder.params
        tokens = np.zeros((len(token_lists), s.max_input_length), np.int32)
        for row, ids in enumerate(token_lists):
            tokens[row, : len(ids)] = ids
        if self._rng is None:
            self._rng = jax.random.PRNGKey(s.seed)
        self._rng, rng = jax.random.split(self._rng)
        return self._decoder.decode(tokens, rng=rng if s.method == "sample" else None)

    def generate(self, items: Iterable[tuple[Hashable, str]]) -> Iterator[tuple[Hashable, Outcome]]:
        for group in self.generate_batches(items):
            yield from group

    def generate_batches(
        self, items: Iterable[tuple[Hashable, str]]
    ) -> Iterator[list[tuple[Hashable, Outcome]]]:
        s = self.settings
        items = iter(items)
        while chunk := list(itertools.islice(items, s.batch_size)):
            group: list[tuple[Hashable, Outcome]] = []
            batch: list[tuple[Hashable, list[int]]] = []
            for key, prompt in chunk:
                ids = list(self.vocabulary.encode(prompt)) + [EOS_ID]
                if len(ids) > s.max_input_length:
                    message = (
                        f"prompt has {len(ids)} tokens (EOS included), more than "
                        f"max_input_length={s.max_input_length}; raise it or shorten Iβ"
                    )
                    group.append((key, Failure("prompt_too_long", message, permanent=True)))
                else:
                    batch.append((key, ids))
            if not batch:
                yield group
                continue
            outputs = self._decode_batch([ids for _, ids in batch])
            for (key, ids), row in zip(batch, outputs, strict=True):
                completion, ended = until_eos(row)
                text = self.vocabulary.decode([t for t in completion if t != PAD_ID])
                group.append(
                    (
                        key,
                        Generation(
                            text=text,
                            prompt_tokens=len(ids),
                            completion_tokens=len(completion),
                            finish_reason="stop" if ended else "length",
                        ),
                    )
                )
            yield group
