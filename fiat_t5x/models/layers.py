"""Building blocks of the T5 network: RMS norm, relative position bias, LoRA-capable dense
projections, multi-head attention with a key/value cache, the feed-forward block and the embedder.

Every parameter is created through `nn.with_logical_partitioning` so that it carries T5X's logical
axis names (`embed`, `mlp`, `joined_kv`, `heads`, `vocab`, `relpos_buckets`, `lora_rank`);
activations are constrained with their own names (`activation_axes`). Numerics follow T5X's example
network: no 1/sqrt(d) attention scaling (folded into the query initialiser), masked logits are
-1e10, RMS norm without mean subtraction. Values a remat policy may keep are tagged (`remat`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from fiat_t5x.models import activation_axes as act
from fiat_t5x.models.cpu_ops import (
    attention_context,
    attention_scores,
    dense_matmul,
    softmax_fused_backward,
    wider,
)
from fiat_t5x.models.lora import LoraConfig, lora_a_init, targets_module
from fiat_t5x.models.remat import ATTENTION_CONTEXT, ATTENTION_LOGITS, PROJECTION

Array = jax.Array
Initializer = Callable[..., Array]
MASK_VALUE = -1e10

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "linear": lambda x: x,
}


def as_dtype(name: Any) -> jnp.dtype:
    """'float32' / 'bfloat16' / a dtype -> jnp dtype."""
    return jnp.dtype(name)


def matmul(x: Array, kernel: Array, *, custom_backward: bool, float32_sums: bool = False) -> Array:
    """`x @ kernel`: `dense_matmul` where its backward helps (XLA:CPU), plain autodiff elsewhere.

    Accelerators differentiate `jnp.matmul` well and need no extra residual for it, and fuse
    the rounding of a bf16 dot's sums into it, so `float32_sums` (keep the sums unrounded for
    the next elementwise op) applies on the CPU path only.
    """
    if custom_backward:
        return dense_matmul(x, kernel, float32_sums)
    return jnp.matmul(x, kernel)


class RMSNorm(nn.Module):
    """T5 layer norm: x / sqrt(mean(x^2) + eps) * scale, computed in fp32. [..., embed].

    `float32_output` hands on the fp32 result unrounded, for projections on the CPU path that
    round their input themselves and return its gradient in fp32 (`cpu_ops.dense_matmul`).
    """

    epsilon: float = 1e-6
    float32_output: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + self.epsilon)
        y = y * scale.astype(jnp.float32)
        return y if self.float32_output else y.astype(self.dtype)


def relative_position_bucket(
    relative_position: Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
    """T5's bucketing of `key_pos - query_pos`: exact buckets near 0, log-spaced up to max_distance.

    Bidirectional splits the buckets in half by sign; causal maps all future offsets to bucket 0.
    """
    n = -relative_position
    bucket = jnp.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (n < 0).astype(n.dtype) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(
        max_distance / max_exact
    )
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(n.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(is_small, n, large)


def relative_position_bias(
    table: Array,
    query_pos: Array,
    key_pos: Array,
    *,
    bidirectional: bool,
    max_distance: int,
    dtype: Any = jnp.float32,
) -> Array:
    """Per-head bias of each (query, key) pair from a table [heads, buckets] -> [b|1, heads, q, k].

    query_pos [b|1, q], key_pos [b|1, k] int. Computed where it is used (in each layer), so only
    the positions, never a [b, heads, q, k] tensor, stay live across a stack.
    """
    relative = key_pos[:, None, :] - query_pos[:, :, None]
    num_buckets = table.shape[1]
    buckets = relative_position_bucket(
        relative, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    table = table.astype(dtype)
    if buckets.shape[0] == 1:
        # Shared positions: a one-hot matmul, cheaper to differentiate than a gather.
        one_hot = jax.nn.one_hot(buckets, num_buckets, dtype=dtype)
        return jnp.einsum("hn,bqkn->bhqk", table, one_hot)
    # Per-example (packed) positions: a gather keeps memory at [b, heads, q, k].
    return jnp.transpose(jnp.take(table, buckets, axis=1), (1, 0, 2, 3))


class RelativePositionBias(nn.Module):
    """Learned per-head bias of each (query, key) position bucket: rel_embedding [heads, buckets].

    Call it for the bias of some positions, or take `table()` to share it with layers that compute
    their own bias (`relative_position_bias`).
    """

    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        self.rel_embedding = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                ("heads", "relpos_buckets"),
            ),
            (self.num_heads, self.num_buckets),
            self.param_dtype,
        )

    def table(self) -> Array:
        """The bias table [heads, buckets]."""
        return self.rel_embedding

    def __call__(self, query_pos: Array, key_pos: Array, *, bidirectional: bool) -> Array:
        """query_pos [b|1, q], key_pos [b|1, k] int -> bias [b|1, heads, q, k]."""
        return relative_position_bias(
            self.rel_embedding,
            query_pos,
            key_pos,
            bidirectional=bidirectional,
            max_distance=self.max_distance,
            dtype=self.dtype,
        )


class DenseProjection(nn.Module):
    """`x @ kernel` with kernel [in, out], plus a LoRA branch when `lora` targets this module.

    The module's own path (e.g. `encoder/layers_0/attention/query`) decides whether LoRA applies;
    inside a scanned stack of `stack_depth` layers the path `encoder/layers/...` stands for every
    layer's. The output is tagged `PROJECTION` for the remat policies.
    """

    features: int
    axes: tuple[str, str]
    kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    lora: LoraConfig | None = None
    stack_depth: int | None = None
    custom_backward: bool = False
    float32_output: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        in_features = x.shape[-1]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.axes),
            (in_features, self.features),
            self.param_dtype,
        )
        mm = functools.partial(matmul, custom_backward=self.custom_backward)
        # On the CPU path a wider x (a norm's or the activation's fp32 output) goes in as it is:
        # the product rounds it and returns its gradient unrounded (`cpu_ops.dense_matmul`).
        if not (self.custom_backward and wider(x.dtype, self.dtype)):
            x = x.astype(self.dtype)
        y = mm(x, kernel.astype(self.dtype), float32_sums=True)
        if self.lora is not None and targets_module(self.lora, self.scope.path, self.stack_depth):
            a = self.param(
                "lora_a",
                nn.with_logical_partitioning(lora_a_init, (self.axes[0], "lora_rank")),
                (in_features, self.lora.rank),
                self.param_dtype,
            )
            b = self.param(
                "lora_b",
                nn.with_logical_partitioning(
                    nn.initializers.zeros_init(), ("lora_rank", self.axes[1])
                ),
                (self.lora.rank, self.features),
                self.param_dtype,
            )
            x_lora = nn.Dropout(rate=self.lora.dropout)(x, deterministic=deterministic)
            hidden = checkpoint_name(mm(x_lora, a.astype(self.dtype)), PROJECTION)
            lora_out = mm(hidden, b.astype(self.dtype), float32_sums=True)
            y = y + lora_out * jnp.asarray(self.lora.scale, y.dtype)
        if not (self.float32_output and self.custom_backward):
            y = y.astype(self.dtype)
        return checkpoint_name(y, PROJECTION)


def _sub_projection(
    parent: nn.Module,
    name: str,
    features: int,
    axes: tuple[str, str],
    init: Initializer,
    *,
    float32_output: bool = False,
) -> DenseProjection:
    """A projection inside `parent` (attention or MLP) with its LoRA, stack depth, backward and
    dtypes."""
    return DenseProjection(
        features=features,
        axes=axes,
        kernel_init=init,
        lora=parent.lora,
        stack_depth=parent.stack_depth,
        custom_backward=parent.custom_backward,
        float32_output=float32_output,
        dtype=parent.dtype,
        param_dtype=parent.param_dtype,
        name=name,
    )


def attention_addend(mask: Array | None, bias: Array | None, dtype: Any) -> Array | None:
    """What attention adds to its logits: the position bias plus the mask as 0 / MASK_VALUE,
    summed first, as T5X combines them; None when there is neither.

    One addend, rather than a `where` over the biased logits, is what XLA:CPU folds into the
    softmax's library fusion (a select with a broadcast mask is not), saving a pass over the
    [b, h, q, k] logits per layer. Masked logits equal MASK_VALUE to fp32 rounding (its ulp is
    1024), so the probabilities do not change, fully masked rows (padded queries) included.
    """
    addend = None if mask is None else jnp.where(mask, 0.0, MASK_VALUE).astype(dtype)
    if bias is None:
        return addend
    bias = bias.astype(dtype)
    return bias if addend is None else bias + addend


class MultiHeadAttention(nn.Module):
    """T5 attention (q, k, v, out projections; no 1/sqrt(d) scaling) with an optional KV cache.

    Decoding uses the flax "cache" collection. Self-attention (`decode_index` given) keeps
    `cached_key`/`cached_value` [b, max_len, heads, head_dim] and writes one position per step;
    cross-attention (`cache_kv=True`) projects the encoder outputs once into `cross_key`/`cross_value`.
    With `fused=True` the scores, softmax and context are `jax.nn.dot_product_attention` (cuDNN's
    fused kernel on GPUs that have one); it has no dropout on the attention probabilities.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    float32_logits: bool = False
    fused: bool = False
    lora: LoraConfig | None = None
    stack_depth: int | None = None
    custom_backward: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _proj(self, name: str, features: int, axes: tuple[str, str], init: Initializer):
        return _sub_projection(self, name, features, axes, init)

    def _heads(self, x: Array) -> Array:
        """[b, l, heads * head_dim] -> [b, l, heads, head_dim]."""
        x = x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))
        return act.constrain(x, (act.BATCH, act.LENGTH, act.HEADS, act.KV))

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array,
        mask: Array | None,
        bias: Array | None = None,
        *,
        deterministic: bool = True,
        decode_index: Array | None = None,
        cache_kv: bool = False,
    ) -> Array:
        """inputs_q [b, q, embed], inputs_kv [b, k, embed] -> [b, q, embed].

        mask: bool [b|1, h|1, q, k], True where attended (masked logits become -1e10);
        bias: additive [b|1, h|1, q, k] (the relative position bias), or None.
        """
        joined = self.num_heads * self.head_dim
        base_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")

        def query_init(key, shape, dtype=jnp.float32):
            return base_init(key, shape, dtype) / np.sqrt(self.head_dim).astype(dtype)

        query = self._proj("query", joined, ("embed", "joined_kv"), query_init)
        key = self._proj("key", joined, ("embed", "joined_kv"), base_init)
        value = self._proj("value", joined, ("embed", "joined_kv"), base_init)
        out = self._proj("out", inputs_q.shape[-1], ("joined_kv", "embed"), base_init)

        q = self._heads(query(inputs_q, deterministic=deterministic))

        def project_kv() -> tuple[Array, Array]:
            k_ = self._heads(key(inputs_kv, deterministic=deterministic))
            v_ = self._heads(value(inputs_kv, deterministic=deterministic))
            return k_, v_

        if cache_kv:
            initialized = self.has_variable("cache", "cross_key")
            if initialized:
                k = self.get_variable("cache", "cross_key")
                v = self.get_variable("cache", "cross_value")
            else:
                k, v = project_kv()
                self.put_variable("cache", "cross_key", k)
                self.put_variable("cache", "cross_value", v)
        else:
            k, v = project_kv()
            if decode_index is not None:
                initialized = self.has_variable("cache", "cached_key")
                cached_key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
                cached_value = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
                if initialized:
                    if k.shape[1] != 1:
                        raise ValueError(
                            f"cached decoding feeds one token per step; got length {k.shape[1]}"
                        )
                    start = (0, decode_index, 0, 0)
                    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, k, start)
                    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, v, start)
                    k, v = cached_key.value, cached_value.value

        # The CPU ops only over whole sequences: a cached decode step would transpose the whole
        # [b, max_len, h, d] cache for one query.
        cpu_path = self.custom_backward and decode_index is None and not cache_kv
        context = self._context(q, k, v, mask, bias, deterministic, cpu_path=cpu_path)
        context = checkpoint_name(context, ATTENTION_CONTEXT)
        context = act.constrain(context, (act.BATCH, act.LENGTH, act.HEADS, act.KV))
        context = context.reshape(context.shape[:2] + (joined,))
        return out(context, deterministic=deterministic)

    def _context(
        self,
        q: Array,
        k: Array,
        v: Array,
        mask: Array | None,
        bias: Array | None,
        deterministic: bool,
        *,
        cpu_path: bool = False,
    ) -> Array:
        """q [b, q, h, d], k/v [b, k, h, d] -> context [b, q, h, d]: our einsum attention, or
        `jax.nn.dot_product_attention` (fp32 logits and softmax, T5's unit scale) when fused.

        With `cpu_path` (the CPU path over whole sequences) the score and context products and
        the softmax are `models.cpu_ops`' (fp32 scores, forms the library kernels take, the
        fp32 probabilities rounded inside the context product); the softmax has its one-fusion
        backward wherever `custom_backward` is set.
        """
        if self.fused:
            if not deterministic and self.dropout_rate > 0:
                raise ValueError(
                    "T5Config.fused_attention has no dropout on attention probabilities: train "
                    "with dropout_rate=0 or fused_attention=False"
                )
            dtype = self.dtype
            return jax.nn.dot_product_attention(
                q.astype(dtype),
                k.astype(dtype),
                v.astype(dtype),
                bias=None if bias is None else bias.astype(dtype),
                mask=mask,
                scale=1.0,
            )
        if self.float32_logits:
            q, k = q.astype(jnp.float32), k.astype(jnp.float32)
        if cpu_path:
            logits = attention_scores(q, k)
        else:
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        addend = attention_addend(mask, bias, logits.dtype)
        if addend is not None:
            logits = logits + addend
        logits = checkpoint_name(logits, ATTENTION_LOGITS)
        logits = act.constrain(logits, (act.BATCH, act.HEADS, act.LENGTH, None))
        softmax = softmax_fused_backward if self.custom_backward else jax.nn.softmax
        weights = softmax(logits.astype(jnp.float32))
        dropout = nn.Dropout(rate=self.dropout_rate)
        if cpu_path:  # dropout on the fp32 weights; the product rounds them to v's dtype itself
            weights = dropout(weights, deterministic=deterministic)
            return attention_context(weights, v.astype(self.dtype))
        weights = dropout(weights.astype(self.dtype), deterministic=deterministic)
        return jnp.einsum("bhqk,bkhd->bqhd", weights, v.astype(self.dtype))


