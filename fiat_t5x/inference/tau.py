"""τ at inference: a tuned model from MODEL_DIR, and greedy decoding of plain-text inputs
through the one decode path (`fiat_t5x.models.batch_decoder.BatchDecoder`).

Texts are tokenized as the SeqIO tasks do it (encode, trim to `max_input_length - 1`, append
EOS, pad with 0), so τ sees here exactly the ids it saw in training and evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import seqio

from fiat_t5x.models.batch_decoder import BatchDecoder
from fiat_t5x.models.decoding import EOS_ID, until_eos
from fiat_t5x.models.model import EncoderDecoderModel
from fiat_t5x.training.restore import trained_params

logger = logging.getLogger(__name__)


def load_tuned_params(
    model: EncoderDecoderModel,
    model_dir: str,
    initial_checkpoint_path: str | None,
    seed: int = 0,
    partitioner: Any = None,
) -> dict:
    """The base (INITIAL_CHECKPOINT_PATH, or the seed's random init) with the trained parameters
    of the newest intact checkpoint in `model_dir` put over it; on the partitioner's mesh when
    one is given (`fiat_t5x.training.partitioning.Partitioner`), else host arrays.

    The trainer's checkpoints hold only what it trained (e.g. the LoRA factors), so the base
    must be the one training started from: the same path, or the same seed for a random init.
    Raises FileNotFoundError when `model_dir` has no checkpoint, ValueError when it does not
    fit the gin model.
    """
    params, step = trained_params(
        model,
        model_dir,
        initial_checkpoint_path,
        seed=seed,
        require_checkpoint=True,
        partitioner=partitioner,
    )
    logger.info("τ: step %d of %s over the base", step, model_dir)
    return params


def encode_inputs(texts: Sequence[str], vocabulary: seqio.Vocabulary, length: int) -> np.ndarray:
    """int32 [len(texts), length]: ids trimmed to length-1, then EOS, then 0 padding."""
    out = np.zeros((len(texts), length), np.int32)
    for row, text in enumerate(texts):
        ids = list(vocabulary.encode(text))[: length - 1] + [EOS_ID]
        out[row, : len(ids)] = ids
    return out


def decode_outputs(tokens: np.ndarray, vocabulary: seqio.Vocabulary) -> list[str]:
    """Texts of decoded rows, each cut at its first EOS."""
    return [vocabulary.decode(until_eos(row)[0]) for row in np.asarray(tokens)]


@dataclasses.dataclass
class Tau:
    """A tuned τ ready to answer: model, parameters, vocabulary and lengths.

    The parameters are placed once (on `partitioner`'s mesh, or the default device without
    one) and every batch goes through the one decode path (`BatchDecoder`).
    """

    model: EncoderDecoderModel
    params: Any
    vocabulary: seqio.Vocabulary
    max_input_length: int
    max_decode_length: int
    batch_size: int = 32
    partitioner: Any = None

    def __post_init__(self) -> None:
        self.decoder = BatchDecoder(
            self.model,
            self.params,
            partitioner=self.partitioner,
            batch_size=self.batch_size,
            max_decode_length=self.max_decode_length,
        )
        self.params = self.decoder.params

    def predict(self, inputs: Sequence[str]) -> list[str]:
        """Greedy answers, one per input text."""
        rows = encode_inputs(list(inputs), self.vocabulary, self.max_input_length)
        return decode_outputs(self.decoder.decode(rows), self.vocabulary)
