"""Named small architectures for tests, benchmarks and quick local runs (no checkpoint needed).

Real model sizes live in gin (`gin/models/<family>/<size>.gin`); these exist so that tests and
benchmarks say which small model they mean instead of repeating eight numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fiat_t5x.models.config import T5Config


def tiny(**overrides: Any) -> T5Config:
    """The T5X test fixture's architecture (`shared/fixtures/t5x_tiny_checkpoint`, and
    gin/models/t5_1_1/tiny.gin): T5.1.1 gated GeLU, emb 64, 4 heads x 16, mlp 256, 2+2 layers,
    byte-level vocab of 384 ids, fp32 activations."""
    config = T5Config(
        vocab_size=384,
        emb_dim=64,
        num_heads=4,
        head_dim=16,
        mlp_dim=256,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dtype="float32",
    )
    return dataclasses.replace(config, **overrides)


def micro(**overrides: Any) -> T5Config:
    """The smallest model that still has every part (emb 32, 2 heads x 16, mlp 64, 1+1 layers,
    vocab 384, fp32): cheap to compile where only the plumbing around the model is tested."""
    config = tiny(emb_dim=32, num_heads=2, mlp_dim=64, num_encoder_layers=1, num_decoder_layers=1)
    return dataclasses.replace(config, **overrides)


def bench_small(**overrides: Any) -> T5Config:
    """The benchmarks' "small" model (bench/model_step.py, bench/train_throughput.py): emb 512, 8 heads x 64,
    mlp 1024, 6+6 layers, vocab 384, fp32; about 38M parameters."""
    config = tiny(emb_dim=512, num_heads=8, head_dim=64, mlp_dim=1024)
    return dataclasses.replace(config, num_encoder_layers=6, num_decoder_layers=6, **overrides)


def bench_medium(**overrides: Any) -> T5Config:
    """The benchmarks' "medium" model (bench/model_step.py): Flan-T5 base's width at half its
    depth: emb 768, 12 heads x 64, mlp 2048, 6+6 layers, vocab 32128, fp32; about 150M parameters."""
    config = tiny(vocab_size=32128, emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048)
    depth = {"num_encoder_layers": 6, "num_decoder_layers": 6}
    return dataclasses.replace(config, **{**depth, **overrides})


def flan_t5_small(**overrides: Any) -> T5Config:
    """Flan-T5 small's architecture (gin/models/flan_t5/small.gin) in fp32: vocab 32128, emb
    512, 6 heads x 64, mlp 1024, 8+8 layers; 77M parameters (bench/startup_memory.py)."""
    config = tiny(vocab_size=32128, emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024)
    depth = {"num_encoder_layers": 8, "num_decoder_layers": 8}
    return dataclasses.replace(config, **{**depth, **overrides})