class MlpBlock(nn.Module):
    """T5 feed-forward: wo(act_0(x@wi_0) * act_1(x@wi_1) ...) or, ungated, wo(act(x@wi))."""

    mlp_dim: int
    activations: Sequence[str] = ("gelu", "linear")
    intermediate_dropout_rate: float = 0.0
    lora: LoraConfig | None = None
    stack_depth: int | None = None
    custom_backward: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _proj(
        self, name: str, features: int, axes: tuple[str, str], *, float32_output: bool = False
    ) -> DenseProjection:
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        return _sub_projection(self, name, features, axes, init, float32_output=float32_output)

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        """[b, l, embed] -> [b, l, embed]; the hidden [b, l, mlp] is sharded as `activation_mlp`."""
        names = (
            ["wi"]
            if len(self.activations) == 1
            else [f"wi_{i}" for i in range(len(self.activations))]
        )
        hidden = None
        for name, activation in zip(names, self.activations, strict=True):
            # On the CPU path the activation reads the projection's fp32 sums (one rounding,
            # after the product, instead of a rounding pass per projection and per operation).
            proj = self._proj(name, self.mlp_dim, ("embed", "mlp"), float32_output=True)
            h = act.constrain(
                proj(x, deterministic=deterministic), (act.BATCH, act.LENGTH, act.MLP)
            )
            h = _ACTIVATIONS[activation](h)
            hidden = h if hidden is None else hidden * h
        if not self.custom_backward:  # on the CPU path `wo` rounds it (`cpu_ops.dense_matmul`)
            hidden = hidden.astype(self.dtype)
        hidden = nn.Dropout(rate=self.intermediate_dropout_rate, broadcast_dims=(-2,))(
            hidden, deterministic=deterministic
        )
        hidden = act.constrain(hidden, (act.BATCH, act.LENGTH, act.MLP))
        return self._proj("wo", x.shape[-1], ("mlp", "embed"))(hidden, deterministic=deterministic)


class Embed(nn.Module):
    """Token embedding [vocab, embed] (normal(1.0) init, as T5X); `attend` is the tied projection."""

    num_embeddings: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, tokens: Array) -> Array:
        """tokens [b, l] int -> [b, l, embed]."""
        x = jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)
        return act.constrain(x, (act.BATCH, act.LENGTH, act.EMBED))

    def attend(self, x: Array) -> Array:
        """[b, l, embed] -> logits [b, l, vocab] against the embedding table."""
        return jnp.matmul(x.astype(self.dtype), self.embedding.astype(self.dtype).T)
