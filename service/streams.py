"""Long-lived responses (SSE) counted apart from ordinary requests, and the
one way the API streams: `open_stream` over `follow`.

Each open event stream holds one server thread for its whole life. The HTTP
server (service.http_server) gives streams their own threads, `limit` of
them, on top of the request threads: streams beyond the limit are refused
(503), so however many clients follow operations, the API keeps its threads.
`stopping` ends every stream at once when the server shuts down.

A stream reads the store when the store says its topic may have news
(service.notify), never on a timer of its own; an idle one gets a keep-alive
comment every KEEPALIVE seconds.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

from flask import Response, request

from service.notify import EventFeed
from service.problems import Problem

DEFAULT_LIMIT = 1024  # open streams per server process
KEEPALIVE = 15.0  # an idle stream gets a comment this often (proxies keep it open)
LONGEST = 3600.0  # a stream ends after this long; the client reconnects

# What a stream sends next: SSE chunks, and whether the stream is over.
Read = Callable[[], tuple[list[str], bool]]


class StreamGate:
    def __init__(self, limit: int = DEFAULT_LIMIT):
        self.limit = limit
        self.stopping = threading.Event()
        self._active = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        return self._active

    def enter(self) -> bool:
        """Take a stream slot; False when all `limit` are in use."""
        with self._lock:
            if self._active >= self.limit:
                return False
            self._active += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._active -= 1

    def hold(self, stream: Iterator[str]) -> Held:
        """`stream` as a response body that gives its slot back when closed
        (the server closes every body, even one never iterated)."""
        return Held(self, stream)


class Held:
    def __init__(self, gate: StreamGate, stream: Iterator[str]):
        self._gate, self._stream, self._open = gate, stream, True

    def __iter__(self) -> Iterator[str]:
        return self._stream

    def close(self) -> None:
        if self._open:
            self._open = False
            close = getattr(self._stream, "close", None)
            if close:
                close()
            self._gate.leave()


def follow(feed: EventFeed, topic: str, stop: threading.Event, read: Read,
           keepalive: float = KEEPALIVE, longest: float = LONGEST,
           gone: Callable[[], bool] = lambda: False) -> Iterator[str]:
    """An SSE body: what `read` returns, read again each time `feed` says
    `topic` may have news, until `read` says it is over, `stop` is set,
    `longest` has passed, or `gone()` says the client left (asked at each
    wake-up, so a stream whose client left stops reading the store at once).
    Something goes out at once (the response starts)."""
    feed.wake_on(stop)
    deadline = time.monotonic() + longest
    sent = float("-inf")
    while time.monotonic() < deadline and not stop.is_set() and not gone():
        seen = feed.version(topic)  # before reading: news after the read wakes the wait
        chunks, over = read()
        for chunk in chunks:
            sent = time.monotonic()
            yield chunk
        if over:
            return
        if time.monotonic() - sent >= keepalive:
            sent = time.monotonic()
            yield ": keep-alive\n\n"
        feed.wait(topic, seen, keepalive, stop)


def open_stream(gate: StreamGate, body: Callable[[Callable[[], bool]], Iterator[str]]
                ) -> Response:
    """An SSE response on a stream slot of its own; 503 when all are taken.
    `body(gone)`: the stream, given a check of whether its client has left."""
    if not gate.enter():
        raise Problem("unavailable", "too many open event streams; retry shortly",
                      headers={"Retry-After": "5"})
    return Response(gate.hold(body(client_gone(request.environ.get("gunicorn.socket")))),
                    mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})


def client_gone(sock: socket.socket | None) -> Callable[[], bool]:
    """Whether the client closed its end of `sock` (an SSE client sends nothing
    after its request: readable means closed, or reset). Without the socket
    (another server): never known; a write to it fails in the end."""
    def gone() -> bool:
        if sock is None:
            return False
        try:
            # Polled first (a recv on a socket with a timeout waits for data);
            # poll, not select: a server with 1000 streams has fds past 1024.
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0)) and sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:  # reset, or closed under us
            return True
    return gone


def event(kind: str, data: str, event_id: int | None = None) -> str:
    """One SSE event (`data` is one line of JSON)."""
    return (f"id: {event_id}\n" if event_id is not None else "") + \
        f"event: {kind}\ndata: {data}\n\n"
