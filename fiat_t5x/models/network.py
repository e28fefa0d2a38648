"""The T5-family encoder-decoder as one Flax network configured by `T5Config`.

Parameter names follow T5X's example network (`encoder/layers_0/attention/query/kernel`,
`decoder/layers_0/encoder_decoder_attention/...`, `token_embedder/embedding`, ...), so T5X
checkpoints load by name. Packed inputs (several examples per row) are handled by segment ids:
attention is block-diagonal per segment, and relative positions come from the per-example
positions when given.

With `scan_layers` a stack's layers run under `nn.scan`: one layer body, parameters stacked under
`encoder/layers/...` with a `layers` axis at `param_scan_axis` (T5X scalable_t5's layout; see
`checkpoints/scanned.py`). With `remat_policy` each layer is rematerialised (`remat.py`). Layers
take only what every layer shares (masks, positions, the shared relative-position table) and compute
their attention bias themselves, so no [b, heads, q, k] tensor lives across the stack.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fiat_t5x.models import activation_axes as act
from fiat_t5x.models.config import T5Config
from fiat_t5x.models.layers import (
    DenseProjection,
    Embed,
    MlpBlock,
    MultiHeadAttention,
    RelativePositionBias,
    RMSNorm,
    as_dtype,
    relative_position_bias,
)
from fiat_t5x.models.lora import LoraConfig
from fiat_t5x.models.remat import checkpoint_policy

Array = jax.Array
RESIDUAL_AXES = (act.BATCH, act.LENGTH, act.EMBED)


def _positions(tokens: Array, positions: Array | None) -> Array:
    """Per-token positions [b, l] (arange when not packed)."""
    if positions is not None:
        return positions.astype(jnp.int32)
    return jnp.arange(tokens.shape[-1], dtype=jnp.int32)[None, :]


def _pair_mask(
    q_tokens: Array, k_tokens: Array, q_segments: Array | None, k_segments: Array | None
) -> Array:
    """[b, 1, q, k] True where both are real tokens of the same packed segment."""
    mask = (q_tokens > 0)[:, None, :, None] & (k_tokens > 0)[:, None, None, :]
    if q_segments is not None and k_segments is not None:
        mask = mask & (q_segments[:, None, :, None] == k_segments[:, None, None, :])
    return mask


class _Block(nn.Module):
    """Shared attributes of the stacks and their layers.

    `stack_depth` is set on a layer that runs inside a scanned stack of that many layers (LoRA
    targets are then matched against every layer's path); `scanned` makes `__call__` return
    `(x, None)`, the (carry, output) pair `nn.scan` expects.
    """

    config: T5Config
    lora: LoraConfig | None = None
    stack_depth: int | None = None
    scanned: bool = False

    @property
    def dtype(self) -> Any:
        return as_dtype(self.config.dtype)

    @property
    def param_dtype(self) -> Any:
        return as_dtype(self.config.param_dtype)

    def norm(self, name: str, *, feeds_projections: bool = True) -> RMSNorm:
        """An RMSNorm; on the CPU path one that feeds projections hands them its fp32 output."""
        return RMSNorm(
            epsilon=self.config.layer_norm_epsilon,
            float32_output=feeds_projections and self.config.custom_matmul_backward,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    def attention(self, name: str) -> MultiHeadAttention:
        c = self.config
        return MultiHeadAttention(
            num_heads=c.num_heads,
            head_dim=c.head_dim,
            dropout_rate=c.dropout_rate,
            float32_logits=c.float32_attention_logits,
            fused=c.fused_attention,
            lora=self.lora,
            stack_depth=self.stack_depth,
            custom_backward=c.custom_matmul_backward,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    def mlp(self) -> MlpBlock:
        c = self.config
        return MlpBlock(
            mlp_dim=c.mlp_dim,
            activations=c.mlp_activations,
            intermediate_dropout_rate=c.dropout_rate,
            lora=self.lora,
            stack_depth=self.stack_depth,
            custom_backward=c.custom_matmul_backward,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="mlp",
        )

    def relpos(self, name: str = "relpos_bias") -> RelativePositionBias:
        c = self.config
        return RelativePositionBias(
            num_heads=c.num_heads,
            num_buckets=c.relative_attention_num_buckets,
            max_distance=c.relative_attention_max_distance,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    def shared_relpos_table(self) -> Array | None:
        """The stack's one bias table [heads, buckets] (T5), or None when each layer has its own."""
        if self.config.per_layer_relpos_bias:
            return None
        return self.relpos().table()

    def position_bias(
        self, q_pos: Array, k_pos: Array, shared_table: Array | None, *, bidirectional: bool
    ) -> Array:
        """This layer's relative position bias [b|1, heads, q, k] (umT5: from its own table)."""
        if shared_table is None:
            return self.relpos()(q_pos, k_pos, bidirectional=bidirectional)
        return relative_position_bias(
            shared_table,
            q_pos,
            k_pos,
            bidirectional=bidirectional,
            max_distance=self.config.relative_attention_max_distance,
            dtype=self.dtype,
        )

    def dropout(self, x: Array, deterministic: bool) -> Array:
        return nn.Dropout(rate=self.config.dropout_rate, broadcast_dims=(-2,))(
            x, deterministic=deterministic
        )

    def residual(self, x: Array, h: Array, deterministic: bool) -> Array:
        """x + dropout(h): a block boundary, [b, l, embed] constrained to the residual axes."""
        return act.constrain(x + self.dropout(h, deterministic), RESIDUAL_AXES)

    def run_layers(
        self, layer: type[_Block], num_layers: int, x: Array, *args: Any, deterministic: bool
    ) -> Array:
        """`num_layers` layers of class `layer` on x [b, l, embed]: unrolled as `layers_{i}`, or
        one `nn.scan` as `layers`; each under `nn.remat` when `remat_policy` is not "none".

        `args` are what every layer shares (broadcast to every scan step); `deterministic` is
        static for remat (it decides whether dropout runs).
        """
        c = self.config
        cls = layer
        if c.remat_policy != "none":
            cls = nn.remat(
                cls,
                policy=checkpoint_policy(c.remat_policy),
                prevent_cse=not c.scan_layers,
                static_argnums=(len(args) + 2,),  # self, x, *args, deterministic
            )
        if not c.scan_layers:
            for i in range(num_layers):
                x = cls(c, self.lora, name=f"layers_{i}")(x, *args, deterministic)
            return x
        scan = nn.scan(
            cls,
            variable_axes={"params": c.param_scan_axis, "cache": 1, "intermediates": 1},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * (len(args) + 1),
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = scan(c, self.lora, stack_depth=num_layers, scanned=True, name="layers")(
            x, *args, deterministic
        )
        return x


class EncoderLayer(_Block):
    """Pre-norm self-attention and MLP, each with a residual."""

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array,
        positions: Array,
        shared_table: Array | None,
        deterministic: bool,
    ) -> Array | tuple[Array, None]:
        """x [b, l, embed], mask bool [b, 1, l, l], positions [b|1, l] -> [b, l, embed]."""
        x = act.constrain(x, RESIDUAL_AXES)
        bias = self.position_bias(positions, positions, shared_table, bidirectional=True)
        h = self.norm("pre_attention_layer_norm")(x)
        h = self.attention("attention")(h, h, mask, bias, deterministic=deterministic)
        x = self.residual(x, h, deterministic)
        h = self.norm("pre_mlp_layer_norm")(x)
        h = self.mlp()(h, deterministic=deterministic)
        x = self.residual(x, h, deterministic)
        return (x, None) if self.scanned else x


class Encoder(_Block):
    """Token ids [b, l] -> encoded [b, l, embed] (after `encoder_norm`)."""

    shared_embedding: nn.Module | None = None

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        segment_ids: Array | None = None,
        positions: Array | None = None,
        *,
        deterministic: bool = True,
    ) -> Array:
        pos = _positions(tokens, positions)
        mask = _pair_mask(tokens, tokens, segment_ids, segment_ids)
        x = self.dropout(self.shared_embedding(tokens), deterministic)
        x = self.run_layers(
            EncoderLayer,
            self.config.num_encoder_layers,
            x,
            mask,
            pos,
            self.shared_relpos_table(),
            deterministic=deterministic,
        )
        x = self.norm("encoder_norm", feeds_projections=False)(x)
        return act.constrain(self.dropout(x, deterministic), RESIDUAL_AXES)


