"""Rematerialisation: what one layer keeps from its forward pass for the backward pass.

`T5Config.remat_policy` wraps every encoder/decoder layer in `nn.remat` (scanned or not) with one of
these policies. Values the policy does not save are recomputed from the layer's inputs during the
backward pass. The layers tag the values a policy may keep with `jax.ad_checkpoint.checkpoint_name`:

* `PROJECTION`: the output of every dense projection, LoRA included ([batch, length, out]: q, k, v,
  the attention `out`, the MLP's `wi*` and `wo`, and a LoRA adapter's rank-r hidden `x @ lora_a`);
* `ATTENTION_LOGITS`: the softmax input [batch, heads, q_length, k_length] in the activation dtype
  (position bias and mask applied; fp32 only with `float32_attention_logits`);
* `ATTENTION_CONTEXT`: the attention-weighted values [batch, q_length, heads, head_dim].

Tagging by name, rather than JAX's `dots_saveable`, keeps the policies the same whether a projection
is a plain matmul or our CPU custom-backward matmul (a `custom_vjp`, invisible to dot policies).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from fiat_t5x.models.config import REMAT_POLICIES

PROJECTION = "projection"
ATTENTION_LOGITS = "attention_logits"
ATTENTION_CONTEXT = "attention_context"


def checkpoint_policy(name: str) -> Callable[..., bool] | None:
    """The `jax.checkpoint` policy of a `T5Config.remat_policy` ("none": no remat, None).

    * "none": no rematerialisation; autodiff keeps every residual it needs, including the fp32
      softmax [batch, heads, q, k] of each attention and the fp32 RMS-norm copies.
    * "full": nothing inside a layer is saved; the layer keeps only its inputs (the residual stream
      [batch, length, embed], and what it shares with every layer: masks, positions, the encoder
      output) and the backward pass reruns its forward pass. Least memory, ~1/3 more compute.
    * "dots_saveable": every matmul output is saved (PROJECTION, ATTENTION_LOGITS,
      ATTENTION_CONTEXT); norms, activations, softmax and dropout are recomputed. The [b, h, q, k]
      logits are kept in the activation dtype (bf16 on accelerators), never the fp32 softmax.
    * "minimal": only the dense projections' outputs (PROJECTION) are saved, MaxText's "minimal":
      little recompute (no projection matmul runs twice) and no [b, h, q, k] tensor is saved; the
      attention scores, softmax and context are recomputed from the saved q, k, v.
    """
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat policy must be one of {list(REMAT_POLICIES)}, got {name!r}")
    if name == "none":
        return None
    if name == "full":
        return jax.checkpoint_policies.nothing_saveable
    if name == "dots_saveable":
        return jax.checkpoint_policies.save_only_these_names(
            PROJECTION, ATTENTION_LOGITS, ATTENTION_CONTEXT
        )
    return jax.checkpoint_policies.save_only_these_names(PROJECTION)
