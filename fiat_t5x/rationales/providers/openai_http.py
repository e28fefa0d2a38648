"""An OpenAI-compatible HTTP client for β (vLLM, TGI, llama.cpp's server and hosted APIs).

Standard library only: `http.client` with one keep-alive connection per worker thread and a
bounded thread pool. Bound in gin:

    BETA = @openai_http.OpenAIProvider()
    openai_http.OpenAIProvider.base_url = 'http://HOST:8000/v1'
    openai_http.OpenAIProvider.model = 'MODEL'

What a failed request means decides what happens (a paid API must not be asked in vain):
  - about one example (400, 413, 422): a permanent failure of that example, at once;
  - passing trouble (408, 409, 425, 429, 5xx, timeouts, dropped connections, a 200 whose body is
    not the JSON we expect): retried with capped exponential backoff and jitter; a
    `Retry-After` pauses every worker, because the server is telling the whole client to slow
    down; after `max_attempts` a retryable failure (a rerun asks again);
  - about the endpoint (401, 403, 404/405 on the route, other 4xx, redirects, and
    `max_connection_failures` refused/unresolvable connections in a row with no success in
    between): `EndpointError`, the job stops with one message saying what to fix and records
    nothing for it.
`timeout_s` is a deadline for the whole request (connect, send, headers and body), enforced by
a watchdog (`deadlines.py`), so a trickled answer cannot outlive it.

The API key is read from the environment variable whose *name* is configured, only when
requests are about to be sent (a training run builds this object to compare β's identity and
needs no key). Every message that leaves this module is redacted (`redaction.py`): the key,
any fragment of it, and credential-like query values of the base URL.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import email.utils
import http.client
import itertools
import json
import logging
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import Any

import gin
from fiat_t5x.rationales.providers.base import (
    EndpointError,
    Failure,
    Generation,
    Outcome,
    Provider,
    ProviderConfigError,
    check_all_set,
)
from fiat_t5x.rationales.providers.deadlines import Deadlines
from fiat_t5x.rationales.redaction import Redactor, Secret, credential_query_values, public_url

logger = logging.getLogger(__name__)

_ENDPOINT_PATHS = {"chat": "/chat/completions", "completions": "/completions"}
# Statuses about one example: recorded as a permanent failure of that example.
_EXAMPLE_STATUS = {400, 413, 422}
# Statuses worth retrying (besides 5xx).
_TRANSIENT_STATUS = {408, 409, 425, 429}
# Characters of an error body kept in a message (after redaction).
ERROR_BODY_CHARS = 300
BAD_ANSWER_CHARS = 200
# The kind of the outcome of a request the stopping job no longer waited for: never recorded.
CANCELLED = "cancelled"


@dataclasses.dataclass(frozen=True)
class OpenAIConfig:
    """The provider's settings, as plain data (see `OpenAIProvider` for their meaning)."""

    base_url: str
    model: str
    endpoint: str = "chat"
    api_key_env: str | None = "OPENAI_API_KEY"
    temperature: float = 0.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    system_prompt: str | None = None
    timeout_s: float = 60.0
    concurrency: int = 8
    max_attempts: int = 6
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 600.0
    max_connection_failures: int = 20
    max_unsaved: int | None = None

    @property
    def window(self) -> int:
        """Requests sent or answered but not yet saved, at most (1.5 × concurrency by default)."""
        if self.max_unsaved is not None:
            return self.max_unsaved
        return self.concurrency + (self.concurrency + 1) // 2

    def problems(self) -> list[str]:
        """What is wrong with these settings, as `name: why` (empty when they can work)."""
        out = []
        if self.endpoint not in _ENDPOINT_PATHS:
            out.append(f"endpoint must be one of {sorted(_ENDPOINT_PATHS)}, got {self.endpoint!r}")
        parts = urllib.parse.urlsplit(self.base_url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            out.append(
                f"base_url must look like http(s)://host[:port]/v1, got {public_url(self.base_url)!r}"
            )
        if parts.username or parts.password:
            out.append(
                "base_url must not contain credentials; put the key in the environment variable "
                "named by api_key_env"
            )
        if not self.model:
            out.append("model is empty; set it to the served model's name")
        for name in ("concurrency", "max_attempts", "max_tokens", "max_connection_failures"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0:
            out.append(f"timeout_s must be positive, got {self.timeout_s}")
        if self.max_unsaved is not None and self.max_unsaved < self.concurrency:
            out.append(f"max_unsaved={self.max_unsaved} must be >= concurrency={self.concurrency}")
        return out


class _Transient(Exception):
    """A failed attempt worth retrying; `retry_after_s` is the server's request, if any."""

    def __init__(self, kind: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after_s = retry_after_s


class _Unreachable(_Transient):
    """No connection at all (refused, unresolvable host, connect timeout)."""


class _Permanent(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before retry number `attempt` (1-based): capped doubling with equal jitter."""
    cap = min(max_s, initial_s * (2 ** (attempt - 1)))
    return cap / 2 + rng.uniform(0, cap / 2)


@gin.configurable
class OpenAIProvider(Provider):
    """β behind an OpenAI-compatible server.

    Args:
      base_url: the API root including its version prefix, e.g. "http://127.0.0.1:8000/v1";
        "/chat/completions" or "/completions" is appended, and a query string is kept
        (Azure's `?api-version=...`). Must not carry user:password.
      model: the served model's name, sent as `model` and recorded as β's identity.
      endpoint: "chat" (the prompt is one user message) or "completions" (the prompt is sent
        raw: best for base models and exact few-shot formats).
      api_key_env: NAME of the environment variable holding the key ("" or None: no key).
      temperature: 0.0 (greedy) as in the FIAT paper.
      max_tokens: completion budget per request.
      stop: stop sequences (at most 4 for OpenAI's hosted API).
      system_prompt: optional system message for the chat endpoint.
      timeout_s: deadline of one request, from connecting to the last byte of the answer.
      concurrency: requests in flight at most.
      max_attempts: requests per prompt at most, the first one included.
      backoff_initial_s / backoff_max_s: the retry delay doubles from the initial value up to the
        cap; each delay is drawn uniformly from [cap/2, cap] (jitter) so workers do not align.
      max_retry_after_s: a server's Retry-After longer than this is cut to it.
      max_connection_failures: this many failed connection attempts in a row (refused,
        unresolvable, connect timeout) with no connection in between stop the job: β is
        unreachable.
      max_unsaved: requests sent or answered but not yet saved in the store, at most: what a
        kill -9 can cost in requests asked again (default 1.5 × concurrency, rounded up; at
        least `concurrency`). New requests start only once earlier answers are on disk.
      seed: seed of the backoff jitter (tests).
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        endpoint: str = "chat",
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: Sequence[str] = (),
        system_prompt: str | None = None,
        timeout_s: float = 60.0,
        concurrency: int = 8,
        max_attempts: int = 6,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        max_retry_after_s: float = 600.0,
        max_connection_failures: int = 20,
        max_unsaved: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.config = OpenAIConfig(
            base_url=base_url,
            model=model,
            endpoint=endpoint,
            api_key_env=api_key_env,
            temperature=temperature,
            max_tokens=max_tokens,
            stop=tuple(stop),
            system_prompt=system_prompt,
            timeout_s=timeout_s,
            concurrency=concurrency,
            max_attempts=max_attempts,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            max_retry_after_s=max_retry_after_s,
            max_connection_failures=max_connection_failures,
            max_unsaved=max_unsaved,
        )
        self._key: Secret | None = None
        self._key_loaded = False
        self._redactor = Redactor(
            credential_query_values(base_url) if isinstance(base_url, str) else ()
        )
        self._local = threading.local()
        self._open: set[http.client.HTTPConnection] = set()
        self._open_lock = threading.Lock()
        self._pause_lock = threading.Lock()
        self._not_before = 0.0
        self._stop = threading.Event()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._failures_lock = threading.Lock()
        self._connect_failures = 0
        self._deadlines = Deadlines()

    def __repr__(self) -> str:
        return f"OpenAIProvider({self.describe()!r})"

    # --- identity and settings -----------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        return {
            "kind": "openai_http",
            "model": self.config.model,
            "endpoint": self.config.endpoint,
            "system_prompt": self.config.system_prompt,
        }

    def decoding(self) -> dict[str, Any]:
        return {
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "stop": list(self.config.stop),
        }

    def describe(self) -> dict[str, Any]:
        settings = dataclasses.asdict(self.config)
        url = self.config.base_url
        settings["base_url"] = public_url(url) if isinstance(url, str) else repr(url)
        settings["stop"] = list(self.config.stop)
        return {"identity": self.identity(), "decoding": self.decoding(), "settings": settings}

    def check_settings(self) -> None:
        check_all_set(
            "openai_http.OpenAIProvider",
            vars(self.config),
            "set the macros of gin/fiat/beta/openai.gin, e.g. --gin.BETA_BASE_URL=\"'http://HOST:8000/v1'\" "
            "--gin.BETA_MODEL=\"'MODEL'\" (flags --base_url, --model)",
        )
        problems = self.config.problems()
        if problems:
            raise ProviderConfigError(f"openai_http.OpenAIProvider: {'; '.join(problems)}")

    def check(self) -> None:
        self.check_settings()
        self._load_key()

    def _load_key(self) -> None:
        if self._key_loaded:
            return
        name = self.config.api_key_env
        key = os.environ.get(name) if name else None
        if name and not key:
            raise ProviderConfigError(
                f"openai_http.OpenAIProvider.api_key_env names the environment variable "
                f"{name!r}, which is not set or empty; export it, or for a server without keys "
                "set BETA_API_KEY_ENV='' (--api_key_env '')"
            )
        self._key = Secret(key) if key else None
        self._key_loaded = True
        secrets = credential_query_values(self.config.base_url)
        self._redactor = Redactor([*secrets, *([key] if key else [])])

    # --- secrets -------------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        """`text` without the key, any fragment of it, or credential query values."""
        return self._redactor.redact(text)

    def _excerpt(self, raw: bytes, limit: int) -> str:
        """A redacted excerpt of a response body: redacted before and after the cut."""
        return self._redactor.cut(raw.decode("utf-8", "replace"), limit)

    # --- one request ---------------------------------------------------------------------------

    @property
    def _target(self) -> urllib.parse.SplitResult:
        return urllib.parse.urlsplit(self.config.base_url)

    def _request_path(self) -> str:
        parts = self._target
        path = parts.path.rstrip("/") + _ENDPOINT_PATHS[self.config.endpoint]
        return f"{path}?{parts.query}" if parts.query else path

    def _route(self) -> str:
        """The endpoint as it may be shown to a user."""
        return public_url(self.config.base_url.rstrip("/")) + _ENDPOINT_PATHS[self.config.endpoint]

    def _payload(self, prompt: str) -> dict[str, Any]:
        cfg = self.config
        body: dict[str, Any] = {
            "model": cfg.model,
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
        }
        if cfg.stop:
            body["stop"] = list(cfg.stop)
        if cfg.endpoint == "chat":
            messages = (
                [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
            )
            body["messages"] = [*messages, {"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            parts = self._target
            cls = (
                http.client.HTTPSConnection
                if parts.scheme == "https"
                else http.client.HTTPConnection
            )
            conn = cls(parts.hostname, parts.port, timeout=self.config.timeout_s)
            self._local.conn = conn
            with self._open_lock:
                self._open.add(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._open_lock:
                self._open.discard(conn)
            conn.close()

    def _connect(self, conn: http.client.HTTPConnection) -> None:
        """Opens `conn` if needed; counts consecutive failures to tell an unreachable β."""
        if conn.sock is not None:
            return
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as e:
            self._drop_connection()
            with self._failures_lock:
                self._connect_failures += 1
                failures = self._connect_failures
            reason = f"{type(e).__name__}: {e}"
            if failures >= self.config.max_connection_failures:
                raise EndpointError(
                    f"β at {public_url(self.config.base_url)} is unreachable: {failures} "
                    f"connection attempts in a row failed (last: {self.redact(reason)}). Check "
                    "base_url (host and port) and that the server is up; nothing was recorded "
                    "for the examples not yet answered, rerun the same command to continue"
                ) from None
            raise _Unreachable("connection", f"cannot connect: {reason}") from e
        with self._failures_lock:
            self._connect_failures = 0

    def _post(self, prompt: str) -> Generation:
        """One attempt. Raises _Transient, _Permanent or EndpointError; returns the answer."""
        body = json.dumps(self._payload(prompt)).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = "Bearer " + self._key.reveal()
        deadline = time.monotonic() + self.config.timeout_s
        conn = self._connection()
        late = _Transient(
            "timeout", f"no complete answer within timeout_s={self.config.timeout_s}s"
        )
        with self._deadlines.watch(conn, deadline) as watch:
            self._connect(conn)
            try:
                conn.request("POST", self._request_path(), body=body, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as e:
                self._drop_connection()
                if isinstance(e, TimeoutError) or watch.expired:
                    raise late from e
                raise _Transient("connection", f"{type(e).__name__}: {e}") from e
        if watch.expired:  # cut short by the watchdog: what was read is not the answer
            self._drop_connection()
            raise late
        if response.getheader("Connection", "").lower() == "close":
            self._drop_connection()
        return self._answer(response, raw)

    def _answer(self, response: http.client.HTTPResponse, raw: bytes) -> Generation:
        status = response.status
        if 200 <= status < 300:
            return self._parse(raw)
        excerpt = self._excerpt(raw, ERROR_BODY_CHARS)
        if status in _TRANSIENT_STATUS or status >= 500:
            retry_after = parse_retry_after(response.getheader("Retry-After"))
            raise _Transient(f"http_{status}", f"HTTP {status}: {excerpt}", retry_after)
        if status in _EXAMPLE_STATUS:
            raise _Permanent(f"http_{status}", f"HTTP {status}: {excerpt}")
        raise EndpointError(self._endpoint_advice(status, response, excerpt))

    def _endpoint_advice(
        self, status: int, response: http.client.HTTPResponse, excerpt: str
    ) -> str:
        """One message for a refusal that concerns every request, saying what to fix."""
        cfg = self.config
        where = f"POST {self._route()} answered HTTP {status}"
        if status == 401:
            fix = (
                f"the server rejected the API key from ${cfg.api_key_env}; export the right key"
                if cfg.api_key_env
                else "the server wants an API key; set api_key_env to the variable holding it"
            )
        elif status == 403:
            fix = f"the key is not allowed to use model {cfg.model!r} or this endpoint"
        elif status in (404, 405):
            fix = (
                "check base_url (it must end with the API's version prefix, e.g. "
                f"http://host:8000/v1), endpoint={cfg.endpoint!r} and model={cfg.model!r}"
            )
        elif 300 <= status < 400:
            location = self.redact(response.getheader("Location") or "?")
            fix = f"the server redirects to {location}; set base_url to the final address"
        else:
            fix = "this concerns every request, not one example; fix the β settings"
        return (
            f"{where} ({excerpt!r}): {fix}. The job stopped; nothing was recorded for the "
            "examples not yet answered, so rerun the same command after the fix"
        )

    def _parse(self, raw: bytes) -> Generation:
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            if self.config.endpoint == "chat":
                text = choice["message"]["content"]
            else:
                text = choice["text"]
            if not isinstance(text, str):
                raise TypeError(f"text is {type(text).__name__}, not a string")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            excerpt = self._excerpt(raw, BAD_ANSWER_CHARS)
            raise _Transient(
                "malformed_response",
                f"2xx with an unexpected body ({type(e).__name__}): {excerpt!r}",
            ) from None
        usage = data.get("usage") or {}
        return Generation(
            text=text,
            prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(usage.get("completion_tokens")),
            finish_reason=choice.get("finish_reason"),
        )

    # --- retries -------------------------------------------------------------------------------

    def _wait_for_pause(self) -> None:
        while not self._stop.is_set():
            with self._pause_lock:
                remaining = self._not_before - time.monotonic()
            if remaining <= 0:
                return
            self._stop.wait(remaining)

    def _pause_all(self, seconds: float) -> None:
        with self._pause_lock:
            self._not_before = max(self._not_before, time.monotonic() + seconds)

    def complete(self, prompt: str) -> Outcome:
        """β's answer for one prompt, retrying transient errors. Raises EndpointError only;
        a stopped job gives a `cancelled` failure, which the job does not record."""
        cfg = self.config
        last: _Transient | None = None
        attempt = 0
        for attempt in range(1, cfg.max_attempts + 1):
            self._wait_for_pause()
            if self._stop.is_set():
                break
            try:
                return dataclasses.replace(self._post(prompt), attempts=attempt)
            except EndpointError:
                self._stop.set()  # no other worker starts a request after this
                raise
            except _Permanent as e:
                return Failure(e.kind, str(e), permanent=True, attempts=attempt)
            except _Transient as e:
                last = e
            if attempt == cfg.max_attempts:
                break
            with self._rng_lock:
                delay = backoff_delay(attempt, cfg.backoff_initial_s, cfg.backoff_max_s, self._rng)
            if last.retry_after_s is not None:
                retry_after = min(last.retry_after_s, cfg.max_retry_after_s)
                self._pause_all(retry_after)
                delay = max(delay, retry_after)
            logger.info(
                "attempt %d/%d failed (%s): %s; retrying in %.2fs",
                attempt,
                cfg.max_attempts,
                last.kind,
                self._redactor.cut(str(last), BAD_ANSWER_CHARS),
                delay,
            )
            self._stop.wait(delay)
        if self._stop.is_set() or last is None:
            return Failure(CANCELLED, "the job stopped before an answer came", False, attempt)
        message = f"gave up after {attempt} attempts; last error: {self.redact(str(last))}"
        return Failure(last.kind, message, permanent=False, attempts=attempt)

    def generate(self, items: Iterable[tuple[Hashable, str]]) -> Iterator[tuple[Hashable, Outcome]]:
        for group in self.generate_batches(items):
            yield from group

    def generate_batches(
        self, items: Iterable[tuple[Hashable, str]]
    ) -> Iterator[list[tuple[Hashable, Outcome]]]:
        """Outcomes in completion order; new prompts are sent only after the previous group was
        consumed (saved), so in-flight plus unsaved answers never exceed `config.window`."""
        self.check()
        self._stop.clear()
        with self._failures_lock:
            self._connect_failures = 0
        items = iter(items)
        window = self.config.window
        pool = concurrent.futures.ThreadPoolExecutor(
            self.config.concurrency, thread_name_prefix="beta-http"
        )
        pending: dict[concurrent.futures.Future, Hashable] = {}

        def submit(n: int) -> None:
            for key, prompt in itertools.islice(items, n):
                pending[pool.submit(self.complete, prompt)] = key

        try:
            submit(window)
            while pending:
                done, _ = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED
                )
                group, error = [], None
                for future in done:
                    key = pending.pop(future)
                    try:
                        outcome = future.result()
                    except EndpointError as e:
                        self._stop.set()  # workers waiting to retry give up at once
                        error = error or e
                        continue
                    if not (isinstance(outcome, Failure) and outcome.kind == CANCELLED):
                        group.append((key, outcome))
                if group:
                    yield group
                if error is not None:
                    raise error
                submit(window - len(pending))
        finally:
            self._stop.set()
            for future in pending:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._stop.set()
        with self._open_lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            conn.close()
        self._deadlines.close()


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
