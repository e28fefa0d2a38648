"""Architecture hyper-parameters for every T5-family network we support.

One frozen dataclass covers T5 1.1 / Flan-T5 (gated GeLU, untied logits), original T5
(ReLU, tied embeddings), mT5, umT5 (per-layer relative attention bias) and byte-level
(ByT5-style, unbalanced depth) models: the families differ only in these values, so they
share one network implementation. gin binds the fields (see `gin/models/`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax

REMAT_POLICIES = ("none", "full", "dots_saveable", "minimal")
MATMUL_BACKWARDS = ("auto", "custom", "autodiff")


def default_activation_dtype() -> str:
    """bf16 on accelerators (the usual T5X setting), fp32 on the CPU where bf16 is slow."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyper-parameters of a T5-family encoder-decoder.

    Attributes:
      vocab_size: rows of the shared token embedding (and columns of the logits).
      emb_dim: model width `d_model`.
      num_heads: attention heads per attention block.
      head_dim: width of one head (`d_kv`); num_heads * head_dim need not equal emb_dim.
      mlp_dim: hidden width of the feed-forward block (`d_ff`).
      num_encoder_layers / num_decoder_layers: depth of each stack (ByT5 is unbalanced).
      mlp_activations: ('gelu', 'linear') is T5 1.1's gated GeLU (tanh approximation);
        ('relu',) is the original T5 feed-forward.
      logits_via_embedding: tie the output projection to the token embedding (original T5);
        the decoder output is then scaled by emb_dim**-0.5 before the tied projection.
      per_layer_relpos_bias: umT5 gives every layer its own relative attention bias table;
        T5 shares one table per stack.
      relative_attention_num_buckets / relative_attention_max_distance: T5 position buckets.
      dropout_rate: dropout after attention probabilities, in the MLP and on residual branches.
      layer_norm_epsilon: epsilon of the RMS layer norm.
      dtype: activation dtype ("float32" or "bfloat16"); None picks by backend.
      param_dtype: dtype in which parameters are created.
      float32_attention_logits: compute attention logits/softmax in fp32 under bf16 activations.
      scan_layers: run each stack's layers under `nn.scan` (one compiled layer body, parameters
        stacked under `encoder/layers/...` and `decoder/layers/...`); see docs/models.md.
      param_scan_axis: the axis of a stacked parameter that indexes the layer (T5X scalable_t5's
        default 1: `mlp/wi_0/kernel` is [embed, layers, mlp]).
      remat_policy: what each layer keeps for the backward pass (`fiat_t5x.models.remat`):
        "none" (everything autodiff saves), "full" (only the layer's inputs), "dots_saveable"
        (every matmul output, attention logits included) or "minimal" (the dense projections'
        outputs only; attention is recomputed).
      matmul_backward: how the dense projections and attention are differentiated: "custom" (our
        hand-written matmul and softmax backward, head-major attention scores: faster on XLA:CPU),
        "autodiff" (plain `jnp.matmul`, `jax.nn.softmax`; what GPUs/TPUs want), or "auto" (custom
        on the CPU backend only).
      fused_attention: use `jax.nn.dot_product_attention` (cuDNN's fused kernel where the GPU has
        one, XLA elsewhere) instead of our einsum attention; needs no attention dropout in training.
    """

    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 6
    head_dim: int = 64
    mlp_dim: int = 1024
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    mlp_activations: Sequence[str] = ("gelu", "linear")
    logits_via_embedding: bool = False
    per_layer_relpos_bias: bool = False
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-6
    dtype: str | None = None
    param_dtype: str = "float32"
    float32_attention_logits: bool = False
    scan_layers: bool = False
    param_scan_axis: int = 1
    remat_policy: str = "none"
    matmul_backward: str = "auto"
    fused_attention: bool = False

    def __post_init__(self) -> None:
        if self.dtype is None:
            object.__setattr__(self, "dtype", default_activation_dtype())
        object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"T5Config.{name} must be positive, got {getattr(self, name)}")
        unknown = set(self.mlp_activations) - {"gelu", "relu", "linear", "silu", "gelu_exact"}
        if unknown:
            raise ValueError(f"T5Config.mlp_activations has unknown activations {sorted(unknown)}")
        _check_choice("remat_policy", self.remat_policy, REMAT_POLICIES)
        _check_choice("matmul_backward", self.matmul_backward, MATMUL_BACKWARDS)
        if self.param_scan_axis not in (0, 1):
            # A stacked kernel is [in, layers, out] or [layers, in, out]; a norm scale is
            # [embed, layers] or [layers, embed]: only axes 0 and 1 exist for every parameter.
            raise ValueError(
                f"T5Config.param_scan_axis must be 0 or 1 (T5X uses 1), got {self.param_scan_axis}"
            )

    @property
    def is_gated(self) -> bool:
        return len(self.mlp_activations) > 1

    @property
    def custom_matmul_backward(self) -> bool:
        """Whether projections use the hand-written backward ("auto": on the CPU backend only)."""
        if self.matmul_backward == "auto":
            return jax.default_backend() == "cpu"
        return self.matmul_backward == "custom"


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"T5Config.{field} must be one of {list(choices)}, got {value!r}")
