"""Client side of the exec proxy, for ``stackspace exec`` and ``stackspace term``.

``run_exec`` pipes raw bytes (stdin -> channel 0, channels 1/2 -> stdout/stderr,
EOF on stdin -> a v5 half-close) and ``run_terminal`` puts the local terminal in
raw mode and forwards SIGWINCH as resize frames. Both return the remote exit
code and raise :class:`ExecClientError` when the proxy refuses the session or the
connection ends without an exit status. stdin may be anything: a TTY, a pipe, a
socket, a regular file or /dev/null (epoll refuses the last two).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import stat
import sys
import termios
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from proxy.protocol import (
    CLOSE,
    MAX_MESSAGE,
    RESIZE,
    SESSION,
    STATUS,
    STDERR,
    STDIN,
    STDOUT,
    ExitStatusError,
    subprotocols,
)
from proxy.protocol import exit_code_of as _exit_code

CHUNK = 256 * 1024


class ExecClientError(Exception):
    """The session was refused or broke off; ``code`` is the WebSocket close code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def exit_code_of(status: dict[str, Any], close_code: int | None = None) -> int:
    """Exit code from a Kubernetes Status; raises for failures that are not an exit."""
    try:
        return _exit_code(status)
    except ExitStatusError as exc:
        raise ExecClientError(str(exc), close_code) from exc


class _Input:
    """Async reads from a file: readiness-driven where the kernel can poll it (pipes,
    ttys, sockets), direct otherwise (regular files, /dev/null: reading them never
    blocks for long, and epoll refuses them with EPERM).

    No reader thread: one blocked in read() on a terminal would outlive the
    session and swallow the user's next keystroke.
    """

    def __init__(self, f: BinaryIO | int) -> None:
        self.f = f
        fd: int | None = f if isinstance(f, int) else None
        if fd is None:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                fd = f.fileno()  # type: ignore[union-attr]
        self.fd = fd if fd is not None and _pollable(fd) else None

    async def read(self) -> bytes:
        if self.fd is None:
            if isinstance(self.f, int):
                return os.read(self.f, CHUNK)
            read1 = getattr(self.f, "read1", None)
            return read1(CHUNK) if read1 else self.f.read(CHUNK)
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_reader(self.fd, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(self.fd)
        try:
            return os.read(self.fd, CHUNK)
        except BlockingIOError:  # a spurious wake-up on a shared non-blocking fd
            return await self.read()
        except OSError:  # EIO on a pty whose other side went away
            return b""


def _pollable(fd: int) -> bool:
    """Whether epoll/select accepts fd (pipes, ttys, sockets; not files or /dev/null)."""
    import selectors

    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return False
    sel = selectors.DefaultSelector()
    try:
        sel.register(fd, selectors.EVENT_READ)
        return True
    except (OSError, ValueError):  # EPERM for /dev/null and other plain devices
        return False
    finally:
        sel.close()


def _write(out: BinaryIO | int, data: bytes) -> None:
    if isinstance(out, int):
        view = memoryview(data)
        while view:
            view = view[os.write(out, view):]
    else:
        out.write(data)
        out.flush()


Reconnect = Callable[[str], tuple[str, str]]  # session id -> (url, ticket) to attach
RECONNECT_FOR = 300.0  # seconds a dropped session keeps trying to reattach
RETRY_CLOSE_CODES = (None, 1001, 1006, 1011, 1012, 1013, 1014)  # not a refusal


@dataclass
class _Progress:
    """What one logical session has seen across its connections."""

    session: str | None = None
    received: int = 0  # output offset: bytes of stdout + stderr written so far
    status: dict[str, Any] | None = None
    lost: int = 0  # bytes the helper no longer had when we reattached


class _Stdin:
    """Reads stdin once into a small queue; a chunk is dropped only once a
    connection took it, so a reconnect resends what the broken one did not."""

    def __init__(self, source: _Input) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=2)
        self.head: bytes | None = None
        self.has_head = False
        self.task = asyncio.create_task(self._read(source))

    async def _read(self, source: _Input) -> None:
        while True:
            try:
                data = await source.read()
            except OSError:  # an unreadable stdin counts as empty
                data = b""
            await self.queue.put(data or None)
            if not data:
                return

    async def peek(self) -> bytes | None:
        if not self.has_head:
            self.head, self.has_head = await self.queue.get(), True
        return self.head

    def pop(self) -> None:
        if self.head is not None:  # EOF stays: every new connection half-closes again
            self.has_head = False

    def close(self) -> None:
        self.task.cancel()


