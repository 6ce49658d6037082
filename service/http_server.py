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
- A JSON body (a Content-Length up to MAX_BODY_BYTES) is read by the event
  loop too, within `io_timeout` of its head, so a slow uploader holds no
  request thread either; a stalled head or body is answered 408.
- Long requests, SSE streams (service.streams) and file transfers
  (service.files_api, which wait on the workspace's engine and on the
  client), run on threads of their own, at most `streams` of them, not
  counted against the request threads; more get 503. Every stream ends when
  the server stops.

Why few request threads (`threads`, default 2): the worker runs Python under
one GIL, and a request hands the GIL over at every system call and SQLite
step; each handover to a waiting thread costs more than the call. Measured
on 2 cores (bench/http_bench.py): 16 threads served a page of 50 rows at
half the rate 4 did, and 2 served /healthz about 10% faster than 4. The
requests left on these threads wait on nothing slower than the store.
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
from http import HTTPStatus
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import TConn, ThreadWorker

from service.problems import BASE, TITLES
from service.streams import DEFAULT_LIMIT, StreamGate

# Seconds a closing connection waits for the client's FIN (_linger).
LINGER = 2.0
# The most a request's head (request line and headers) may take.
MAX_HEAD_BYTES = 64 * 1024
# The largest request body the API reads (413 beyond: the app refuses it from
# its Content-Length, before reading it). A spec's values fit 120 KiB as
# stored; JSON escaping of the worst case stays well under this. File
# transfers stream their bodies and are not bound by it (service.files_api).
MAX_BODY_BYTES = 1024 * 1024
# Long requests' request lines: operations' and rollouts' event streams, and
# a workspace's files (read and written as streams, waiting on its engine).
LONG_REQUEST = re.compile(rb"(GET /[^ ?]*/events[ ?])"
                          rb"|((GET|PUT) /[^ ?]*/workspaces/[^/ ?]+/files[/ ?])")
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)[ \t]*(?=\r\n)", re.IGNORECASE)
TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding:", re.IGNORECASE)
AUTHORIZATION = re.compile(rb"\r\nauthorization:", re.IGNORECASE)
# The most body bytes the event loop holds at once, over all connections;
# beyond it, bodies are read by the request threads as they come.
MAX_BUFFERED_BYTES = 64 * 1024 * 1024


def is_long_request(head: bytes | bytearray | None) -> bool:
    """Whether a request (its head as read) is an event stream or a file transfer."""
    return bool(head) and LONG_REQUEST.match(bytes(head[:2048])) is not None


def buffered_body_length(head: bytes) -> int:
    """How many body bytes the event loop reads before a thread takes the
    request (`head` ends with its blank line): the Content-Length of a request
    that carries credentials, when the app will read it. 0 leaves the body to
    the request thread: none; one without credentials (judged by its headers
    first: 401, or the exec proxy's signed reports); a chunked one; one too
    large (the app answers 413 without reading it); or an unreadable length
    (gunicorn answers 400)."""
    if TRANSFER_ENCODING.search(head) or not AUTHORIZATION.search(head):
        return 0
    lengths = CONTENT_LENGTH.findall(head)
    if len(lengths) != 1 or int(lengths[0]) > MAX_BODY_BYTES:
        return 0
    return int(lengths[0])


@dataclass(frozen=True)
class HttpSettings:
    """The `http:` section of the service config."""

    threads: int = 2  # request threads (the module doc says why so few)
    backlog: int = 64  # requests waiting for a request thread before 503
    streams: int = DEFAULT_LIMIT  # concurrent long requests, each on its own thread
    header_timeout: float = 10.0  # seconds for a request's whole head to arrive
    # seconds a JSON body may take after its head, or a body read or a
    # response write on a thread may stall
    io_timeout: float = 30.0
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


def whole_response(kind: str, detail: str, retry_after: int | None = None) -> bytes:
    """A whole problem response (SPEC §4) that closes the connection, written
    by the event loop itself: no thread ever sees the request."""
    status, title = TITLES[kind]
    body = json.dumps({"type": BASE + kind, "title": title, "status": status,
                       "detail": detail}).encode()
    retry = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"Content-Type: application/problem+json\r\n{retry}Connection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


