"""Long-lived responses (SSE) counted apart from ordinary requests.

Each open event stream holds one server thread for its whole life. The HTTP
server (service.http_server) gives streams their own threads, `limit` of
them, on top of the request threads: streams beyond the limit are refused
(503), so however many clients follow operations, the API keeps its threads.
`stopping` ends every stream at once when the server shuts down.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

DEFAULT_LIMIT = 1024  # open streams per server process


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