def _retryable(code: int | None, reason: str | None) -> bool:
    """A drop, a restarting or busy proxy; or a proxy restarted since our ticket
    was minted (the next try mints a new one). Not a refusal."""
    return code in RETRY_CLOSE_CODES or "issued before the proxy started" in (reason or "")


def _with_offset(url: str, offset: int) -> str:
    return f"{url}{'&' if '?' in url else '?'}offset={offset}" if offset else url


async def _connect(url: str, ticket: str, offset: int) -> ClientConnection:
    try:
        return await connect(_with_offset(url, offset),
                             subprotocols=subprotocols(ticket),  # type: ignore[arg-type]
                             max_size=MAX_MESSAGE, compression=None, open_timeout=30,
                             ping_interval=20, ping_timeout=20)
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        raise ExecClientError(f"cannot reach the exec proxy: {exc}") from exc


async def _one_connection(ws: ClientConnection, stdin: _Stdin, progress: _Progress,
                          stdout: BinaryIO | int, stderr: BinaryIO | int, *,
                          half_close: bool, detach: bool) -> bool:
    """Carry one connection; True if the proxy attached it to a session."""
    attached = False
    sender = asyncio.create_task(_send_input(ws, stdin, half_close))
    try:
        async for message in ws:
            if isinstance(message, str) or not message:
                continue
            channel, data = message[0], message[1:]
            if channel == STDOUT:
                _write(stdout, data)
                progress.received += len(data)
            elif channel == STDERR:
                _write(stderr, data)
                progress.received += len(data)
            elif channel == STATUS:
                progress.status = json.loads(data)
                if progress.session is not None:  # we have it: the session may end
                    await ws.send(bytes([CLOSE, STATUS]))
            elif channel == SESSION:
                info = json.loads(data)
                if progress.session is not None:
                    progress.lost += max(0, int(info["offset"]) - progress.received)
                progress.session, progress.received = info["session"], int(info["offset"])
                attached = True
                if detach:
                    break
    except ConnectionClosed:
        pass
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await sender
    return attached


async def _session(url: str, ticket: str, stdin: BinaryIO | int, stdout: BinaryIO | int,
                   stderr: BinaryIO | int, *, half_close: bool, on_open: Any = None,
                   reconnect: Reconnect | None = None, detach: bool = False) -> Any:
    """One logical session: on a dropped connection (no exit status, no refusal)
    it fetches a new ticket with ``reconnect`` and reattaches where it left off."""
    progress = _Progress()
    source = _Stdin(_Input(stdin)) if not detach else None
    dropped_at: float | None = None
    delay = 0.2
    try:
        while True:
            try:
                ws = await _connect(url, ticket, progress.received)
            except ExecClientError:
                if (reconnect is None or progress.session is None or dropped_at is None
                        or time.monotonic() - dropped_at > RECONNECT_FOR):
                    raise
            else:
                async with ws:
                    if on_open is not None:
                        await on_open(ws)
                    attached = await _one_connection(
                        ws, source or _Stdin(_Input(io.BytesIO())), progress, stdout, stderr,
                        half_close=half_close, detach=detach)
                if detach and progress.session:
                    return progress.session
                if progress.status is not None:
                    if progress.lost:
                        _write(stderr, f"stackspace: {progress.lost} bytes of output were "
                                       "dropped while disconnected\n".encode())
                    return exit_code_of(progress.status, ws.close_code)
                if (reconnect is None or progress.session is None
                        or not _retryable(ws.close_code, ws.close_reason)):
                    reason = ws.close_reason or "connection closed without an exit status"
                    raise ExecClientError(reason, ws.close_code)
                if attached or dropped_at is None:  # a new drop: a fresh deadline
                    dropped_at, delay = time.monotonic(), 0.2
            await asyncio.sleep(delay)  # back off: the proxy may be restarting
            delay = min(delay * 2, 5.0)
            assert reconnect is not None and progress.session is not None
            assert dropped_at is not None
            try:
                url, ticket = await asyncio.to_thread(reconnect, progress.session)
            except Exception as exc:  # noqa: BLE001 - the service may be away too: retry
                if time.monotonic() - dropped_at > RECONNECT_FOR:
                    raise ExecClientError(f"cannot reattach: {exc}") from exc
    finally:
        if source is not None:
            source.close()


