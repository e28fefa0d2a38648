"""An in-process OpenAI-compatible server for tests, benchmarks and offline demos.

It speaks just enough of /v1/chat/completions and /v1/completions for our client, on 127.0.0.1
with an ephemeral port, and can be scripted to misbehave per prompt: fixed latency, 429 with
Retry-After, 5xx, malformed JSON, dropped connections, slow answers (client timeouts), and 4xx
errors that echo the Authorization header (to prove the client redacts the key).

The answer is a deterministic function of the prompt (by default it quotes the prompt's last
non-empty line), so a test can check that every stored rationale belongs to its own example. It
is a test double, not a language model: nothing it says is reasoning.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import http.server
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Reply:
    """One scripted reaction to a request.

    status 200 with body None sends a proper answer; `malformed` sends broken JSON with status 200;
    `drop` closes the connection without answering; `delay_s` sleeps before answering;
    `echo_auth` puts the request's Authorization header in an error body.
    """

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0
    drop: bool = False
    malformed: bool = False
    echo_auth: bool = False

    @staticmethod
    def ok(delay_s: float = 0.0) -> Reply:
        return Reply(delay_s=delay_s)

    @staticmethod
    def error(status: int, retry_after: str | None = None) -> Reply:
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        return Reply(status=status, headers=headers)

    @staticmethod
    def dropped() -> Reply:
        return Reply(drop=True)

    @staticmethod
    def broken_json() -> Reply:
        return Reply(malformed=True)


def quote_last_line(prompt: str) -> str:
    """The default answer: a fixed sentence around the prompt's last two non-empty lines and a
    digest of the whole prompt, so that every distinct prompt gets a distinct answer."""
    lines = [line.strip() for line in prompt.splitlines() if line.strip()]
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8]
    return f"Reasoning about: {' / '.join(lines[-2:])} [{digest}]. So the answer is yes."


@dataclasses.dataclass
class Request:
    path: str
    body: dict[str, Any]
    authorization: str | None
    prompt: str
    arrived: float  # time.monotonic() when the request was read


class FakeOpenAIServer:
    """A scripted server; use as a context manager. `base_url` ends in /v1.

    Args:
      latency_s: added to every request before answering (a model's decoding time).
      script: prompt substring -> replies consumed in order by matching requests; once a list is
        exhausted, matching requests get a normal answer. The first matching substring wins.
      answer: prompt -> completion text.
      api_key: when set, requests without "Authorization: Bearer <api_key>" get a 401.
    """

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        script: dict[str, list[Reply]] | None = None,
        answer: Callable[[str], str] = quote_last_line,
        api_key: str | None = None,
    ) -> None:
        self.latency_s = latency_s
        self.answer = answer
        self.api_key = api_key
        self._script = {k: collections.deque(v) for k, v in (script or {}).items()}
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests handled at once: checks client concurrency
        self.answered: list[float] = []  # time.monotonic() of every non-200 answer sent
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.02,), name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    # --- behaviour -----------------------------------------------------------------------------

    def next_reply(self, prompt: str) -> Reply:
        with self._lock:
            for needle, replies in self._script.items():
                if needle in prompt:
                    return replies.popleft() if replies else Reply.ok()
        return Reply.ok()

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def count(self, needle: str) -> int:
        """Requests whose prompt contains `needle`."""
        with self._lock:
            return sum(needle in r.prompt for r in self.requests)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    fake: FakeOpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer (killed, timed out) is normal here; anything
        else is reported as usual."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm the body would wait for the
    # client's delayed ACK (~40 ms), a latency real servers do not add.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silent: test output stays readable."""

    def _send(self, status: int, payload: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        fake = self.server.fake
        fake.enter()
        try:
            self._answer(fake)
        finally:
            fake.leave()

    def _answer(self, fake: FakeOpenAIServer) -> None:
        length = int(self.headers.get("Content-Length", 0))
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            self._send(400, b'{"error": {"message": "body is not JSON"}}')
            return
        chat = self.path.endswith("/chat/completions")
        if not chat and not self.path.endswith("/completions"):
            self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
            return
        prompt = body["messages"][-1]["content"] if chat else body.get("prompt", "")
        auth = self.headers.get("Authorization")
        fake.record(Request(self.path, body, auth, prompt, time.monotonic()))
        reply = fake.next_reply(prompt)
        time.sleep(fake.latency_s + reply.delay_s)
        if fake.api_key is not None and auth != f"Bearer {fake.api_key}":
            self._send(401, b'{"error": {"message": "invalid api key"}}')
            return
        if reply.drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if reply.echo_auth:
            message = f"bad request; you sent Authorization: {auth}"
            self._send(reply.status, json.dumps({"error": {"message": message}}).encode())
            return
        if reply.status != 200:
            payload = json.dumps({"error": {"message": f"scripted {reply.status}"}}).encode()
            self._send(reply.status, payload, reply.headers)
            fake.answered.append(time.monotonic())
            return
        if reply.malformed:
            self._send(200, b'{"choices": [{"message": {"content": "trunc')
            return
        text = fake.answer(prompt)
        for stop in body.get("stop") or ():
            if stop in text:
                text = text[: text.index(stop)]
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        usage = {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": len(text.split()),
            "total_tokens": len(prompt.split()) + len(text.split()),
        }
        payload = {
            "id": "fake",
            "object": "chat.completion" if chat else "text_completion",
            "model": body.get("model"),
            "choices": [choice],
            "usage": usage,
        }
        self._send(200, json.dumps(payload).encode("utf-8"))