BUSY = whole_response("unavailable", "all request threads are busy; retry shortly", 1)
LATE = whole_response("timeout", "the request did not arrive in time; nothing was done")


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
    """Each task on a new thread that ends with it: long requests. A pool would
    keep as many idle threads as streams were ever open at once, for the life
    of the process. (At most `streams` run: the worker refuses more before
    submitting.)"""

    def __init__(self, name: str):
        self.name = name

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        threading.Thread(target=fn, args=args, name=self.name, daemon=True).start()

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
        self._long = 0  # ... and to the long requests' threads
        self._lingering: deque[TConn] = deque()  # closing (_linger), oldest first
        # Long requests: threads of their own, picked by the request line
        # before a thread is chosen (the request pool: get_thread_pool).
        self.long_pool = ThreadPerTask("long")
        # Connections whose request the event loop is reading, oldest deadline
        # first: heads (header_timeout), then bodies (io_timeout after the head).
        self._heading: deque[TConn] = deque()
        self._bodies: deque[TConn] = deque()
        self._buffered = 0  # body bytes announced by the connections in _bodies

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

    def _watch(self, conn: TConn, waiting: deque[TConn], seconds: float,
               on_readable: Callable[[TConn, Any], None]) -> None:
        """Wait in the event loop for `conn` to be readable, at most `seconds`
        (murder_pending: `waiting` is kept oldest deadline first)."""
        self._wait_in(conn, waiting, seconds)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(on_readable, conn))

    @staticmethod
    def _wait_in(conn: TConn, waiting: deque[TConn], seconds: float) -> None:
        conn.timeout = time.monotonic() + seconds
        conn.waiting = waiting
        waiting.append(conn)

    @staticmethod
    def _received(conn: TConn) -> bytes | None:
        """What arrived on a non-blocking connection: None if nothing yet, b""
        if it closed or failed."""
        try:
            return conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""

    def _read_head(self, conn: TConn) -> None:
        conn.sock.setblocking(False)
        conn.head = bytearray()
        conn.needed = None  # the whole request's length, once its head is read
        self._watch(conn, self._heading, self.http.header_timeout, self._on_head)

    def _on_head(self, conn: TConn, _sock: Any) -> None:
        data = self._received(conn)
        if data is None:
            return
        if not data:
            self._drop(conn)
            return
        conn.head += data
        if conn.needed is None:
            end = conn.head.find(b"\r\n\r\n")
            if end < 0 and len(conn.head) <= MAX_HEAD_BYTES:
                return
            conn.long = is_long_request(conn.head)
            body = 0 if end < 0 or conn.long else buffered_body_length(bytes(conn.head[:end + 4]))
            if self._buffered + body > MAX_BUFFERED_BYTES:
                body = 0  # read by the request thread
            conn.needed = end + 4 + body
            if len(conn.head) < conn.needed:  # a body follows: now on its own deadline
                self._buffered += body
                conn.buffered = body
                self._heading.remove(conn)
                self._wait_in(conn, self._bodies, self.http.io_timeout)
        if len(conn.head) < conn.needed:
            return
        self._unwatch(conn)
        conn.data_ready = True  # gthread's own wait-for-data step is done
        if (self._long >= self.http.streams if conn.long
                else self._inflight >= self.http.threads + self.http.backlog):
            self._answer(conn, BUSY)
        else:
            self.enqueue_req(conn)

    def _unwatch(self, conn: TConn) -> None:
        conn.waiting.remove(conn)
        self._buffered -= getattr(conn, "buffered", 0)
        conn.buffered = 0
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def _drop(self, conn: TConn) -> None:
        self._unwatch(conn)
        self.nr_conns -= 1
        conn.close()

    def _answer(self, conn: TConn, response: bytes) -> None:
        """Answer with a whole response written by the event loop (a small
        one: the socket's buffer takes it whole), and close."""
        with contextlib.suppress(OSError):
            conn.sock.send(response)
        self._linger(conn)

    def murder_pending(self) -> None:
        """Also answer 408 to requests that did not arrive in time (and close
        those still arriving at once when stopping)."""
        super().murder_pending()
        now = time.monotonic()
        while self._lingering and self._lingering[0].timeout <= now:
            self._drop(self._lingering[0])
        for waiting in (self._heading, self._bodies):
            while waiting and (not self.alive or waiting[0].timeout <= now):
                conn = waiting[0]
                if not self.alive:
                    self._drop(conn)
                    continue
                self._unwatch(conn)
                self._answer(conn, LATE)

    # --- requests --------------------------------------------------------------
    def enqueue_req(self, conn: TConn) -> None:
        conn.long = getattr(conn, "long", False)
        if conn.long:
            self._long += 1
            self.long_pool.submit(self._run, conn, self._handle_long)
        else:
            self._inflight += 1
            self.tpool.submit(self._run, conn, self.handle)

    def _run(self, conn: TConn, handle: Callable[[TConn], Any]) -> None:
        """On a request's thread: the request; then back to the event loop."""
        try:
            result = handle(conn)
        except BaseException:  # noqa: BLE001 - handle() answers what it can
            result = False
        self.method_queue.defer(self.finish_request, conn, result)

    def finish_request(self, conn: TConn, result: Any) -> None:
        """In the event loop: keep the connection alive, or linger to close it."""
        if conn.long:
            self._long -= 1
        else:
            self._inflight -= 1
        if result is False:
            self._linger(conn)
            return
        kept: futures.Future = futures.Future()
        kept.set_result(result)
        super().finish_request(conn, kept)

    def _linger(self, conn: TConn) -> None:
        """Close a connection whose answer is written (RFC 9112 9.6): send
        FIN, then drop what the client still sends until it closes too (so
        the close is no reset that could cut the answer short), for at most
        LINGER seconds. In the event loop, never waiting on the client:
        gunicorn's own graceful close waits for it there, so a client that
        never closed its end held up every other one for 2 s."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
        except OSError:
            self.nr_conns -= 1
            conn.close()
            return
        conn.drained = 0
        self._watch(conn, self._lingering, LINGER, self._on_linger)

    def _on_linger(self, conn: TConn, _sock: Any) -> None:
        data = self._received(conn)
        if data is None:
            return
        conn.drained += len(data)
        if data and conn.drained < MAX_HEAD_BYTES:
            return
        self._drop(conn)

    def _handle_long(self, conn: TConn) -> Any:
        self.app.on_long_thread()
        return self.handle(conn)

    def handle(self, conn: TConn) -> Any:
        head, conn.head = getattr(conn, "head", None), None
        if head:
            try:
                conn.init()  # the socket blocking again, and its parser
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
        self.long_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)


WsgiApp = Callable[..., Any]


@dataclass(frozen=True)
class Service:
    """What the worker process serves, built after the fork."""

    app: WsgiApp
    stop: Callable[[], None]  # run when the worker exits
    # run first on each long request's thread (service.db: share_this_thread)
    on_long_thread: Callable[[], None] = lambda: None


# Builds the service in the worker process.
Build = Callable[[StreamGate], Service]


class _Application(BaseApplication):
    def __init__(self, listen: str, http: HttpSettings, build: Build,
                 announce: Callable[[], None]):
        self.listen, self.http, self.build, self.announce = listen, http, build, announce
        self.gate = StreamGate(http.streams)
        self.service: Service | None = None
        super().__init__()

    def on_long_thread(self) -> None:
        if self.service is not None:
            self.service.on_long_thread()

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
            "worker_exit": lambda arbiter, worker: self.service and self.service.stop(),
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> WsgiApp:
        self.service = self.build(self.gate)
        return self.service.app


def serve(listen: str, http: HttpSettings, build: Build, announce: Callable[[], None]) -> None:
    """Serve until SIGTERM or SIGINT; returns by SystemExit (gunicorn's arbiter)."""
    _Application(listen, http, build, announce).run()


def _die_with_parent() -> None:
    """In the worker: SIGKILL when the arbiter dies, however it dies (as the
    runner's own workers die with the runner)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
