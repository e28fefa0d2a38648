"""Whole-request deadlines for blocking `http.client` connections.

A socket timeout bounds each read, not the request: a server that trickles one byte a second
keeps a "60 s timeout" request alive forever. `Deadlines` runs one watchdog thread that shuts
down the socket of any request still running at its deadline; the blocked read then fails at
once and the caller reports a timeout. One thread serves every worker of a provider.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import socket
import threading
import time
from collections.abc import Iterator

# How often the watchdog looks at the running requests: the deadline's resolution.
POLL_S = 0.05


class Watch:
    """One watched request; `expired` turns True when the watchdog aborted it (whatever the
    reading thread then saw, e.g. headers cut short, is not an answer)."""

    def __init__(self, deadline: float, conn: http.client.HTTPConnection) -> None:
        self.deadline = deadline
        self.conn = conn
        self.expired = False


class Deadlines:
    """Aborts requests that outlive their deadline (use `watch` around each request)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, Watch] = {}
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, conn: http.client.HTTPConnection, deadline: float) -> Iterator[Watch]:
        """While the block runs, `conn`'s socket is shut down once time.monotonic() > deadline."""
        token = next(self._ids)
        watch = Watch(deadline, conn)
        with self._lock:
            self._running[token] = watch
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="beta-http-deadlines", daemon=True
                )
                self._thread.start()
        try:
            yield watch
        finally:
            with self._lock:
                self._running.pop(token, None)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            now = time.monotonic()
            # Under the lock: a request that `watch` has released is never aborted, even if its
            # connection is already serving the next one.
            with self._lock:
                for watch in self._running.values():
                    if watch.deadline <= now:
                        watch.expired = True
                        _abort(watch.conn)

    def close(self) -> None:
        """Stops the watchdog thread (a later `watch` starts a new one)."""
        with self._lock:
            thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(1.0)


def _abort(conn: http.client.HTTPConnection) -> None:
    """Wakes a thread blocked on `conn`'s socket. The plain socket method is used even for
    TLS sockets: SSLSocket.shutdown would drop its SSL object under the reading thread."""
    sock = conn.sock
    if sock is None:
        return
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
