"""Autoregressive decoding over a key/value cache: greedy, temperature sampling, beam search.

The functions are model-agnostic: they drive a `step_fn(tokens [n], cache) -> (logits [n, vocab],
cache)` inside `jax.lax.while_loop`, so a whole decode is one compiled program with a static
`max_decode_length`, and the loop exits early once every row has emitted EOS. Outputs are int32
[batch, max_decode_length]: the tokens up to and including EOS, then 0s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
StepFn = Callable[[Array, Any], tuple[Array, Any]]
NEG_INF = -1.0e10
# The ids every T5-family vocabulary (SentencePiece and byte-level) reserves: the one
# definition that encoders, decoders and their callers use.
PAD_ID = 0
EOS_ID = 1
DECODE_METHODS = ("greedy", "sample", "beam")
# Cache leaves that hold one row per decoded sequence and follow beam reordering.
_SELF_CACHE = ("cached_key", "cached_value")
_BATCHED_CACHE = _SELF_CACHE + ("cross_key", "cross_value")


def _leaf_name(path: tuple) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))


def repeat_cache_for_beams(cache: Any, num_beams: int) -> Any:
    """Each batch row's caches repeated `num_beams` times: [b, ...] -> [b * num_beams, ...]."""

    def repeat(path: tuple, leaf: Array) -> Array:
        if _leaf_name(path) in _BATCHED_CACHE:
            return jnp.repeat(leaf, num_beams, axis=0)
        return leaf

    return jax.tree_util.tree_map_with_path(repeat, cache)


def gather_beams_in_cache(cache: Any, flat_indices: Array) -> Any:
    """Reorders the self-attention caches by source row [b * beams]. Cross-attention keys are equal
    across the beams of one example, so they stay where they are."""

    def gather(path: tuple, leaf: Array) -> Array:
        if _leaf_name(path) in _SELF_CACHE:
            return jnp.take(leaf, flat_indices, axis=0)
        return leaf

    return jax.tree_util.tree_map_with_path(gather, cache)


def filter_logits(logits: Array, *, top_k: int = 0, top_p: float = 1.0) -> Array:
    """Masks (to -1e10) all but the `top_k` largest logits and the smallest nucleus of mass `top_p`.

    The nucleus always keeps the most likely token. logits [n, vocab].
    """
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if top_p < 1.0:
        sorted_logits = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < top_p
        cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, NEG_INF, logits)
    return logits


def sample(
    step_fn: StepFn,
    cache: Any,
    *,
    batch_size: int,
    max_decode_length: int,
    rng: Array,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int = EOS_ID,
) -> Array:
    """Greedy (temperature 0) or temperature sampling with optional top-k / top-p filtering."""

    def cond(state: tuple) -> Array:
        i, _, _, ended, _, _ = state
        return (i < max_decode_length) & ~jnp.all(ended)

    def body(state: tuple) -> tuple:
        i, previous, sequences, ended, step_cache, key = state
        logits, step_cache = step_fn(previous, step_cache)
        key, subkey = jax.random.split(key)
        if temperature == 0.0:
            token = jnp.argmax(logits, axis=-1)
        else:
            scaled = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
            token = jax.random.categorical(subkey, scaled, axis=-1)
        token = jnp.where(ended, 0, token).astype(jnp.int32)
        sequences = jax.lax.dynamic_update_slice(sequences, token[:, None], (0, i))
        return i + 1, token, sequences, ended | (token == eos_id), step_cache, key

    state = (
        jnp.asarray(0, jnp.int32),
        jnp.zeros((batch_size,), jnp.int32),
        jnp.zeros((batch_size, max_decode_length), jnp.int32),
        jnp.zeros((batch_size,), bool),
        cache,
        rng,
    )
    return jax.lax.while_loop(cond, body, state)[2]


def brevity_penalty(length: Array | int, alpha: float) -> Array:
    """Wu et al. (2016) length penalty ((5 + length) / 6) ** alpha."""
    return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


