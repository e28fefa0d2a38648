"""An OpenAI-compatible server written for the fault tests, independent of the package's fake
server: every test states how it answers (`Behaviour`), down to the bytes on the socket.

It listens on 127.0.0.1 (ephemeral port), answers /v1/chat/completions with a text derived from
the prompt, and records every request's path (query string included), headers and prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import threading
import time
from collections.abc import Callable

ANSWER_PREFIX = "scripted answer to: "


@dataclasses.dataclass
class Seen:
    path: str
    authorization: str | None
    prompt: str
    arrived: float


@dataclasses.dataclass
class Reply:
    """What to send: a status and body, optionally trickled `chunk` bytes every `every_s`."""

    status: int = 200
    body: bytes | None = None  # None: a proper chat completion for the prompt
    headers: tuple[tuple[str, str], ...] = ()
    chunk: int = 0
    every_s: float = 0.0
    trickle_headers: bool = False


# (the request) -> the reply; the default answers every prompt.
Behaviour = Callable[[Seen], Reply]


def answer_text(prompt: str) -> str:
    """The answer to `prompt`: distinct per prompt, so a stored text names its example."""
    return ANSWER_PREFIX + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def completion(prompt: str) -> bytes:
    text = answer_text(prompt)
    return json.dumps(
        {
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
        }
    ).encode()


def answer_all(seen: Seen) -> Reply:
    return Reply()


class ScriptedServer:
    """Use as a context manager; `url` is the root (add "/v1" for a base_url)."""

    def __init__(self, behaviour: Behaviour = answer_all, latency_s: float = 0.0) -> None:
        self.behaviour = behaviour
        self.latency_s = latency_s
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self._httpd: http.server.ThreadingHTTPServer | None = None

    def __enter__(self) -> ScriptedServer:
        handler = type("Handler", (_Handler,), {"owner": self})
        self._httpd = _Httpd(("127.0.0.1", 0), handler)
        threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def prompts(self) -> list[str]:
        with self.lock:
            return [s.prompt for s in self.seen]


class _Httpd(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001 - stdlib signature
        """Clients killed mid-answer are expected here; stay quiet."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    owner: ScriptedServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        messages = body.get("messages") or [{"content": body.get("prompt", "")}]
        seen = Seen(
            self.path, self.headers.get("Authorization"), messages[-1]["content"], time.monotonic()
        )
        with self.owner.lock:
            self.owner.seen.append(seen)
        time.sleep(self.owner.latency_s)
        reply = self.owner.behaviour(seen)
        payload = completion(seen.prompt) if reply.body is None else reply.body
        head = [f"HTTP/1.1 {reply.status} Scripted\r\n".encode()]
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        head += [f"{k}: {v}\r\n".encode() for k, v in [*headers, *reply.headers]]
        head.append(b"\r\n")
        if reply.trickle_headers:
            self._trickle(b"".join(head), reply)
        else:
            self.wfile.write(b"".join(head))
        if reply.chunk:
            self._trickle(payload, reply)
        else:
            self.wfile.write(payload)
        self.wfile.flush()

    def _trickle(self, data: bytes, reply: Reply) -> None:
        step = reply.chunk or 1
        for i in range(0, len(data), step):
            self.wfile.write(data[i : i + step])
            self.wfile.flush()
            time.sleep(reply.every_s)
