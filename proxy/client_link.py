"""One client's WebSocket, as every proxy session kind carries it.

A terminal (:class:`proxy.server.Session`), a kept session
(:class:`proxy.sessions.SessionBridge`) and a forwarded connection
(:class:`proxy.forward.ForwardSession`) differ in what sits at the far end
(an exec, the session helper, a tunnel). What they share lives here once:
activity reporting, frame-sized sends, the idle watch, reading the client's
channel frames, stopping the copy tasks and the end-of-session log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from proxy.protocol import STATUS, STDIN
from proxy.tickets import TicketClaims


class ClientLink:
    def __init__(self, proxy: Any, conn: ServerConnection, claims: TicketClaims,
                 fields: dict[str, Any]) -> None:
        self.proxy, self.conn, self.claims = proxy, conn, claims
        self.config = proxy.config
        self.last_activity = time.monotonic()
        self.started = time.monotonic()
        self.bytes_in = self.bytes_out = 0
        # Never the ticket, env values or arguments (they may hold secrets).
        self.fields = {"user": claims.user, "workspace": claims.workspace,
                       "target_type": claims.target.get("type"), **fields}

    def touch(self) -> None:
        self.last_activity = time.monotonic()
        self.proxy.activity.touch(self.claims.user, self.claims.workspace)

    async def send(self, channel: int, data: bytes) -> None:
        await self.conn.send(bytes([channel]) + data)  # awaits drain: back-pressure

    async def send_status(self, status: dict[str, Any]) -> None:
        await self.send(STATUS, json.dumps(status).encode())

    async def send_output(self, channel: int, data: bytes) -> None:
        """Output from the far end, cut to the proxy's frame size and counted."""
        self.touch()
        limit = self.config.max_frame_bytes - 1
        for i in range(0, len(data), limit):
            await self.send(channel, data[i:i + limit])
        self.bytes_out += len(data)

    async def end_with(self, status: dict[str, Any], reason: str = "") -> None:
        """A last status and a normal close, unless the client is gone already."""
        with contextlib.suppress(ConnectionClosed):
            await self.send_status(status)
            await self.conn.close(CloseCode.NORMAL_CLOSURE, reason)

    async def client_frames(self) -> AsyncIterator[tuple[int, bytes]]:
        """The client's channel frames until it closes; stdin bytes are counted."""
        async for message in self.conn:
            if isinstance(message, str) or not message:
                continue  # v5 is binary only
            channel, data = message[0], message[1:]
            self.touch()
            if channel == STDIN:
                self.bytes_in += len(data)
            yield channel, data

    async def watch_idle(self) -> None:
        timeout = self.config.idle_timeout
        while (left := self.last_activity + timeout - time.monotonic()) > 0:
            await asyncio.sleep(left)

    def idle_message(self) -> str:
        return f"no activity for {self.config.idle_timeout:g}s"

    @staticmethod
    async def stop(tasks: Iterable[asyncio.Task[Any]]) -> None:
        tasks = list(tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    def client_outcome(exc: BaseException | None, gone: str = "client gone") -> str:
        return gone if exc is None or isinstance(exc, ConnectionClosed) else f"error: {exc!r}"

    async def close_and_log(self, log: logging.Logger, event: str, outcome: str,
                            **extra: Any) -> None:
        with contextlib.suppress(Exception):
            await self.conn.close(CloseCode.GOING_AWAY, outcome)
        log.info(event, extra={
            **self.fields, "outcome": outcome, **extra,
            "duration": round(time.monotonic() - self.started, 3),
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out})
