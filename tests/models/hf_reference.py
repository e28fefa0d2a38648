"""Helpers shared by the transformers / PEFT parity tests: tiny random HF models and batches."""

from __future__ import annotations

import numpy as np
import torch
import transformers

from fiat_t5x.models.checkpoints.hf_t5 import load_hf_t5

VOCAB = 96
ENC_LEN, DEC_LEN = 12, 7


def tiny_hf_model(family: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A small random HF model of `family` with non-trivial layer norms (ones would hide swaps)."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2,
        num_decoder_layers=2, dropout_rate=0.0, relative_attention_num_buckets=8,
        relative_attention_max_distance=20, decoder_start_token_id=0, pad_token_id=0,
        eos_token_id=1,
    )  # fmt: skip
    if family == "t5_1_1":  # gated GeLU, untied logits, unbalanced depth like ByT5
        config = transformers.T5Config(
            **{**common, "num_decoder_layers": 1},
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
        )
        model = transformers.T5ForConditionalGeneration(config)
    elif family == "t5_original":  # ReLU, tied and scaled logits
        config = transformers.T5Config(**common, feed_forward_proj="relu", tie_word_embeddings=True)
        model = transformers.T5ForConditionalGeneration(config)
    elif family == "mt5":
        config = transformers.MT5Config(**common, feed_forward_proj="gated-gelu")
        model = transformers.MT5ForConditionalGeneration(config)
    elif family == "umt5":
        config = transformers.UMT5Config(**common, feed_forward_proj="gated-gelu")
        model = transformers.UMT5ForConditionalGeneration(config)
    else:
        raise ValueError(family)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                param.uniform_(0.5, 1.5)
            elif name.endswith("lm_head.weight") and not model.config.tie_word_embeddings:
                param.normal_(0.0, 0.3)
            elif "relative_attention_bias" in name:
                param.normal_(0.0, 1.0)
    return model.eval()


def saved_tiny_hf_model(directory, family: str, seed: int = 0) -> tuple:
    """`tiny_hf_model` saved to `directory` and read back by our importer: (HF model, our
    T5Config, our params)."""
    model = tiny_hf_model(family, seed)
    model.save_pretrained(directory)
    config, params = load_hf_t5(str(directory))
    return model, config, params


def batch() -> dict[str, np.ndarray]:
    """Two padded examples in SeqIO EncDecFeatureConverter form (decoder inputs shifted right)."""
    rng = np.random.default_rng(0)
    enc = rng.integers(2, VOCAB, (2, ENC_LEN)).astype(np.int32)
    enc[0, 9:] = 0
    enc[0, 8] = 1
    enc[1, -1] = 1
    targets = rng.integers(2, VOCAB, (2, DEC_LEN)).astype(np.int32)
    targets[0, 4:] = 0
    targets[0, 3] = 1
    targets[1, -1] = 1
    inputs = np.zeros_like(targets)
    inputs[:, 1:] = targets[:, :-1]
    return {
        "encoder_input_tokens": enc,
        "decoder_input_tokens": inputs,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (targets > 0).astype(np.int32),
    }


def hf_logits(model, b: dict[str, np.ndarray]) -> np.ndarray:
    """[batch, target_len, vocab] fp32 logits of a HF (or PEFT-wrapped) seq2seq model."""
    enc = torch.tensor(b["encoder_input_tokens"], dtype=torch.long)
    with torch.no_grad():
        out = model(
            input_ids=enc,
            attention_mask=(enc > 0).long(),
            decoder_input_ids=torch.tensor(b["decoder_input_tokens"], dtype=torch.long),
        )
    return out.logits.float().numpy()


def hf_greedy(model, b: dict[str, np.ndarray], length: int) -> np.ndarray:
    """HF greedy decode without the leading decoder-start token, padded with 0 to `length`."""
    enc = torch.tensor(b["encoder_input_tokens"], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            input_ids=enc,
            attention_mask=(enc > 0).long(),
            do_sample=False,
            num_beams=1,
            max_new_tokens=length,
            min_new_tokens=0,
        ).numpy()[:, 1:]
    padded = np.zeros((out.shape[0], length), np.int32)
    padded[:, : out.shape[1]] = out
    return padded


def max_diff_on_targets(ours: np.ndarray, theirs: np.ndarray, b: dict[str, np.ndarray]) -> float:
    valid = b["decoder_loss_weights"] == 1
    return float(np.abs(np.asarray(ours) - theirs)[valid].max())
