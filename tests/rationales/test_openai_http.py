"""The OpenAI-compatible provider against the in-process fake server: wire format, retries,
permanent errors, concurrency bound, the Retry-After pause, and that the key never leaks."""

from __future__ import annotations

import email.utils
import logging
import random
import time

import pytest

from fiat_t5x.rationales.fake_openai import FakeOpenAIServer, Reply, quote_last_line
from fiat_t5x.rationales.providers.base import Failure, Generation, ProviderConfigError
from fiat_t5x.rationales.providers.openai_http import (
    OpenAIProvider,
    backoff_delay,
    parse_retry_after,
)

KEY = "sk-test-SECRET-4f9a0c"
FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 2.0}


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("FIAT_TEST_BETA_KEY", KEY)
    return "FIAT_TEST_BETA_KEY"


def provider(server, key_env, **overrides) -> OpenAIProvider:
    options = {"model": "beta-model", "api_key_env": key_env, **FAST, **overrides}
    return OpenAIProvider(base_url=server.base_url, **options, seed=0)


def run(p: OpenAIProvider, prompts: list[str]) -> dict[str, object]:
    with p:
        return dict(p.generate((prompt, prompt) for prompt in prompts))


def test_chat_request_and_answer(key_env):
    with FakeOpenAIServer(api_key=KEY) as server:
        p = provider(server, key_env, stop=("\n\n",), max_tokens=17, system_prompt="be brief")
        out = run(p, ["Q: one\nA:"])
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.authorization == f"Bearer {KEY}"
    assert request.body == {
        "model": "beta-model",
        "temperature": 0.0,
        "max_tokens": 17,
        "stop": ["\n\n"],
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "Q: one\nA:"},
        ],
    }
    assert out["Q: one\nA:"] == Generation(
        text=quote_last_line("Q: one\nA:"),
        prompt_tokens=3,
        completion_tokens=len(quote_last_line("Q: one\nA:").split()),
        finish_reason="stop",
        attempts=1,
    )


def test_completions_endpoint_sends_the_raw_prompt(key_env):
    with FakeOpenAIServer() as server:
        out = run(provider(server, key_env, endpoint="completions"), ["raw prompt"])
    (request,) = server.requests
    assert request.path == "/v1/completions"
    assert request.body["prompt"] == "raw prompt" and "messages" not in request.body
    assert out["raw prompt"].text == quote_last_line("raw prompt")


@pytest.mark.parametrize(
    "replies, kind",
    [
        ([Reply.error(500), Reply.error(502)], "http_5xx"),
        ([Reply.error(429, retry_after="0.05")], "http_429"),
        ([Reply.broken_json()], "malformed"),
        ([Reply.dropped(), Reply.dropped()], "dropped"),
        ([Reply.ok(delay_s=0.6)], "timeout"),
    ],
)
def test_transient_errors_are_retried_until_success(key_env, replies, kind):
    with FakeOpenAIServer(script={"flaky": replies}) as server:
        out = run(provider(server, key_env, timeout_s=0.3), ["flaky one"])
    result = out["flaky one"]
    assert isinstance(result, Generation), result
    assert result.text == quote_last_line("flaky one")
    assert result.attempts == len(replies) + 1 == server.count("flaky")


def test_permanent_error_is_not_retried(key_env):
    with FakeOpenAIServer(script={"bad": [Reply.error(400)] * 5}) as server:
        out = run(provider(server, key_env), ["bad request", "good request"])
    assert out["bad request"] == Failure(
        "http_400", out["bad request"].message, permanent=True, attempts=1
    )
    assert "HTTP 400" in out["bad request"].message
    assert server.count("bad") == 1
    assert isinstance(out["good request"], Generation)


def test_exhausted_retries_become_a_retryable_failure(key_env):
    with FakeOpenAIServer(script={"down": [Reply.error(503)] * 10}) as server:
        out = run(provider(server, key_env, max_attempts=3), ["down"])
    failure = out["down"]
    assert isinstance(failure, Failure) and not failure.permanent
    assert failure.kind == "http_503" and failure.attempts == 3 == server.count("down")
    assert "gave up after 3 attempts" in failure.message