class DecoderLayer(_Block):
    """Pre-norm causal self-attention, cross-attention and MLP, each with a residual."""

    @nn.compact
    def __call__(
        self,
        x: Array,
        encoded: Array,
        self_mask: Array,
        cross_mask: Array,
        q_pos: Array,
        k_pos: Array,
        shared_table: Array | None,
        decode_index: Array | None,
        deterministic: bool,
    ) -> Array | tuple[Array, None]:
        """x [b, l, embed], encoded [b, s, embed], masks bool [b|1, 1, l, l|s] -> [b, l, embed]."""
        x = act.constrain(x, RESIDUAL_AXES)
        bias = self.position_bias(q_pos, k_pos, shared_table, bidirectional=False)
        h = self.norm("pre_self_attention_layer_norm")(x)
        h = self.attention("self_attention")(
            h, h, self_mask, bias, deterministic=deterministic, decode_index=decode_index
        )
        x = self.residual(x, h, deterministic)
        h = self.norm("pre_cross_attention_layer_norm")(x)
        h = self.attention("encoder_decoder_attention")(
            h, encoded, cross_mask, deterministic=deterministic, cache_kv=decode_index is not None
        )
        x = self.residual(x, h, deterministic)
        h = self.norm("pre_mlp_layer_norm")(x)
        h = self.mlp()(h, deterministic=deterministic)
        x = self.residual(x, h, deterministic)
        return (x, None) if self.scanned else x


