"""Schedules (against hand-worked values) and the trainable/frozen split."""

import numpy as np
import pytest

from fiat_t5x.errors import UsageError
from fiat_t5x.training import optimizers


def test_rsqrt_schedule_is_t5x_constant_times_rsqrt_decay():
    schedule = optimizers.rsqrt_schedule(base=1.0, warmup_steps=100)
    assert float(schedule(0)) == pytest.approx(0.1)
    assert float(schedule(100)) == pytest.approx(0.1)
    assert float(schedule(400)) == pytest.approx(0.05)


def test_warmup_cosine_schedule():
    schedule = optimizers.warmup_cosine_schedule(
        peak=1.0, warmup_steps=10, decay_steps=110, end=0.0
    )
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(60)) == pytest.approx(0.5, abs=1e-6)  # half-way down the cosine
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-6)


def test_constant_schedule():
    assert float(optimizers.constant_schedule(3e-4)(12345)) == pytest.approx(3e-4)


PARAMS = {
    "encoder": {
        "layers_0": {
            "attention": {
                "query": {
                    "kernel": np.ones((4, 4)),
                    "lora_a": np.ones((4, 2)),
                    "lora_b": np.zeros((2, 4)),
                }
            },
            "mlp": {"wo": {"kernel": np.ones((4, 4))}},
        }
    },
    "token_embedder": {"embedding": np.ones((8, 4))},
}


def test_default_selector_trains_only_lora():
    trainable, frozen = optimizers.TrainableSelector().split(PARAMS)
    assert sorted(optimizers.flatten_params(trainable)) == [
        "encoder/layers_0/attention/query/lora_a",
        "encoder/layers_0/attention/query/lora_b",
    ]
    assert "token_embedder/embedding" in optimizers.flatten_params(frozen)
    merged = optimizers.merge_params(trainable, frozen)
    assert sorted(optimizers.flatten_params(merged)) == sorted(optimizers.flatten_params(PARAMS))


def test_full_fine_tuning_trains_everything():
    trainable, frozen = optimizers.TrainableSelector(patterns=optimizers.ALL_PATTERNS).split(PARAMS)
    assert frozen == {}
    assert len(optimizers.flatten_params(trainable)) == 5


def test_regex_selector_and_bf16_frozen_weights():
    params = {
        **PARAMS,
        "encoder_norm": {"scale": np.ones(4)},
        "relpos_bias": {"rel_embedding": np.ones((2, 32))},
    }
    selector = optimizers.TrainableSelector(patterns=[r".*/mlp/.*"], frozen_dtype="bfloat16")
    trainable, frozen = selector.split(params)
    assert list(optimizers.flatten_params(trainable)) == ["encoder/layers_0/mlp/wo/kernel"]
    assert trainable["encoder"]["layers_0"]["mlp"]["wo"]["kernel"].dtype == np.float64
    dtypes = {k: str(v.dtype) for k, v in optimizers.flatten_params(frozen).items()}
    # The weights the network casts before use are held in bf16; what it reads in fp32 is not.
    assert dtypes == {
        "encoder/layers_0/attention/query/kernel": "bfloat16",
        "encoder/layers_0/attention/query/lora_a": "float64",  # frozen here, but not a kernel
        "encoder/layers_0/attention/query/lora_b": "float64",
        "token_embedder/embedding": "bfloat16",
        "encoder_norm/scale": "float64",
        "relpos_bias/rel_embedding": "float64",
    }


def test_frozen_dtype_defaults_to_the_compute_dtype_and_an_explicit_one_wins():
    default = optimizers.TrainableSelector()
    assert default.frozen_dtype is None
    assert default.stored_dtype("decoder/layers_0/mlp/wo/kernel", np.float32) == np.float32
    assert default.resolved_for(None) is default
    resolved = default.resolved_for("bfloat16")
    assert resolved.frozen_dtype == "bfloat16" and resolved.patterns == default.patterns
    assert resolved.stored_dtype("decoder/layers_0/mlp/wo/kernel", np.float32) == "bfloat16"
    assert resolved.stored_dtype("decoder/decoder_norm/scale", np.float32) == np.float32
    assert resolved.stored_dtype("decoder/layers_0/mlp/wo/lora_a", np.float32) == np.float32
    explicit = optimizers.TrainableSelector(frozen_dtype="float32")
    assert explicit.resolved_for("bfloat16").frozen_dtype == "float32"


def test_a_frozen_dtype_that_is_no_dtype_is_a_usage_error():
    with pytest.raises(UsageError, match=r"frozen_dtype='bf16' is not a dtype: use 'bfloat16'"):
        optimizers.TrainableSelector(frozen_dtype="bf16")


def test_selector_that_matches_nothing_says_so():
    with pytest.raises(ValueError, match="match no parameter"):
        optimizers.TrainableSelector(patterns=["decoder/.*"]).split(PARAMS)