def test_concurrency_is_bounded_and_used(key_env):
    prompts = [f"p{i}" for i in range(24)]
    with FakeOpenAIServer(latency_s=0.05) as server:
        out = run(provider(server, key_env, concurrency=4), prompts)
    assert set(out) == set(prompts)
    assert all(isinstance(v, Generation) for v in out.values())
    assert server.max_in_flight == 4


def test_retry_after_pauses_every_worker(key_env):
    pause = 0.6
    prompts = ["slow-down"] + [f"other {i}" for i in range(30)]
    script = {"slow-down": [Reply.error(429, retry_after=str(pause))]}
    with FakeOpenAIServer(latency_s=0.02, script=script) as server:
        out = run(provider(server, key_env, concurrency=3), prompts)
    assert all(isinstance(v, Generation) for v in out.values())
    (told,) = server.answered
    # Requests already sent may land just after the 429; none may start well inside the pause.
    inside = [r for r in server.requests if told + 0.15 < r.arrived < told + pause - 0.05]
    assert inside == []
    retried = [r.arrived for r in server.requests if r.prompt == "slow-down"][1]
    assert retried >= told + pause - 0.02


def test_api_key_never_leaks(key_env, caplog):
    script = {
        "echo-perm": [Reply(status=400, echo_auth=True)],
        "echo-transient": [Reply(status=503, echo_auth=True)] * 5,
    }
    with caplog.at_level(logging.DEBUG), FakeOpenAIServer(api_key=KEY, script=script) as server:
        p = provider(server, key_env, max_attempts=2)
        out = run(p, ["echo-perm", "echo-transient"])
    assert server.requests[0].authorization == f"Bearer {KEY}"  # it was sent...
    for outcome in out.values():
        assert isinstance(outcome, Failure) and "Authorization: Bearer" in outcome.message
        assert KEY not in outcome.message and "<redacted>" in outcome.message  # ...not kept
    assert "attempt 1/2 failed" in caplog.text and KEY not in caplog.text
    assert KEY not in repr(p) and KEY not in str(vars(p))


def test_configuration_errors_are_explained_by_check_not_by_building(monkeypatch):
    """Building β records settings only (gin builds it in training runs, without a key);
    `check()` names every problem before any request."""
    monkeypatch.delenv("FIAT_UNSET_KEY", raising=False)
    unset_key = OpenAIProvider(
        base_url="http://127.0.0.1:1/v1", model="m", api_key_env="FIAT_UNSET_KEY"
    )
    assert unset_key.identity()["model"] == "m"  # usable for identity checks as it is
    with pytest.raises(ProviderConfigError, match="FIAT_UNSET_KEY.*not set"):
        unset_key.check()
    with pytest.raises(ProviderConfigError, match="must not contain credentials"):
        OpenAIProvider(base_url="http://user:pw@127.0.0.1/v1", model="m").check()
    with pytest.raises(ProviderConfigError, match="endpoint"):
        OpenAIProvider(base_url="http://127.0.0.1/v1", model="m", endpoint="embeddings").check()
    with pytest.raises(ProviderConfigError, match="max_unsaved=4 must be >= concurrency=8"):
        OpenAIProvider(base_url="http://127.0.0.1/v1", model="m", max_unsaved=4).check_settings()
    OpenAIProvider(base_url="http://127.0.0.1:1/v1", model="m", api_key_env="").check()


def test_retry_after_parsing_and_backoff_bounds():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now=now) <= 31
    rng = random.Random(0)
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (8, 10.0)]:
        delays = [backoff_delay(attempt, 1.0, 10.0, rng) for _ in range(200)]
        assert cap / 2 <= min(delays) and max(delays) <= cap
        assert max(delays) - min(delays) > cap / 4  # jittered, not constant