class Decoder(_Block):
    """Decoder inputs [b, l] + encoded [b, s, embed] -> logits [b, l, vocab] (fp32).

    With `decode=True` the decoder runs from the flax "cache" collection: the first (initialising)
    call, with full-length inputs, only allocates the caches and projects the encoder outputs for
    cross-attention; later calls take one token [b, 1] at position `cache/decode_position`.
    Scanned, a layer cache leaf is stacked on axis 1 ([b, layers, ...]), so the batch stays axis 0
    for beam search's reordering.
    """

    shared_embedding: nn.Module | None = None

    @nn.compact
    def __call__(
        self,
        encoded: Array,
        tokens: Array,
        encoder_tokens: Array,
        segment_ids: Array | None = None,
        encoder_segment_ids: Array | None = None,
        positions: Array | None = None,
        target_tokens: Array | None = None,
        *,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        c = self.config
        decode_index = None
        if decode:
            initialized = self.has_variable("cache", "decode_position")
            position = self.variable("cache", "decode_position", lambda: jnp.zeros((), jnp.int32))
            max_length = self.variable(
                "cache", "max_length", lambda: jnp.zeros((tokens.shape[1],), jnp.int8)
            ).value.shape[0]
            decode_index = position.value
            if initialized:
                position.value = decode_index + 1
                q_pos = decode_index[None, None]
                k_pos = jnp.arange(max_length, dtype=jnp.int32)[None, :]
                self_mask = (k_pos <= decode_index)[:, None, :][:, None]
            else:
                q_pos = k_pos = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
                self_mask = (k_pos[:, None, :] >= 0)[:, None]
            cross_mask = (encoder_tokens > 0)[:, None, None, :]
        else:
            q_pos = k_pos = _positions(tokens, positions)
            causal = q_pos[:, :, None] >= k_pos[:, None, :]
            same = jnp.ones_like(causal)
            if segment_ids is not None:
                same = segment_ids[:, :, None] == segment_ids[:, None, :]
            # As T5X: real decoder positions are those with a non-padding *target* token.
            real = (tokens > 0) if target_tokens is None else (target_tokens > 0)
            self_mask = (causal & same & real[:, :, None] & real[:, None, :])[:, None]
            cross_mask = _pair_mask(
                real.astype(jnp.int32), encoder_tokens, segment_ids, encoder_segment_ids
            )

        x = self.dropout(self.shared_embedding(tokens), deterministic)
        x = self.run_layers(
            DecoderLayer,
            c.num_decoder_layers,
            x,
            encoded,
            self_mask,
            cross_mask,
            q_pos,
            k_pos,
            self.shared_relpos_table(),
            decode_index,
            deterministic=deterministic,
        )
        x = self.norm("decoder_norm")(x)
        x = self.dropout(x, deterministic)
        if c.logits_via_embedding:
            logits = self.shared_embedding.attend(x * (c.emb_dim**-0.5))
        else:
            logits = DenseProjection(
                c.vocab_size,
                ("embed", "vocab"),
                kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
                lora=None,
                custom_backward=c.custom_matmul_backward,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="logits_dense",
            )(x)
        logits = act.constrain(logits, (act.BATCH, act.LENGTH, act.VOCAB))
        return logits.astype(jnp.float32)


class Transformer(nn.Module):
    """Encoder + decoder sharing `token_embedder`. `__call__` is the teacher-forced forward pass."""

    config: T5Config
    lora: LoraConfig | None = None

    def setup(self) -> None:
        c = self.config
        self.token_embedder = Embed(
            num_embeddings=c.vocab_size,
            features=c.emb_dim,
            dtype=as_dtype(c.dtype),
            param_dtype=as_dtype(c.param_dtype),
        )
        self.encoder = Encoder(c, self.lora, shared_embedding=self.token_embedder)
        self.decoder = Decoder(c, self.lora, shared_embedding=self.token_embedder)

    def encode(
        self,
        encoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        *,
        deterministic: bool = True,
    ) -> Array:
        """[b, s] -> [b, s, embed]."""
        return self.encoder(
            encoder_input_tokens,
            encoder_segment_ids,
            encoder_positions,
            deterministic=deterministic,
        )

    def decode(
        self,
        encoded: Array,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        decoder_segment_ids: Array | None = None,
        encoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
        decoder_target_tokens: Array | None = None,
        *,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        """-> logits [b, l, vocab] fp32. Masks come from `decoder_target_tokens > 0` when given."""
        return self.decoder(
            encoded,
            decoder_input_tokens,
            encoder_input_tokens,
            decoder_segment_ids,
            encoder_segment_ids,
            decoder_positions,
            decoder_target_tokens,
            deterministic=deterministic,
            decode=decode,
        )

    def __call__(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        decoder_positions: Array | None = None,
        decoder_target_tokens: Array | None = None,
        *,
        deterministic: bool = True,
    ) -> Array:
        encoded = self.encode(
            encoder_input_tokens,
            encoder_segment_ids,
            encoder_positions,
            deterministic=deterministic,
        )
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            decoder_segment_ids,
            encoder_segment_ids,
            decoder_positions,
            decoder_target_tokens,
            deterministic=deterministic,
        )
