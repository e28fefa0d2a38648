"""The one decode path: parameters placed on the mesh once, then fixed-shape batches through the
model's one jitted, cached decode function (`EncoderDecoderModel.predict_batch`).

Evaluation (SeqIO predict metrics), `fiat-t5x infer`, τ in two-stage inference and the local-T5
β all decode through `BatchDecoder.decode`, so the same inputs give the same tokens whichever
command asks, and a batch costs one call of an already compiled program: rows are padded to
`batch_size` (one shape, one compile), the parameters never leave the devices between batches.

`partitioner` is anything with `param_shardings(params, logical_axes)`, `sharding_for(axes,
shape)`, `replicated_batch_to_global(batch)` and `data_parallel_size`
(`fiat_t5x.training.partitioning.Partitioner`): the parameters are sharded by the model's
logical axes on its mesh (a no-op for arrays that are already placed there, such as the train
state or params restored onto the mesh), and every batch is split over the `data` axis. Without
one, everything sits on the default device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from fiat_t5x.models.decoding import DECODE_METHODS


def to_host(x: jax.Array) -> np.ndarray:
    """A global array as one numpy array on every host (gathered when it spans hosts)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def mesh_context(partitioner: Any = None) -> contextlib.AbstractContextManager:
    """The partitioner's tracing context (its mesh and logical-axis rules, so the network's
    activation sharding constraints apply) when it has one; else nothing."""
    context = getattr(partitioner, "context", None)
    return context() if context is not None else contextlib.nullcontext()


def place_params(model: Any, params: Mapping[str, Any], partitioner: Any = None) -> Any:
    """`params` on the partitioner's mesh, sharded by the model's logical axes (default device
    without a partitioner). Arrays already placed that way are not copied."""
    if partitioner is None:
        return jax.device_put(params)
    shardings = partitioner.param_shardings(params, model.logical_axes())
    return jax.device_put(params, shardings)


class BatchDecoder:
    """Decodes `[n, input_length]` encoder token rows into `[n, max_decode_length]` tokens.

    Args:
      model: an `EncoderDecoderModel` (its `predict_batch` is the compiled decode function).
      params: the full parameter tree (base and trained parameters), host or device arrays.
      partitioner: see the module docstring; None places everything on the default device.
      batch_size: rows per call (a multiple of the data-parallel size).
      max_decode_length: generated tokens per row at most.
      decode_settings: `method`, `num_beams`, `length_penalty_alpha`, `temperature`, `top_k`,
        `top_p`, passed to `predict_batch` as they are (greedy when none).
    """

    def __init__(
        self,
        model: Any,
        params: Mapping[str, Any],
        *,
        max_decode_length: int,
        batch_size: int = 32,
        partitioner: Any = None,
        **decode_settings: Any,
    ) -> None:
        method = decode_settings.get("method", "greedy")
        if method not in DECODE_METHODS:
            raise ValueError(f"decode method {method!r} is not one of {DECODE_METHODS}")
        data_parallel = partitioner.data_parallel_size if partitioner is not None else 1
        if batch_size < 1 or batch_size % data_parallel:
            raise ValueError(
                f"decode batch_size={batch_size} must be a positive multiple of the "
                f"data-parallel size {data_parallel}"
            )
        self.model = model
        self.partitioner = partitioner
        self.params = place_params(model, params, partitioner)
        self.batch_size = int(batch_size)
        self.max_decode_length = int(max_decode_length)
        self.settings = dict(decode_settings)

    def _global_batch(self, rows: np.ndarray) -> dict[str, jax.Array]:
        batch = {"encoder_input_tokens": rows}
        if self.partitioner is None:
            return jax.device_put(batch)
        return self.partitioner.replicated_batch_to_global(batch)

    def decode(self, encoder_tokens: np.ndarray, rng: jax.Array | None = None) -> np.ndarray:
        """int32 [n, max_decode_length] (tokens up to EOS, then 0s) for int32 [n, length] rows,
        every host holding all rows. `rng` (sampling only) is the first batch's key; batch i > 0
        uses `fold_in(rng, i)`."""
        encoder_tokens = np.asarray(encoder_tokens, np.int32)
        n = encoder_tokens.shape[0]
        out = np.zeros((n, self.max_decode_length), np.int32)
        for start in range(0, n, self.batch_size):
            chunk = encoder_tokens[start : start + self.batch_size]
            rows = np.zeros((self.batch_size, encoder_tokens.shape[1]), np.int32)
            rows[: len(chunk)] = chunk
            key = rng
            if rng is not None and start:
                key = jax.random.fold_in(rng, start // self.batch_size)
            with mesh_context(self.partitioner):
                tokens = self.model.predict_batch(
                    self.params,
                    self._global_batch(rows),
                    max_decode_length=self.max_decode_length,
                    rng=key,
                    **self.settings,
                )
            out[start : start + len(chunk)] = to_host(tokens)[: len(chunk)]
        return out
