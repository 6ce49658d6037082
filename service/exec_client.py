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
import tty
from typing import Any, BinaryIO

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from proxy.protocol import (
    CLOSE,
    MAX_MESSAGE,
    RESIZE,
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


async def _session(url: str, ticket: str, stdin: BinaryIO | int, stdout: BinaryIO | int,
                   stderr: BinaryIO | int, *, half_close: bool,
                   on_open: Any = None) -> int:
    status: dict[str, Any] | None = None
    try:
        ws = await connect(url, subprotocols=subprotocols(ticket),  # type: ignore[arg-type]
                           max_size=MAX_MESSAGE, compression=None, open_timeout=30,
                           ping_interval=20)
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        raise ExecClientError(f"cannot reach the exec proxy: {exc}") from exc
    async with ws:
        if on_open is not None:
            await on_open(ws)
        sender = asyncio.create_task(_send_input(ws, _Input(stdin), half_close))
        try:
            async for message in ws:
                if isinstance(message, str) or not message:
                    continue
                channel, data = message[0], message[1:]
                if channel == STDOUT:
                    _write(stdout, data)
                elif channel == STDERR:
                    _write(stderr, data)
                elif channel == STATUS:
                    status = json.loads(data)
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender
    if status is not None:
        return exit_code_of(status, ws.close_code)
    reason = ws.close_reason or "connection closed without an exit status"
    raise ExecClientError(reason, ws.close_code)


async def _send_input(ws: ClientConnection, source: _Input, half_close: bool) -> None:
    while True:
        try:
            data = await source.read()
        except OSError:  # an unreadable stdin counts as empty, it never costs the exit code
            data = b""
        if not data:
            break
        await ws.send(bytes([STDIN]) + data)  # awaits drain: a slow proxy slows us
    if half_close:
        await ws.send(bytes([CLOSE, STDIN]))


def run_exec(url: str, ticket: str, stdin: BinaryIO | int | None = None,
             stdout: BinaryIO | int | None = None,
             stderr: BinaryIO | int | None = None) -> int:
    """Run the ticket's command with raw byte pipes; return its exit code."""
    if stdin is None:  # no stdin at all (fd 0 closed) reads as empty
        stdin = sys.stdin.buffer if sys.stdin is not None else io.BytesIO()
    return asyncio.run(_session(
        url, ticket, stdin,
        sys.stdout.buffer if stdout is None else stdout,
        sys.stderr.buffer if stderr is None else stderr, half_close=True))


def run_terminal(url: str, ticket: str, fd_in: int = 0, fd_out: int = 1) -> int:
    """Interactive TTY session on the local terminal; return the remote exit code."""

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
                                    on_open=on_open))
    finally:
        if saved is not None:
            termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)


async def _send_quietly(ws: ClientConnection, message: bytes) -> None:
    with contextlib.suppress(ConnectionClosed):
        await ws.send(message)
