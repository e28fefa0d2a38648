"""`EncoderDecoderModel`: the network plus what training, scoring and inference need from it.

Parameters are a plain nested dict (unboxed) named as in T5X's example network; `logical_axes`
gives the same tree with a tuple of logical axis names per leaf. Batches use SeqIO's
EncDecFeatureConverter names (`encoder_input_tokens`, `decoder_input_tokens`,
`decoder_target_tokens`, `decoder_loss_weights`, and when packed `*_segment_ids`, `*_positions`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from flax.core import meta

from fiat_t5x.models import decoding
from fiat_t5x.models.config import T5Config
from fiat_t5x.models.decoding import DECODE_METHODS, EOS_ID
from fiat_t5x.models.lora import PROJECTION_NAMES, LoraConfig, target_matches
from fiat_t5x.models.losses import (
    compute_weighted_cross_entropy,
    cross_entropy_with_z_loss,
    loss_normalizing_factor_and_weights,
)
from fiat_t5x.models.network import Transformer

Array = jax.Array
Batch = Mapping[str, Array]
Params = Mapping[str, Any]

logger = logging.getLogger(__name__)


def _dummy_batch(encoder_length: int, decoder_length: int, batch_size: int = 1) -> dict[str, Array]:
    enc = jnp.ones((batch_size, encoder_length), jnp.int32)
    dec = jnp.ones((batch_size, decoder_length), jnp.int32)
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec, "decoder_target_tokens": dec}


def _unbox(tree: Any) -> Any:
    """The plain values of flax's partitioned boxes, without the sharding constraints that
    `meta.unbox` adds under a mesh (placement is the partitioner's, via out_shardings)."""
    return meta.map_axis_meta(lambda box: _unbox(box.unbox(apply_constraint=False)), tree)


def _network_inputs(batch: Batch) -> dict[str, Array | None]:
    missing = [k for k in ("encoder_input_tokens", "decoder_input_tokens") if k not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing}; it has {sorted(batch)}")
    return {
        "encoder_input_tokens": batch["encoder_input_tokens"],
        "decoder_input_tokens": batch["decoder_input_tokens"],
        "encoder_segment_ids": batch.get("encoder_segment_ids"),
        "decoder_segment_ids": batch.get("decoder_segment_ids"),
        "encoder_positions": batch.get("encoder_positions"),
        "decoder_positions": batch.get("decoder_positions"),
        "decoder_target_tokens": batch.get("decoder_target_tokens"),
    }


class EncoderDecoderModel:
    """A T5-family encoder-decoder (optionally with LoRA) with loss, scoring and decoding.

    Args:
      config: the architecture.
      lora: which projections carry LoRA adapters; None for none.
      z_loss: coefficient of the auxiliary `logsumexp^2` loss (T5X default 1e-4).
      label_smoothing: mass moved from the true token to the others.
      loss_normalizing_factor: None (sum over tokens), a number, or one of
        NUM_REAL_TARGET_TOKENS / NUM_TOTAL_TARGET_TOKENS / AVERAGE_PER_SEQUENCE.
    """

    def __init__(
        self,
        config: T5Config,
        lora: LoraConfig | None = None,
        *,
        z_loss: float = 1e-4,
        label_smoothing: float = 0.0,
        loss_normalizing_factor: float | str | None = None,
    ) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.config = config
        self.lora = lora
        self.z_loss = z_loss
        self.label_smoothing = label_smoothing
        self.loss_normalizing_factor = loss_normalizing_factor
        self.module = Transformer(config, lora)
        self._abstract: Any = None
        self._predict = jax.jit(
            self._predict_impl,
            static_argnames=(
                "max_decode_length",
                "method",
                "num_beams",
                "length_penalty_alpha",
                "temperature",
                "top_k",
                "top_p",
            ),
        )
        self._score = jax.jit(self._score_impl)

    # ----------------------------------------------------------------- parameters
    @property
    def compute_dtype(self) -> str:
        """The dtype the network computes in (`T5Config.dtype`, resolved by backend): the
        Trainer holds frozen kernels in it (`optimizers.TrainableSelector.frozen_dtype`)."""
        return self.config.dtype

    def _init_variables(self, rng: Array, encoder_length: int, decoder_length: int) -> Any:
        batch = _dummy_batch(encoder_length, decoder_length)
        return self.module.init({"params": rng}, **_network_inputs(batch), deterministic=True)[
            "params"
        ]

    def _boxed_shapes(self) -> Any:
        if self._abstract is None:
            self._abstract = jax.eval_shape(
                functools.partial(self._init_variables, encoder_length=8, decoder_length=8),
                jax.random.PRNGKey(0),
            )
            self._check_lora_targets(self._abstract)
        return self._abstract

    def _check_lora_targets(self, boxed: Any) -> None:
        if self.lora is None:
            return
        paths = [
            k[: -len("/kernel")]
            for k in traverse_util.flatten_dict(_unbox(boxed), sep="/")
            if k.endswith("/kernel") and k.split("/")[-2] in PROJECTION_NAMES
        ]
        for target in self.lora.targets:
            if not any(target_matches(target, p) for p in paths):
                raise ValueError(
                    f"LoraConfig.targets entry {target!r} matches no dense projection of this "
                    f"model; projections look like {paths[:3]} (names: {PROJECTION_NAMES})"
                )

    def initializer(
        self,
        paths: Collection[str] | None = None,
        *,
        encoder_length: int = 8,
        decoder_length: int = 8,
    ) -> Callable[[Array], dict]:
        """A pure function `rng -> params` (nested dict in `config.param_dtype`), restricted to
        the '/'-joined `paths` when given (e.g. the LoRA factors a base checkpoint lacks).

        Jit it with `out_shardings` to create the parameters already sharded. Every leaf draws
        from its own flax rng stream, so a subset has exactly the values of the full init; and
        since nothing else is returned, XLA drops the other parameters and the dummy forward
        pass from the compiled function (its memory is the subset's; see the start-up tests).
        """
        self._boxed_shapes()
        wanted = None if paths is None else sorted(paths)
        if wanted is not None:
            unknown = sorted(
                set(wanted) - set(traverse_util.flatten_dict(self.param_shapes(), sep="/"))
            )
            if unknown:
                raise KeyError(f"the model has no parameters {unknown[:5]}")

        def init(rng: Array) -> dict:
            params = _unbox(self._init_variables(rng, encoder_length, decoder_length))
            if wanted is None:
                return params
            flat = traverse_util.flatten_dict(params, sep="/")
            return traverse_util.unflatten_dict({k: flat[k] for k in wanted}, sep="/")

        return init

    def init_params(
        self,
        rng: Array,
        *,
        paths: Collection[str] | None = None,
        shardings: Any = None,
        encoder_length: int = 8,
        decoder_length: int = 8,
    ) -> dict:
        """Fresh parameters (all, or only `paths`): a plain nested dict of arrays in
        `config.param_dtype`, placed with `shardings` (a matching tree) when given."""
        init = self.initializer(paths, encoder_length=encoder_length, decoder_length=decoder_length)
        return jax.jit(init, out_shardings=shardings)(rng)

    def logical_axes(self) -> dict:
        """The params tree with each leaf replaced by its tuple of logical axis names (no compile)."""

        def names(leaf: Any) -> tuple[str, ...]:
            if isinstance(leaf, nn.LogicallyPartitioned):
                return tuple(leaf.names)
            raise TypeError(f"parameter without logical axis names: {leaf}")

        return jax.tree_util.tree_map(
            names, self._boxed_shapes(), is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
        )

    def param_shapes(self) -> dict:
        """The params tree of `jax.ShapeDtypeStruct`s (no compile)."""
        return _unbox(self._boxed_shapes())

    # ----------------------------------------------------------------- forward
    def _deterministic(self, dropout_rng: Array | None) -> bool:
        rates = [self.config.dropout_rate] + ([self.lora.dropout] if self.lora else [])
        return dropout_rng is None or max(rates) == 0.0

    def compute_logits(
        self, params: Params, batch: Batch, *, dropout_rng: Array | None = None
    ) -> Array:
        """Teacher-forced logits [batch, target_len, vocab] in fp32."""
        deterministic = self._deterministic(dropout_rng)
        rngs = None if deterministic else {"dropout": dropout_rng}
        return self.module.apply(
            {"params": params}, **_network_inputs(batch), deterministic=deterministic, rngs=rngs
        )

    def loss(
        self, params: Params, batch: Batch, *, dropout_rng: Array | None = None
    ) -> tuple[Array, dict[str, Array]]:
        """Scalar training loss and metrics (loss, z_loss, cross_ent_loss, weight_sum, accuracy)."""
        logits = self.compute_logits(params, batch, dropout_rng=dropout_rng)
        with jax.named_scope("loss"):  # names the loss's ops in profiles (bench/profile_step.py)
            return self._loss_from_logits(logits, batch)

    def _loss_from_logits(self, logits: Array, batch: Batch) -> tuple[Array, dict[str, Array]]:
        factor, weights = loss_normalizing_factor_and_weights(self.loss_normalizing_factor, batch)
        targets = batch["decoder_target_tokens"]
        loss, z_loss, weight_sum = compute_weighted_cross_entropy(
            logits,
            targets,
            weights,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            loss_normalizing_factor=factor,
        )
        acc_weights = (
            jnp.ones(targets.shape, jnp.float32)
            if batch.get("decoder_loss_weights") is None
            else batch["decoder_loss_weights"].astype(jnp.float32)
        )
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32) * acc_weights
        metrics = {
            "loss": loss,
            "z_loss": z_loss,
            "cross_ent_loss": loss - z_loss,
            "weight_sum": weight_sum,
            "accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(acc_weights), 1e-8),
        }
        return loss, metrics

    def score_batch(self, params: Params, batch: Batch) -> Array:
        """Per-example sum of target log-probabilities [batch] (weighted, no z-loss, no smoothing).

        Jitted (one compile per batch shape), like `predict_batch`: SeqIO score metrics call it
        batch after batch, and op-by-op it is several times slower."""
        return self._score(params, dict(batch))

    def _score_impl(self, params: Params, batch: Batch) -> Array:
        logits = self.compute_logits(params, batch)
        token_loss, _ = cross_entropy_with_z_loss(logits, batch["decoder_target_tokens"])
        weights = batch.get("decoder_loss_weights")
        if weights is None:
            weights = batch["decoder_target_tokens"] > 0
        return -jnp.sum(token_loss * weights.astype(jnp.float32), axis=-1)

    # ----------------------------------------------------------------- decoding
    def predict_batch(
        self,
        params: Params,
        batch: Batch,
        *,
        max_decode_length: int,
        method: str = "greedy",
        num_beams: int = 4,
        length_penalty_alpha: float = 0.6,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        rng: Array | None = None,
    ) -> Array:
        """Decodes targets: int32 [batch, max_decode_length], EOS (1) then 0s.

        method: "greedy"; "sample" (temperature, top_k, top_p; temperature 0 is greedy);
        "beam" (num_beams, length_penalty_alpha; one beam is greedy).
        """
        if batch.get("encoder_segment_ids") is not None:
            raise ValueError(
                "predict_batch decodes one example per row: pass an unpacked batch "
                "(no encoder_segment_ids; SeqIO feature converter with pack=False)"
            )
        if method not in DECODE_METHODS:
            raise ValueError(f"predict_batch: method {method!r} is not one of {DECODE_METHODS}")
        if method == "sample" and temperature > 0 and rng is None:
            raise ValueError("predict_batch: method='sample' needs rng=jax.random.PRNGKey(...)")
        if method == "sample" and temperature == 0:
            method = "greedy"
        if method == "beam" and num_beams == 1:
            method = "greedy"
        if rng is None:
            rng = jax.random.PRNGKey(0)
        return self._predict(
            params,
            batch["encoder_input_tokens"],
            rng,
            max_decode_length=int(max_decode_length),
            method=method,
            num_beams=int(num_beams),
            length_penalty_alpha=float(length_penalty_alpha),
            temperature=float(temperature),
            top_k=int(top_k),
            top_p=float(top_p),
        )

    def init_decode_cache(
        self, params: Params, encoded: Array, encoder_tokens: Array, max_decode_length: int
    ) -> Any:
        """Empty self-attention caches and the projected cross-attention keys/values."""
        dummy = jnp.zeros((encoder_tokens.shape[0], max_decode_length), jnp.int32)
        _, variables = self.module.apply(
            {"params": params},
            encoded,
            encoder_tokens,
            dummy,
            decode=True,
            mutable=["cache"],
            method=Transformer.decode,
        )
        return variables["cache"]

    def decode_step(
        self, params: Params, cache: Any, encoded: Array, encoder_tokens: Array, tokens: Array
    ) -> tuple[Array, Any]:
        """One cached decoder step: tokens [b] -> (logits [b, vocab] fp32, updated cache)."""
        logits, variables = self.module.apply(
            {"params": params, "cache": cache},
            encoded,
            encoder_tokens,
            tokens[:, None],
            decode=True,
            mutable=["cache"],
            method=Transformer.decode,
        )
        return logits[:, 0], variables["cache"]

    def _predict_impl(
        self,
        params: Params,
        encoder_tokens: Array,
        rng: Array,
        *,
        max_decode_length: int,
        method: str,
        num_beams: int,
        length_penalty_alpha: float,
        temperature: float,
        top_k: int,
        top_p: float,
    ) -> Array:
        encoded = self.module.apply(
            {"params": params},
            encoder_tokens,
            method=Transformer.encode,
        )
        cache = self.init_decode_cache(params, encoded, encoder_tokens, max_decode_length)
        batch_size = encoder_tokens.shape[0]
        if method == "beam":
            cache = decoding.repeat_cache_for_beams(cache, num_beams)
            encoded = jnp.repeat(encoded, num_beams, axis=0)
            encoder_tokens = jnp.repeat(encoder_tokens, num_beams, axis=0)

        def step(tokens: Array, step_cache: Any) -> tuple[Array, Any]:
            return self.decode_step(params, step_cache, encoded, encoder_tokens, tokens)

        if method == "beam":
            return decoding.beam_search(
                step,
                cache,
                batch_size=batch_size,
                num_beams=num_beams,
                max_decode_length=max_decode_length,
                length_penalty_alpha=length_penalty_alpha,
                eos_id=EOS_ID,
            )
        return decoding.sample(
            step,
            cache,
            batch_size=batch_size,
            max_decode_length=max_decode_length,
            rng=rng,
            temperature=0.0 if method == "greedy" else temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=EOS_ID,
        )
