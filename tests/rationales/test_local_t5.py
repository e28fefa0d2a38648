"""The local T5 provider: batched, fixed-shape decoding gives the same text as one direct
`predict_batch` call on differently padded inputs; too-long prompts fail permanently; a job
writes its rationales with local token counts."""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest

from fiat_t5x.models import presets
from fiat_t5x.models.model import EncoderDecoderModel
from fiat_t5x.rationales.generate import Example, generate_rationales, identity_for
from fiat_t5x.rationales.prompts import load_prompt
from fiat_t5x.rationales.providers.base import Failure, Generation
from fiat_t5x.rationales.providers.local_t5 import LocalDecoding, LocalT5Provider
from fiat_t5x.rationales.store import RationaleStore

from .helpers import write_ibeta

DECODE = 8
GIN = pathlib.Path(__file__).resolve().parents[2] / "gin"


class Bytes:
    """ByteVocabulary's id layout (0 pad, 1 EOS, 2 unk, byte b -> b + 3), written out by hand."""

    def encode(self, s: str) -> list[int]:
        return [b + 3 for b in s.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - 3 for i in ids if 3 <= i < 259).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def beta():
    model = EncoderDecoderModel(presets.micro())
    return model, model.init_params(jax.random.PRNGKey(3))


def test_batched_decoding_matches_a_direct_predict_batch(beta):
    model, params = beta
    prompts = ["a", "hello there", "zz top", "Ünïcode ok", "one more prompt"]
    settings = LocalDecoding(batch_size=3, max_input_length=32, max_decode_length=DECODE)
    provider = LocalT5Provider(model, params, Bytes(), model_name="tiny", decoding=settings)
    got = dict(provider.generate(enumerate(prompts)))
    assert len({g.text for g in got.values()}) > 1  # the rows really are different decodes
    # reference: all five in one batch, padded to another length, decoded directly
    tokens = np.zeros((len(prompts), 40), np.int32)
    for row, prompt in enumerate(prompts):
        ids = Bytes().encode(prompt) + [1]
        tokens[row, : len(ids)] = ids
    ref = np.asarray(
        model.predict_batch(params, {"encoder_input_tokens": tokens}, max_decode_length=DECODE)
    )
    for row, prompt in enumerate(prompts):
        out = ref[row].tolist()
        length = out.index(1) if 1 in out else DECODE
        assert got[row] == Generation(
            text=Bytes().decode(out[:length]),
            prompt_tokens=len(Bytes().encode(prompt)) + 1,
            completion_tokens=length,
            finish_reason="stop" if 1 in out else "length",
        )


def test_too_long_prompt_is_a_permanent_failure(beta):
    model, params = beta
    settings = LocalDecoding(batch_size=3, max_input_length=32, max_decode_length=DECODE)
    provider = LocalT5Provider(model, params, Bytes(), model_name="tiny", decoding=settings)
    got = dict(provider.generate([("long", "x" * 40), ("short", "hi")]))
    assert isinstance(got["long"], Failure) and got["long"].permanent
    assert "41 tokens" in got["long"].message and "max_input_length=32" in got["long"].message
    assert isinstance(got["short"], Generation)


def test_job_with_the_local_provider(beta, tmp_path):
    model, params = beta
    prompt = load_prompt(write_ibeta(tmp_path), "toy")
    settings = LocalDecoding(batch_size=3, max_input_length=128, max_decode_length=DECODE)
    provider = LocalT5Provider(model, params, Bytes(), model_name="tiny@0", decoding=settings)
    examples = [Example(f"ex-{i}", {"question": f"{i}+{i}?"}) for i in range(4)]
    with RationaleStore.open_for_writing(tmp_path / "s", identity_for(provider, prompt)) as store:
        summary = generate_rationales(
            examples,
            task="toy",
            split="train",
            prompt=prompt,
            provider=provider,
            store=store,
            progress=False,
        )
    assert summary.generated == 4 and summary.remaining == 0
    store = RationaleStore.open_readonly(tmp_path / "s")
    record = store.rationale("toy", "train", "ex-2")
    assert record.provider == "local_t5" and record.model == "tiny@0"
    assert record.prompt_tokens == len(Bytes().encode(prompt.render({"question": "2+2?"}))) + 1
    assert store.identity.decoding == {
        "method": "greedy",
        "max_input_length": 128,
        "max_decode_length": DECODE,
    }


def test_gin_built_checkpoint_provider_loads_on_first_use(shared_dir, tmp_path):
    import gin
    from fiat_t5x.rationales.job import RationaleJob
    from fiat_t5x.rationales.providers.t5_checkpoint import T5CheckpointProvider

    checkpoint = shared_dir / "fixtures" / "t5x_tiny_checkpoint" / "legacy" / "checkpoint_1000"
    gin.clear_config()
    gin.parse_config_files_and_bindings(
        [str(GIN / "runs" / "rationales.gin"), str(GIN / "fiat" / "beta" / "local_t5.gin")],
        [
            f"BETA_CHECKPOINT = '{checkpoint}'",
            "BETA_VOCABULARY = 'byte'",
            "BETA_MODEL = 'fixture@1000'",
            "t5_checkpoint.T5CheckpointProvider.batch_size = 2",
            "t5_checkpoint.T5CheckpointProvider.max_input_length = 64",
            f"t5_checkpoint.T5CheckpointProvider.max_decode_length = {DECODE}",
        ],
        finalize_config=False,
    )
    try:
        job = gin.get_configurable(RationaleJob)(store_dir="s", task="t", ibeta_file="i")
    finally:
        gin.clear_config()
    provider = job.beta
    assert isinstance(provider, T5CheckpointProvider)
    assert "loaded" not in vars(provider)  # building it read nothing
    assert provider.identity() == {
        "kind": "local_t5_checkpoint",
        "model": "fixture@1000",
        "vocabulary": "byte",
    }
    assert provider.decoding()["method"] == "greedy"
    ((key, outcome),) = provider.generate([("k", "hello")])
    assert key == "k" and isinstance(outcome, Generation)
    assert outcome.prompt_tokens == len("hello") + 1  # seqio's byte ids, plus EOS
    assert provider.loaded.model.config.emb_dim == 64  # inferred from the checkpoint