async def _send_input(ws: ClientConnection, stdin: _Stdin, half_close: bool) -> None:
    while True:
        data = await stdin.peek()
        if data is None:
            break
        await ws.send(bytes([STDIN]) + data)  # awaits drain: a slow proxy slows us
        stdin.pop()
    if half_close:
        await ws.send(bytes([CLOSE, STDIN]))


def run_exec(url: str, ticket: str, stdin: BinaryIO | int | None = None,
             stdout: BinaryIO | int | None = None,
             stderr: BinaryIO | int | None = None, *,
             reconnect: Reconnect | None = None) -> int:
    """Run the ticket's command with raw byte pipes; return its exit code. With
    ``reconnect`` a session ticket's dropped connection is reattached."""
    if stdin is None:  # no stdin at all (fd 0 closed) reads as empty
        stdin = sys.stdin.buffer if sys.stdin is not None else io.BytesIO()
    return asyncio.run(_session(
        url, ticket, stdin,
        sys.stdout.buffer if stdout is None else stdout,
        sys.stderr.buffer if stderr is None else stderr, half_close=True,
        reconnect=reconnect))


def start_detached(url: str, ticket: str) -> str:
    """Start a session ticket's command and leave it running; return the session id."""
    sink = io.BytesIO()
    sid = asyncio.run(_session(url, ticket, io.BytesIO(), sink, sink, half_close=False,
                               detach=True))
    if not isinstance(sid, str):
        raise ExecClientError("the proxy did not start a session")
    return sid


def run_terminal(url: str, ticket: str, fd_in: int = 0, fd_out: int = 1, *,
                 reconnect: Reconnect | None = None) -> int:
    """Interactive TTY session on the local terminal; return the remote exit code.
    With ``reconnect`` a dropped connection is reattached (the screen's missed
    output replayed)."""

    async def on_open(ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()

        def send_size() -> None:
            with contextlib.suppress(OSError):
                cols, rows = os.get_terminal_size(fd_out if os.isatty(fd_out) else fd_in)
                msg = json.dumps({"Width": cols, "Height": rows}).encode()
                loop.create_task(_send_quietly(ws, bytes([RESIZE]) + msg))

        send_size()
        with contextlib.suppress(ValueError, RuntimeError):  # not the main thread
            loop.add_signal_handler(signal.SIGWINCH, send_size)

    saved = termios.tcgetattr(fd_in) if os.isatty(fd_in) else None
    try:
        if saved is not None:
            tty.setraw(fd_in)
        return asyncio.run(_session(url, ticket, fd_in, fd_out, fd_out, half_close=False,
                                    on_open=on_open, reconnect=reconnect))
    finally:
        if saved is not None:
            termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)


def run_pty(url: str, ticket: str, fd_in: int, out: BinaryIO, size: Callable[[], tuple[int, int]],
            on_open: Callable[[asyncio.AbstractEventLoop, Callable[[], None]], None], *,
            reconnect: Reconnect | None = None) -> int:
    """A TTY session driven by a program (the SDK's pty): input from ``fd_in``,
    output to ``out``; ``size()`` gives (cols, rows), sent at every (re)connect
    and whenever the caller invokes the resend function ``on_open`` hands it."""

    async def opened(ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()

        def send_size() -> None:
            cols, rows = size()
            msg = json.dumps({"Width": cols, "Height": rows}).encode()
            loop.create_task(_send_quietly(ws, bytes([RESIZE]) + msg))

        send_size()
        on_open(loop, send_size)

    return asyncio.run(_session(url, ticket, fd_in, out, out, half_close=False,
                                on_open=opened, reconnect=reconnect))


async def _send_quietly(ws: ClientConnection, message: bytes) -> None:
    with contextlib.suppress(ConnectionClosed):
        await ws.send(message)
