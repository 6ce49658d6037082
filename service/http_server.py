"""The production HTTP server of `stackspace run` and `serve`: gunicorn,
embedded, with one gthread worker process.

Processes: the gunicorn arbiter (the process the user started) binds the
listen address and forks ONE worker. The worker builds the service after the
fork (store, operation runner with its dispatcher thread and worker pool, the
Flask app), so exactly one runner exists and no thread or database connection
crosses a fork. The worker dies with the arbiter (PR_SET_PDEATHSIG), like the
runner's own workers die with it; SIGTERM/SIGINT stop the arbiter, which
stops the worker, whose exit stops the runner (`worker_exit`).

What the worker class adds to gunicorn's gthread worker:
- Slow clients: a request's headers are read by the event loop, never by a
  thread, and must all arrive within `header_timeout` (else the connection
  is closed); a body read or a response write that stalls `io_timeout`
  ends the connection. So slow or idle clients cost a socket, not a thread.
- Bounded concurrency: `threads` request threads and `backlog` requests
  waiting for one; a request beyond that is answered 503 (problem+json,
  Retry-After) at once instead of queueing without bound.
- SSE streams (service.streams) run on `streams` threads of their own, not
  counted against the request threads; streams beyond that get 503. Every
  stream ends when the server stops.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import re
import selectors
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import TConn, ThreadWorker

from service.problems import BASE, TITLES
from service.streams import DEFAULT_LIMIT, StreamGate

# The most a request's head (request line and headers) may take.
MAX_HEAD_BYTES = 64 * 1024
# An event stream's request line (service.streams: operations' and rollouts' events).
STREAM_REQUEST = re.compile(rb"GET /[^ ?]*/events[ ?]")


def is_stream_request(head: bytes | bytearray | None) -> bool:
    """Whether a request (its head as read) asks for an event stream."""
    return bool(head) and STREAM_REQUEST.match(bytes(head[:2048])) is not None


@dataclass(frozen=True)
class HttpSettings:
    """The `http:` section of the service config."""

    threads: int = 16  # request threads
    backlog: int = 64  # requests waiting for a request thread before 503
    streams: int = DEFAULT_LIMIT  # concurrent SSE streams, each on its own thread
    header_timeout: float = 10.0  # seconds for a request's whole head to arrive
    io_timeout: float = 30.0  # seconds a body read or a response write may stall
    keepalive: int = 5  # seconds an idle kept-alive connection stays open
    max_connections: int = 2048  # open connections (idle ones included)

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> HttpSettings:
        """Checked values, or ValueError naming the setting (http.<name>)."""
        data = dict(data or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"http.{unknown[0]}: unknown setting "
                             f"(known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for name, value in data.items():
            kind = int if known[name].type in ("int", int) else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    (kind is int and not isinstance(value, int)):
                want = "an integer" if kind is int else "a number"
                raise ValueError(f"http.{name}: must be {want}")
            if value <= 0:
                raise ValueError(f"http.{name}: must be greater than 0")
            values[name] = kind(value)
        return cls(**values)


def refusal(detail: str, retry_after: int = 1) -> bytes:
    """A whole 503 problem response, written by the event loop itself."""
    status, title = TITLES["unavailable"]
    body = json.dumps({"type": BASE + "unavailable", "title": title, "status": status,
                       "detail": detail}).encode()
    head = (f"HTTP/1.1 {status} Service Unavailable\r\n"
            "Content-Type: application/problem+json\r\n"
            f"Retry-After: {retry_after}\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


BUSY = refusal("all request threads are busy; retry shortly")


class _TimedSocket(socket.socket):
    """A client socket whose blocking mode blocks at most `io_timeout`; a
    stalled read or write then counts as a client that went away (gunicorn
    logs those quietly)."""

    io_timeout = 30.0

    def setblocking(self, flag: bool) -> None:
        if flag:
            self.settimeout(self.io_timeout)
        else:
            super().setblocking(False)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        try:
            return super().recv(bufsize, flags)
        except TimeoutError:
            raise ConnectionResetError(errno.ECONNRESET, "client stalled") from None

    def sendall(self, data: Any, flags: int = 0) -> None:
        try:
            super().sendall(data, flags)
        except TimeoutError:
            raise BrokenPipeError(errno.EPIPE, "client stopped reading") from None


class ThreadPerTask:
    """Each task on a new thread that ends with it: event streams. A pool would
    keep as many idle threads as streams were ever open at once, each holding
    its thread's database connection, for the life of the process. (At most
    `streams` run: the worker refuses more before submitting.)"""

    def __init__(self, name: str):
        self.name = name

    def submit(self, fn: Callable[..., Any], *args: Any) -> futures.Future:
        future: futures.Future = futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - the future carries it
                future.set_exception(e)

        threading.Thread(target=run, name=self.name, daemon=True).start()
        return future

    def shutdown(self, wait: bool = False) -> None:
        """Nothing to stop: streams end when the server stops (StreamGate.stopping)."""


class StackspaceWorker(ThreadWorker):
    """gunicorn's gthread worker with head reading in the event loop, 503 when
    saturated, and SSE streams on threads of their own (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.http: HttpSettings = self.app.http
        self.gate: StreamGate = self.app.gate
        self._inflight = 0  # requests handed to the request pool, not yet finished
        self._streams = 0  # ... and to the stream threads
        # Event streams: threads of their own, picked by the request line
        # before a thread is chosen (the request pool: get_thread_pool).
        self.stream_pool = ThreadPerTask("stream")
        self._heading: deque[TConn] = deque()  # reading a head, oldest deadline first

    def get_thread_pool(self) -> futures.ThreadPoolExecutor:
        # Ordinary requests: exactly `threads` long-lived threads (each keeps
        # its warm database connection).
        return futures.ThreadPoolExecutor(max_workers=self.http.threads,
                                          thread_name_prefix="request")

    # --- connections -----------------------------------------------------------
    def accept(self, listener: socket.socket) -> None:
        try:
            sock, addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        timed = _TimedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        timed.io_timeout = self.http.io_timeout
        self._read_head(TConn(self.cfg, timed, addr, listener.getsockname()))

    def on_client_socket_readable(self, conn: TConn, client: Any) -> None:
        """A kept-alive connection's next request is arriving: read its head first."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read_head(conn)

    def _read_head(self, conn: TConn) -> None:
        conn.sock.setblocking(False)
        conn.head = bytearray()
        conn.timeout = time.monotonic() + self.http.header_timeout
        self._heading.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head, conn))

    def _on_head(self, conn: TConn, _sock: Any) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.head += data
        if b"\r\n\r\n" not in conn.head and len(conn.head) <= MAX_HEAD_BYTES:
            return
        self._unwatch(conn)
        conn.data_ready = True  # gthread's own wait-for-data step is done
        conn.stream = is_stream_request(conn.head)
        if (self._streams >= self.http.streams if conn.stream
                else self._inflight >= self.http.threads + self.http.backlog):
            self._refuse(conn)
        else:
            self.enqueue_req(conn)

    def _unwatch(self, conn: TConn) -> None:
        self._heading.remove(conn)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def _drop(self, conn: TConn) -> None:
        self._unwatch(conn)
        self.nr_conns -= 1
        conn.close()

    def _refuse(self, conn: TConn) -> None:
        try:
            conn.sock.send(BUSY)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Also close connections whose head is late (all of them when stopping)."""
        super().murder_pending()
        now = time.monotonic()
        while self._heading and (not self.alive or self._heading[0].timeout <= now):
            self._drop(self._heading[0])

    # --- requests --------------------------------------------------------------
    def enqueue_req(self, conn: TConn) -> None:
        if not getattr(conn, "stream", False):
            self._inflight += 1
            super().enqueue_req(conn)
            return
        self._streams += 1
        fs = self.stream_pool.submit(self.handle, conn)
        fs.add_done_callback(
            lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def finish_request(self, conn: TConn, fs: Any) -> None:
        if getattr(conn, "stream", False):
            self._streams -= 1
        else:
            self._inflight -= 1
        super().finish_request(conn, fs)

    def handle(self, conn: TConn) -> Any:
        head, conn.head = getattr(conn, "head", None), None
        if head:
            try:
                conn.sock.setblocking(True)
                conn.init()
            except OSError:
                return False
            conn.parser.unreader.unread(bytes(head))
        return super().handle(conn)

    # --- stopping --------------------------------------------------------------
    def handle_exit(self, sig: int, frame: Any) -> None:
        self.gate.stopping.set()
        super().handle_exit(sig, frame)

    def handle_quit(self, sig: int, frame: Any) -> None:
        self.gate.stopping.set()
        self.stream_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)


WsgiApp = Callable[..., Any]
# Builds the service in the worker process: the WSGI app, and what stops it.
Build = Callable[[StreamGate], tuple[WsgiApp, Callable[[], None]]]


class _Application(BaseApplication):
    def __init__(self, listen: str, http: HttpSettings, build: Build,
                 announce: Callable[[], None]):
        self.listen, self.http, self.build, self.announce = listen, http, build, announce
        self.gate = StreamGate(http.streams)
        self._stop: Callable[[], None] | None = None
        super().__init__()

    def load_config(self) -> None:
        assert self.cfg is not None
        options: dict[str, Any] = {
            "bind": [self.listen],
            "workers": 1,  # one process: it hosts the one operation runner
            "worker_class": StackspaceWorker,
            "threads": self.http.threads,
            "worker_connections": self.http.max_connections,
            "keepalive": self.http.keepalive,
            # The arbiter's liveness check of the worker's event loop (requests
            # run on threads and are not bound by it); building the service
            # (crash recovery) happens before the loop starts.
            "timeout": 300,
            "graceful_timeout": 30,
            "proc_name": "stackspace",
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "when_ready": lambda arbiter: self.announce(),
            "post_fork": lambda arbiter, worker: _die_with_parent(),
            "worker_exit": lambda arbiter, worker: self._stop and self._stop(),
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> WsgiApp:
        app, self._stop = self.build(self.gate)
        return app


def serve(listen: str, http: HttpSettings, build: Build, announce: Callable[[], None]) -> None:
    """Serve until SIGTERM or SIGINT; returns by SystemExit (gunicorn's arbiter)."""
    _Application(listen, http, build, announce).run()


def _die_with_parent() -> None:
    """In the worker: SIGKILL when the arbiter dies, however it dies (as the
    runner's own workers die with the runner)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
