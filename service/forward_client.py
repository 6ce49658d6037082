"""Client side of port forwarding (``stackspace port-forward``), as ``kubectl
port-forward`` does it: listen locally; for each accepted connection take a
fresh single-use ticket from the service and open one WebSocket to the proxy's
``/forward`` (protocol: :mod:`proxy.forward`).

Closing either side closes the other. A local EOF is passed on as a half-close
(the server still answers); the server's end, or a failure (nothing listening
on the port, workspace gone), closes the local connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from proxy.protocol import CLOSE, MAX_MESSAGE, STATUS, STDIN, STDOUT, is_port, subprotocols

CHUNK = 256 * 1024
TICKET_MARGIN = 10.0  # seconds: a spare ticket closer than this to expiry is not used

Grant = dict[str, Any]  # {"url", "ticket", "expires_at"} from POST .../terminals


@dataclass(frozen=True)
class PortSpec:
    """``local`` 0 means any free port (printed once listening)."""

    local: int
    remote: int


def parse_port_spec(text: str) -> PortSpec:
    """``LOCAL:REMOTE``, ``REMOTE`` (same local port) or ``:REMOTE`` (a free local port)."""
    local, sep, remote = text.rpartition(":")
    if not sep:
        local = remote
    elif not local:
        local = "0"

    def number(value: str, any_port: bool) -> int:
        port = int(value) if value.isascii() and value.isdigit() else -1
        if not (is_port(port) or any_port and port == 0):
            raise ValueError(f"{text!r}: ports are LOCAL:REMOTE, REMOTE or :REMOTE, "
                             f"with REMOTE in 1..65535 and LOCAL in 0..65535")
        return port

    return PortSpec(number(local, True), number(remote, False))


class TicketSource:
    """Fresh tickets for one remote port: keeps one spare (fetched ahead, so a new
    connection usually does not wait for the service), never reuses one."""

    def __init__(self, fetch: Callable[[], Grant]) -> None:
        self.fetch = fetch
        self._spare: asyncio.Task[Grant] | None = None

    async def first(self) -> None:
        """Fetch the spare now: a refusal (no such workspace, not running) shows at start."""
        self._spare = asyncio.create_task(asyncio.to_thread(self.fetch))
        await asyncio.shield(self._spare)

    async def take(self) -> Grant:
        spare, self._spare = self._spare, None
        self._spare = asyncio.create_task(asyncio.to_thread(self.fetch))
        self._spare.add_done_callback(lambda t: t.cancelled() or t.exception())
        if spare is not None:
            with contextlib.suppress(Exception):
                grant = await spare
                if float(grant.get("expires_at", 0)) - TICKET_MARGIN > time.time():
                    return grant
        return await asyncio.to_thread(self.fetch)


class ForwardError(Exception):
    """The proxy refused the connection or the workspace side failed."""


async def forward_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             grant: Grant) -> None:
    """Carry one accepted local connection until both sides are done; raises
    ForwardError with the proxy's reason when it failed."""
    try:
        ws = await connect(grant["url"], subprotocols=subprotocols(grant["ticket"]),  # type: ignore[arg-type]
                           max_size=MAX_MESSAGE, compression=None, open_timeout=30,
                           ping_interval=20)
    except Exception as exc:
        writer.close()
        raise ForwardError(f"cannot reach the exec proxy: {exc}") from exc
    status: dict[str, Any] | None = None
    async with ws:
        up = asyncio.create_task(_upstream(reader, ws))
        try:
            async for message in ws:
                if isinstance(message, str) or not message:
                    continue
                if message[0] == STDOUT:
                    writer.write(message[1:])
                    await writer.drain()  # a slow local reader slows the workspace side
                elif message[0] == STATUS:
                    status = json.loads(message[1:])
        except (ConnectionClosed, ConnectionError):
            pass
        finally:
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, ConnectionError):
                await up
            with contextlib.suppress(ConnectionError):
                writer.close()
    if status is not None and status.get("status") != "Success":
        raise ForwardError(status.get("message") or status.get("reason") or "forward failed")
    if status is None and ws.close_code not in (1000, None):
        raise ForwardError(ws.close_reason or f"the proxy closed the connection ({ws.close_code})")


async def _upstream(reader: asyncio.StreamReader, ws: ClientConnection) -> None:
    try:
        while data := await reader.read(CHUNK):
            await ws.send(bytes([STDIN]) + data)  # awaits drain: a slow workspace slows us
    except ConnectionError:  # reset by the local peer: the workspace side is dropped
        await ws.close()
        return
    await ws.send(bytes([CLOSE, STDIN]))  # half-close: the server may still answer


async def serve_forwards(address: str, specs: list[tuple[PortSpec, Callable[[], Grant]]],
                         announce: Callable[[str], None],
                         report: Callable[[str], None]) -> None:
    """Listen on every spec's local port until cancelled. A spec's first ticket is
    fetched before listening, so a refusal ends the command before it says it forwards."""
    servers = []
    try:
        for spec, fetch in specs:
            source = TicketSource(fetch)
            await source.first()

            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             source: TicketSource = source, spec: PortSpec = spec) -> None:
                try:
                    await forward_connection(reader, writer, await source.take())
                except Exception as exc:  # noqa: BLE001 - one connection failed, not the command
                    writer.close()
                    report(f"port {spec.remote}: {exc}")

            server = await asyncio.start_server(handle, address, spec.local)
            servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                announce(f"Forwarding from {host}:{port} -> {spec.remote}")
        await asyncio.gather(*(s.serve_forever() for s in servers))
    finally:
        for s in servers:
            s.close()