def beam_search(
    step_fn: StepFn,
    cache: Any,
    *,
    batch_size: int,
    num_beams: int,
    max_decode_length: int,
    length_penalty_alpha: float = 0.6,
    eos_id: int = EOS_ID,
) -> Array:
    """Best sequence per row by log-prob / brevity_penalty(length), length counting the EOS.

    Keeps `num_beams` alive (no EOS yet) and `num_beams` finished hypotheses per row; `cache` holds
    batch_size * num_beams rows (see `repeat_cache_for_beams`). Stops when no alive hypothesis can
    still beat the worst finished one.
    """
    b, k, length = batch_size, num_beams, max_decode_length
    max_penalty = brevity_penalty(length, length_penalty_alpha)

    def cond(state: tuple) -> Array:
        i, _, alive_lp, _, finished_scores, finished_flags, _ = state
        best_alive = alive_lp[:, 0] / max_penalty
        worst_finished = jnp.min(jnp.where(finished_flags, finished_scores, NEG_INF), axis=-1)
        settled = jnp.all(finished_flags, axis=-1) & (worst_finished >= best_alive)
        return (i < length) & ~jnp.all(settled)

    def body(state: tuple) -> tuple:
        i, alive, alive_lp, finished, finished_scores, finished_flags, step_cache = state
        previous = jnp.where(i == 0, 0, jax.lax.dynamic_index_in_dim(alive, i - 1, 2, False))
        logits, step_cache = step_fn(previous.reshape(b * k), step_cache)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, k, -1)
        vocab = log_probs.shape[-1]
        candidates = (alive_lp[:, :, None] + log_probs).reshape(b, k * vocab)
        top_lp, top_index = jax.lax.top_k(candidates, 2 * k)
        source_beam, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        grown = jnp.take_along_axis(alive, source_beam[:, :, None], axis=1)
        grown = jax.lax.dynamic_update_slice(grown, token[:, :, None], (0, 0, i))
        is_eos = token == eos_id

        # Finished: merge the old finished set with the candidates that just emitted EOS.
        new_scores = jnp.where(
            is_eos, top_lp / brevity_penalty(i + 1, length_penalty_alpha), NEG_INF
        )
        pool_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
        pool_flags = jnp.concatenate([finished_flags, is_eos], axis=1)
        pool = jnp.concatenate([finished, grown], axis=1)
        finished_scores, keep = jax.lax.top_k(jnp.where(pool_flags, pool_scores, NEG_INF), k)
        finished = jnp.take_along_axis(pool, keep[:, :, None], axis=1)
        finished_flags = jnp.take_along_axis(pool_flags, keep, axis=1)

        # Alive: the best candidates that did not emit EOS.
        alive_lp, keep = jax.lax.top_k(jnp.where(is_eos, 2 * NEG_INF, top_lp), k)
        alive = jnp.take_along_axis(grown, keep[:, :, None], axis=1)
        origin = jnp.take_along_axis(source_beam, keep, axis=1)
        flat_origin = (origin + jnp.arange(b)[:, None] * k).reshape(b * k)
        step_cache = gather_beams_in_cache(step_cache, flat_origin)
        return i + 1, alive, alive_lp, finished, finished_scores, finished_flags, step_cache

    alive_lp = jnp.tile(jnp.asarray([0.0] + [NEG_INF / 1e3] * (k - 1), jnp.float32), (b, 1))
    state = (
        jnp.asarray(0, jnp.int32),
        jnp.zeros((b, k, length), jnp.int32),
        alive_lp,
        jnp.zeros((b, k, length), jnp.int32),
        jnp.full((b, k), NEG_INF, jnp.float32),
        jnp.zeros((b, k), bool),
        cache,
    )
    _, alive, alive_lp, finished, _, finished_flags, _ = jax.lax.while_loop(cond, body, state)
    # A row with no finished hypothesis returns its best alive one (it ran out of length).
    none_finished = ~jnp.any(finished_flags, axis=-1)
    return jnp.where(none_finished[:, None], alive[:, 0], finished[:, 0])


def until_eos(row: Any) -> tuple[list[int], bool]:
    """(the ids of a decoded row before its first EOS, whether it had one): a row without EOS
    ran out of `max_decode_length`."""
    ids = []
    for token in row:
        token = int(token)
        if token == EOS_ID:
            return ids, True
        ids.append(token)
    return ids, False
