"""The exec proxy: a WebSocket server carrying terminals into running workspaces.

``GET /exec`` upgraded to WebSocket; the wire protocol (ticket in the
subprotocol offer, v5 channels) is in :mod:`proxy.protocol`.

Refusals happen before anything is exec'd: invalid, expired, replayed or
foreign tickets close with 1008 (policy violation), session caps with 1013
(try again later); the close reason says why. An idle session gets a ``Timeout``
status and is closed; a client that goes away gets its exec killed.

This package imports nothing from ``service`` and not the Pulumi SDK: it is
deployed as its own process (``python -m proxy`` or ``stackspace proxy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from proxy import activity as activity_signature
from proxy.backends import ExecError, ExecProcess, ExecRequest, make_process
from proxy.client_link import ClientLink
from proxy.forward import ForwardSession
from proxy.protocol import (
    CLOSE,
    FORWARD_PATH,
    PATH,
    RESIZE,
    STDIN,
    SUBPROTOCOL,
    status_exit,
    status_failure,
    ticket_from_subprotocols,
)
from proxy.replay import SharedReplayGuard
from proxy.shared_caps import RENEW_EVERY, SharedSessionLimiter
from proxy.tickets import ReplayGuard, TicketClaims, TicketError, verify_ticket

log = logging.getLogger("stackspace.proxy")
# websockets logs handshake headers at DEBUG, and the ticket is a header.
_ws_log = logging.getLogger("stackspace.proxy.websockets")
_ws_log.setLevel(logging.INFO)

Activity = dict[str, Any]  # {"user", "workspace", "timestamp"}


@dataclass
class ProxyConfig:
    """``key``: the ticket key shared with the service (>= 32 bytes). Caps count open
    sessions; ``idle_timeout`` is seconds without a frame either way; frames larger
    than ``max_frame_bytes`` close the session (1009). Activity goes to
    is POSTed to ``activity_url``."""

    key: bytes
    host: str = "127.0.0.1"
    port: int = 8081
    max_sessions_per_user: int = 10
    max_sessions_per_workspace: int = 5
    idle_timeout: float = 1800.0
    max_frame_bytes: int = 1 << 20
    activity_url: str | None = None
    activity_interval: float = 30.0  # at most one report per (user, workspace) per interval
    # The service's database: tickets are then single-use across every proxy
    # replica on it (proxy.replay); None keeps the in-memory guard (one proxy).
    database_url: str | None = None
    # Forwarded TCP connections have their own caps (proxy.forward).
    max_forwards_per_user: int = 100
    max_forwards_per_workspace: int = 100
    # Sessions (proxy.sessions) end after this long with no client attached;
    # a workspace keeps at most this many (running or ended, not yet collected).
    session_idle_timeout: float = 3600.0
    max_sessions_per_workspace_kept: int = 32


def ticket_from_headers(request: Request) -> str | None:
    return ticket_from_subprotocols(request.headers.get_all("Sec-WebSocket-Protocol"))


class SessionLimiter:
    """Counts open sessions per user and per workspace."""

    def __init__(self, per_user: int, per_workspace: int, what: str = "sessions") -> None:
        self.per_user, self.per_workspace, self.what = per_user, per_workspace, what
        self.users: dict[str, int] = {}
        self.workspaces: dict[str, int] = {}

    def refusal(self, claims: TicketClaims) -> str | None:
        if self.users.get(claims.user, 0) >= self.per_user:
            return f"too many {self.what} for user (limit {self.per_user})"
        if self.workspaces.get(claims.workspace, 0) >= self.per_workspace:
            return f"too many {self.what} for workspace (limit {self.per_workspace})"
        return None

    def acquire(self, claims: TicketClaims) -> None:
        self.users[claims.user] = self.users.get(claims.user, 0) + 1
        self.workspaces[claims.workspace] = self.workspaces.get(claims.workspace, 0) + 1

    def release(self, claims: TicketClaims) -> None:
        for counts, k in ((self.users, claims.user), (self.workspaces, claims.workspace)):
            counts[k] -= 1
            if counts[k] <= 0:
                del counts[k]


class ActivityReporter:
    """Tells the service a terminal is in use (for idle auto-stop), rate-limited.

    The HTTP report is a JSON POST whose headers carry its signature
    (proxy.activity), so the service checks it before reading the body.
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._last: dict[tuple[str, str], float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def touch(self, user: str, workspace: str) -> None:
        now = time.monotonic()
        key = (user, workspace)
        if now - self._last.get(key, -1e18) < self.config.activity_interval:
            return
        self._last[key] = now
        if len(self._tasks) < 32:  # reports in flight are bounded; a dead service costs nothing
            task = asyncio.create_task(self._report(
                {"user": user, "workspace": workspace, "timestamp": time.time()}))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _report(self, activity: Activity) -> None:
        try:
            if self.config.activity_url:
                await asyncio.to_thread(self._post, activity)
        except Exception as exc:
            log.warning("activity report failed", extra={"error": str(exc)})

    def _post(self, activity: Activity) -> None:
        url = self.config.activity_url or ""
        if not url.startswith(("http://", "https://")):
            raise ValueError("activity_url must be http(s)")
        body = json.dumps(activity).encode()
        headers = {"Content-Type": "application/json",
                   **activity_signature.sign(self.config.key, body, time.time())}
        req = urllib.request.Request(url, data=body, method="POST",  # noqa: S310 - checked
                                     headers=headers)
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - scheme checked
            resp.read()


class ExecProxy:
    def __init__(self, config: ProxyConfig) -> None:
        if len(config.key) < 32:
            raise ValueError("proxy key must be at least 32 bytes")
        if config.session_idle_timeout <= 0:
            raise ValueError("session_idle_timeout must be positive")
        self.config = config
        self.replay = ReplayGuard()
        self.shared = SharedReplayGuard(config.database_url) if config.database_url else None
        self.limiter = SessionLimiter(config.max_sessions_per_user,
                                      config.max_sessions_per_workspace)
        self.forwards = SessionLimiter(config.max_forwards_per_user,
                                       config.max_forwards_per_workspace, "forwards")
        # With a shared database the caps count every proxy's sessions (proxy.shared_caps).
        self.shared_caps: dict[str, SharedSessionLimiter] = {}
        if self.shared is not None:
            self.shared_caps = {
                "exec": SharedSessionLimiter(self.shared.db, "exec", self.limiter.per_user,
                                             self.limiter.per_workspace, self.limiter.what),
                "forward": SharedSessionLimiter(
                    self.shared.db, "forward", self.forwards.per_user,
                    self.forwards.per_workspace, self.forwards.what)}
        self.open_slots: dict[str, str] = {}  # shared slot id -> kind, renewed while open
        self._renewer: asyncio.Task[None] | None = None
        self.activity = ActivityReporter(config)
        self.server: Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self.server = await ws_serve(
            self.handle, self.config.host, self.config.port,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            process_request=self._check_path, max_size=self.config.max_frame_bytes,
            max_queue=16, compression=None, logger=_ws_log, server_header=None)
        log.info("exec proxy listening",
                 extra={"host": self.config.host, "port": self.port})
        if self.shared_caps:
            self._renewer = asyncio.create_task(self._renew_slots())

    async def _renew_slots(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            for kind, caps in self.shared_caps.items():
                slots = [s for s, k in self.open_slots.items() if k == kind]
                if slots:
                    try:
                        await asyncio.to_thread(caps.renew, slots)
                    except Exception as exc:  # noqa: BLE001 - the database is away; next round
                        log.warning("session renewal failed",
                                    extra={"error_type": type(exc).__name__})

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    @staticmethod
    def _check_path(conn: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] not in KINDS_BY_PATH:
            return conn.respond(HTTPStatus.NOT_FOUND, "not found\n")
        return None

    def _limiter(self, claims: TicketClaims) -> SessionLimiter:
        return self.forwards if claims.kind == "forward" else self.limiter

    def _admit(self, conn: ServerConnection) -> tuple[TicketClaims | None, int, str]:
        """Claims of an acceptable ticket, else (None, close code, reason). No awaits."""
        assert conn.request is not None
        ticket = ticket_from_headers(conn.request)
        if not ticket:
            return None, CloseCode.POLICY_VIOLATION, "ticket refused: no ticket"
        try:
            claims = verify_ticket(self.config.key, ticket)
            if claims.kind != KINDS_BY_PATH.get(conn.request.path.split("?", 1)[0]):
                raise TicketError(f"a {claims.kind} ticket is not valid on this path")
            if self.shared is None:
                self.replay.check(claims)
        except TicketError as exc:
            return None, CloseCode.POLICY_VIOLATION, f"ticket refused: {exc.reason}"
        if self.shared is not None:
            return claims, 0, ""  # caps and single use: the shared database (_admit_shared)
        refusal = self._limiter(claims).refusal(claims)
        if refusal:
            # Checked before the ticket is consumed, so the client may retry with it.
            return None, CloseCode.TRY_AGAIN_LATER, refusal
        if self.shared is None:
            self.replay.consume(claims)
        self._limiter(claims).acquire(claims)
        return claims, 0, ""

    async def _admit_shared(self, claims: TicketClaims) -> tuple[str | None, int, str]:
        """A slot under the shared caps, then the ticket redeemed in the shared table
        (both off the event loop): the slot id, else (None, close code, reason)."""
        assert self.shared is not None
        caps, slot = self.shared_caps[claims.kind], secrets.token_hex(16)
        taken = False
        try:
            refusal = await asyncio.to_thread(caps.take, claims, slot)
            if refusal:  # before the ticket is consumed: the client may retry with it
                return None, CloseCode.TRY_AGAIN_LATER, refusal
            taken = True
            self.open_slots[slot] = claims.kind
            await asyncio.to_thread(self.shared.consume, claims)
            return slot, 0, ""
        except TicketError as exc:
            code, reason = CloseCode.POLICY_VIOLATION, f"ticket refused: {exc.reason}"
        except Exception as exc:  # noqa: BLE001 - the database is away: the ticket stays unused
            log.warning("ticket store unavailable", extra={"error_type": type(exc).__name__})
            code, reason = CloseCode.TRY_AGAIN_LATER, "ticket store unavailable; retry"
        if taken:
            await self._give_back(slot)
        return None, code, reason

    async def _give_back(self, slot: str) -> None:
        kind = self.open_slots.pop(slot)
        try:
            await asyncio.to_thread(self.shared_caps[kind].give_back, slot)
        except Exception as exc:  # noqa: BLE001 - unrenewed, the row stops counting soon
            log.warning("session slot not given back", extra={"error_type": type(exc).__name__})

    async def handle(self, conn: ServerConnection) -> None:
        claims, code, reason = self._admit(conn)
        slot = None
        if claims is not None and self.shared is not None:
            slot, code, reason = await self._admit_shared(claims)
            claims = claims if not code else None
        if claims is None:
            log.warning("session refused", extra={"reason": reason, "peer": _peer(conn)})
            await conn.close(code, reason)
            return
        try:
            if claims.kind == "forward":
                await ForwardSession(self, conn, claims).run()
            elif claims.session:  # kept in the workspace, outlives this connection
                from proxy.sessions import run_session
                await run_session(Session(self, conn, claims))
            else:
                await Session(self, conn, claims).run()
        finally:
            if slot is not None:
                await self._give_back(slot)
            else:
                self._limiter(claims).release(claims)


KINDS_BY_PATH = {PATH: "exec", FORWARD_PATH: "forward"}


def _peer(conn: ServerConnection) -> str:
    addr = conn.remote_address
    return f"{addr[0]}:{addr[1]}" if addr else "?"


class Session(ClientLink):
    """A terminal or command: one exec whose stdio is the client's channels."""

    def __init__(self, proxy: ExecProxy, conn: ServerConnection, claims: TicketClaims) -> None:
        self.request = ExecRequest(command=list(claims.command), tty=claims.tty,
                                   env=dict(claims.env))
        super().__init__(proxy, conn, claims, {
            "session": self.request.exec_id, "tty": claims.tty, "program": claims.command[0]})

    async def run(self) -> None:
        self.started = time.monotonic()
        try:
            proc = make_process(self.claims.target, self.request)
            await proc.start()
        except ExecError as exc:
            log.warning("exec failed to start", extra={**self.fields, "error": str(exc)})
            with contextlib.suppress(ConnectionClosed):
                await self.send_status(status_failure("InternalError", str(exc)))
            await self.conn.close(CloseCode.INTERNAL_ERROR, "exec failed to start")
            return
        log.info("session started", extra={**self.fields, "peer": _peer(self.conn)})
        self.touch()
        outcome, exit_code = "error", None
        exited = False
        tasks = {asyncio.create_task(self.pump_output(proc), name="output"),
                 asyncio.create_task(self.pump_input(proc), name="input"),
                 asyncio.create_task(self.watch_idle(), name="idle")}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # If output ended together with something else, the exit wins.
            first = min(done, key=lambda t: t.get_name() != "output")
            name = first.get_name()
            if name == "output" and first.exception() is None:
                exit_code = await proc.wait()
                exited, outcome = True, "exited"
                await self.end_with(status_exit(exit_code))
            elif name == "idle":
                outcome = "idle timeout"
                await self.end_with(status_failure("Timeout", self.idle_message()),
                                    "idle timeout")
            else:
                outcome = self.client_outcome(first.exception())
        finally:
            await self.stop(tasks)
            if not exited:
                try:
                    await proc.kill()
                except Exception as exc:  # the container may be gone already
                    log.warning("kill failed", extra={**self.fields, "error": str(exc)})
            await proc.close()
            await self.close_and_log(log, "session ended", outcome, exit_code=exit_code)

    async def pump_output(self, proc: ExecProcess) -> None:
        while (chunk := await proc.read()) is not None:
            await self.send_output(*chunk)

    async def pump_input(self, proc: ExecProcess) -> None:
        """Until the client closes: stdin in order (awaiting each write), resize, close."""
        async for channel, data in self.client_frames():
            if channel == STDIN:
                await proc.write(data)
            elif channel == RESIZE:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    size = json.loads(data)
                    width, height = int(size["Width"]), int(size["Height"])
                    if 0 < width < 10000 and 0 < height < 10000:
                        await proc.resize(width, height)
            elif channel == CLOSE and data[:1] == bytes([STDIN]):
                await proc.close_stdin()


async def start_proxy(config: ProxyConfig) -> ExecProxy:
    """Start listening (port 0 picks a free port: see ``.port``) and return the proxy."""
    proxy = ExecProxy(config)
    await proxy.start()
    return proxy


async def serve(config: ProxyConfig, announce: Callable[[str], None] | None = None) -> None:
    proxy = await start_proxy(config)
    if announce is not None:
        announce(f"ws://{config.host}:{proxy.port}{PATH}")
    try:
        await asyncio.Future()  # until cancelled
    finally:
        await proxy.close()


def run_proxy(config: ProxyConfig, announce: Callable[[str], None] | None = None) -> None:
    """Blocking entry point for ``python -m proxy`` and ``stackspace proxy``; stops
    cleanly on SIGINT or SIGTERM."""
    import signal

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(config, announce)

    asyncio.run(main())
