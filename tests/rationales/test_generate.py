"""The generation job in-process against the fake server: every example ends with exactly one
rationale or one recorded failure, resume asks only for what is missing, and replay works."""

from __future__ import annotations

import json

import pytest

from fiat_t5x.rationales.fake_openai import FakeOpenAIServer, Reply, quote_last_line
from fiat_t5x.rationales.generate import Example, generate_rationales, identity_for
from fiat_t5x.rationales.prompts import PromptError, load_prompt
from fiat_t5x.rationales.providers.openai_http import OpenAIProvider
from fiat_t5x.rationales.providers.replay import ReplayProvider
from fiat_t5x.rationales.store import RationaleStore, StoreMismatchError

from .helpers import question, rationale_counts, write_ibeta

SCRIPT = {
    "[perm]": [Reply.error(422)],
    "[down]": [Reply.error(503)] * 50,
    "[flaky]": [Reply.error(429, retry_after="0.01"), Reply.error(500), Reply.dropped()],
    "[json]": [Reply.broken_json()],
}
TAGS = {3: " [perm]", 7: " [down]", 11: " [flaky]", 12: " [flaky]", 20: " [json]"}


def examples(n: int) -> list[Example]:
    return [Example(f"ex-{i}", {"question": question(i, TAGS.get(i, ""))}) for i in range(n)]


def provider(server: FakeOpenAIServer) -> OpenAIProvider:
    return OpenAIProvider(
        base_url=server.base_url,
        model="m",
        api_key_env="",
        concurrency=6,
        max_attempts=4,
        backoff_initial_s=0.005,
        backoff_max_s=0.02,
        seed=0,
    )


def run_job(tmp_path, server, data, **kwargs):
    prompt = load_prompt(write_ibeta(tmp_path), "toy")
    beta = provider(server)
    with beta, RationaleStore.open_for_writing(tmp_path / "store", identity_for(beta, prompt)) as s:
        summary = generate_rationales(
            data, task="toy", split="train", prompt=prompt, provider=beta, store=s, **kwargs
        )
    return summary, RationaleStore.open_readonly(tmp_path / "store"), prompt


def test_every_example_ends_with_one_rationale_or_one_failure(tmp_path):
    data = examples(40)
    with FakeOpenAIServer(script=SCRIPT) as server:
        summary, store, prompt = run_job(tmp_path, server, data, progress=False)
    texts = store.texts("toy", "train")
    failures = store.failures("toy", "train")
    assert set(texts) | set(failures) == {e.example_id for e in data}
    assert not set(texts) & set(failures)
    assert max(rationale_counts(tmp_path / "store").values()) == 1
    for example in data:  # each rationale answers its own example's prompt
        if example.example_id in texts:
            assert texts[example.example_id] == quote_last_line(prompt.render(example.fields))
    assert failures["ex-3"].permanent and failures["ex-3"].kind == "http_422"
    assert not failures["ex-7"].permanent and failures["ex-7"].attempts == 4
    assert set(failures) == {"ex-3", "ex-7"}
    record = store.rationale("toy", "train", "ex-11")
    other = store.rationale("toy", "train", "ex-12")
    assert record.attempts + other.attempts == 2 + 3  # the three scripted errors, shared
    assert record.model == "m" and record.provider == "openai_http"
    assert record.ibeta_sha256 == prompt.sha256 and record.decoding["temperature"] == 0.0
    assert record.prompt_tokens == len(prompt.render(data[11].fields).split())
    assert summary.generated == 38 and summary.failed_permanent == 1
    assert summary.failed_transient == 1 and summary.remaining == 1


def test_resume_asks_only_for_what_is_missing(tmp_path):
    data = examples(30)
    with FakeOpenAIServer(script=SCRIPT) as server:
        run_job(tmp_path, server, data[:20], progress=False)
        before = len(server.requests)
        summary, store, _ = run_job(tmp_path, server, data, progress=False)
        again = server.requests[before:]
    # ten new examples plus the retryable failure (ex-7 again 4 times); ex-3 (422) is settled
    asked = [r.prompt.rsplit("Q: ", 1)[1].removesuffix("\nA: ") for r in again]
    assert sorted(set(asked)) == sorted({question(i, TAGS.get(i, "")) for i in [7, *range(20, 30)]})
    assert summary.already_done == 18 and summary.already_failed == 1
    assert max(rationale_counts(tmp_path / "store").values()) == 1
    with FakeOpenAIServer() as healthy:
        summary, store, _ = run_job(tmp_path, healthy, data, retry_failed=True, progress=False)
        assert healthy.count("[perm]") == 1 and healthy.count("[down]") == 1
    assert len(store.texts("toy", "train")) == 30 and summary.remaining == 0


def test_a_changed_prompt_is_refused(tmp_path):
    data = examples(3)
    with FakeOpenAIServer() as server:
        run_job(tmp_path, server, data, progress=False)
        (tmp_path / "ibeta.json").unlink()
        prompt = load_prompt(write_ibeta(tmp_path), "toy")
        edited = prompt.__class__(**{**prompt.__dict__, "instruction": "Think harder."})
        beta = provider(server)
        with pytest.raises(StoreMismatchError, match="ibeta_sha256"):
            RationaleStore.open_for_writing(tmp_path / "store", identity_for(beta, edited))


def test_duplicate_ids_are_refused(tmp_path):
    with FakeOpenAIServer() as server, pytest.raises(ValueError, match="duplicate example ids"):
        run_job(tmp_path, server, examples(2) + examples(1), progress=False)


def test_replay_provider_fills_a_store_and_names_missing_ids(tmp_path):
    replay = tmp_path / "replay.jsonl"
    lines = [
        {"id": f"ex-{i}", "rationale": f"replayed {i}", "completion_tokens": 2} for i in (0, 2)
    ]
    replay.write_text("".join(json.dumps(line) + "\n" for line in lines))
    prompt = load_prompt(write_ibeta(tmp_path), "toy")
    beta = ReplayProvider(str(replay), model="palm2-l offline")
    with RationaleStore.open_for_writing(tmp_path / "s", identity_for(beta, prompt)) as store:
        summary = generate_rationales(
            examples(3),
            task="toy",
            split="train",
            prompt=prompt,
            provider=beta,
            store=store,
            progress=False,
        )
        assert store.texts("toy", "train") == {"ex-0": "replayed 0", "ex-2": "replayed 2"}
        failure = store.failures("toy", "train")["ex-1"]
    assert failure.permanent and "ex-1" in failure.message and str(replay) in failure.message
    assert summary.completion_tokens == 4
    assert beta.identity()["model"] == "palm2-l offline"


def test_an_example_the_template_cannot_render_stops_the_job_before_any_request(tmp_path):
    data = examples(5) + [Example("odd-one", {"text": "no question field"})]
    with FakeOpenAIServer() as server:
        with pytest.raises(PromptError, match=r"example id 'odd-one' of toy/train: .*\{question\}"):
            run_job(tmp_path, server, data, progress=False)
        assert server.requests == []
