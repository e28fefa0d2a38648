"""Per-example loss weights: SeqIO's encoder-decoder conversion, plus a `loss_weight` feature.

SeqIO's `EncDecFeatureConverter` keeps only `inputs`/`targets` and sets `decoder_loss_weights`
to the non-padding mask, so a task's per-example weight (e.g. Distilled CoT's α for label
rows and 1-α for rationale rows, `fiat_t5x.rationales.injection`) is dropped on the way to
the model. `WeightedEncDecFeatureConverter` produces the same features and multiplies
`decoder_loss_weights` (then float32) by each example's `loss_weight` (1 when absent), row by
row as SeqIO converts it (one pass over the input); the model's loss
(`EncoderDecoderModel.loss`) already weights every token by it.

Unpacked only: after packing, a row holds several examples, and SeqIO's packer handles
integer features only, so a packed weighted converter would have to quantise the weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf

WEIGHT_FEATURE = "loss_weight"


class WeightedEncDecFeatureConverter(seqio.EncDecFeatureConverter):
    """EncDecFeatureConverter whose decoder_loss_weights are scaled by `loss_weight`."""

    MODEL_FEATURES = {
        **seqio.EncDecFeatureConverter.MODEL_FEATURES,
        "decoder_loss_weights": seqio.FeatureConverter.FeatureSpec(dtype=tf.float32),
    }

    def __init__(self, pack: bool = False, **kwargs) -> None:
        if pack:
            raise ValueError(
                "WeightedEncDecFeatureConverter: per-example loss weights need pack=False "
                "(set DatasetConfig.pack = False for weighted tasks)"
            )
        super().__init__(pack=False, **kwargs)

    def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
        # The padded example still carries its task features, `loss_weight` among them: the
        # weight travels with its row through one pass (no second read of the input to zip).
        out = dict(super()._convert_example(features))
        mask = tf.cast(out["decoder_loss_weights"], tf.float32)
        weight = tf.cast(features.get(WEIGHT_FEATURE, 1.0), tf.float32)
        out["decoder_loss_weights"] = mask * weight
        return out
