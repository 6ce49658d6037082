"""Sessions that outlive their connection (SPEC §5), carried by the proxy.

The session lives INSIDE the workspace, in ``stackspace-session`` (a static
helper, proxy/session_helper, built by scripts/setup): the proxy copies it into
the workspace on first use and execs it, so a dropped client, a proxy restart or
a request to another proxy replica does not end the session. Each WebSocket is
one exec of the helper (``start`` or ``attach``) whose stdio carries frames
(:mod:`proxy.session_frames`); the proxy translates them to the v5 channels and
adds one channel, :data:`SESSION`, telling the client the session id and where
the replay starts. The client reconnects with ``?offset=N`` (the output bytes it
has received) and gets the rest replayed from the helper's ring buffer.

A ticket's ``session`` claim selects the mode: ``start`` (a new session for the
ticket's command), ``attach`` (``id``), ``list`` or ``kill`` (``id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from proxy import session_frames as sf
from proxy.backends import ExecError, ExecProcess, ExecRequest, make_process
from proxy.protocol import (
    CLOSE,
    RESIZE,
    SESSION,
    STATUS,
    STDERR,
    STDIN,
    STDOUT,
    status_exit,
    status_failure,
)
from proxy.server import Session
from proxy.session_frames import is_session_id

log = logging.getLogger("stackspace.proxy")

MODES = ("start", "attach", "list", "kill")
REMOTE_DIR = "/tmp/.stackspace/bin"  # noqa: S108 - inside the workspace
MISSING = 97  # exit code of RUN when the helper is not in the workspace yet
# Runs the helper if present (argv: its path, then its arguments); any /bin/sh.
RUN = ["/bin/sh", "-c", 'p=$1; shift; [ -x "$p" ] || exit 97; exec "$p" "$@"', "sh"]
# Writes stdin to $1 if it has $2 bytes (a cut stream is not installed).
INSTALL = ["/bin/sh", "-c",
           'mkdir -p "${1%/*}" && t="$1.$$" && cat > "$t" && '
           '[ "$(wc -c < "$t")" -eq "$2" ] && chmod 755 "$t" && mv -f "$t" "$1" '
           '|| { rm -f "$t"; exit 96; }', "sh"]
ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
UPLOAD_CHUNK = 256 * 1024
STATUS_ACK_WAIT = 5.0  # seconds for the client to acknowledge the exit status
HELLO_WAIT = 60.0  # seconds for the helper to start or attach (a first install included)


class HelperMissing(ExecError):
    """The helper binary was not built on the proxy's host."""


UNUSABLE_FOR = 600.0  # seconds a workspace where the helper cannot run gets plain execs
_unusable: dict[str, float] = {}


def target_key(target: dict[str, Any]) -> str:
    return json.dumps(target, sort_keys=True)


class HelperUnusable(ExecError):
    """The helper cannot run in this workspace (an unknown architecture, /tmp not
    writable or mounted noexec): a new command runs as a plain exec instead."""


def helper_dir() -> Path:
    """Where scripts/toolchain/session-helper.sh puts the builds."""
    if os.environ.get("STACKSPACE_SESSION_HELPER"):
        return Path(os.environ["STACKSPACE_SESSION_HELPER"]).parent
    cache_root = os.environ.get("STACKSPACE_CACHE") or str(Path.home() / ".cache/stackspace")
    return Path(cache_root) / "session-helper"


@cache
def helper_binary(arch: str) -> bytes:
    path = helper_dir() / f"stackspace-session-linux-{arch}"
    try:
        return path.read_bytes()
    except OSError as exc:
        raise HelperMissing(f"session helper not built ({path}): run scripts/setup") from exc


@cache
def remote_path() -> str:
    """The helper's path in a workspace, named by the build (a new build is a new file)."""
    digest = hashlib.sha256(helper_binary("amd64")).hexdigest()[:12]
    return f"{REMOTE_DIR}/stackspace-session-{digest}"


def session_mode(session: dict[str, Any]) -> tuple[str, str]:
    """(mode, id) of a ticket's session claim; raises ValueError if unusable."""
    mode, sid = session.get("mode", ""), session.get("id", "")
    if mode not in MODES:
        raise ValueError(f"unknown session mode {mode!r}")
    if mode in ("attach", "kill") and not is_session_id(sid):
        raise ValueError("bad session id")
    return mode, sid


def new_session_id() -> str:
    return secrets.token_hex(6)


def requested_offset(path: str) -> int:
    """``?offset=N`` of the upgrade request: output bytes the client already has."""
    values = parse_qs(urlsplit(path).query).get("offset") or ["0"]
    try:
        return max(0, int(values[0]))
    except ValueError:
        return 0


@dataclass
class Outcome:
    code: int
    stdout: bytes
    stderr: bytes


async def run_once(target: dict[str, Any], command: list[str], stdin: bytes = b"",
                   env: dict[str, str] | None = None) -> Outcome:
    """Run a short command in the workspace to its end (install, list, kill)."""
    proc = make_process(target, ExecRequest(command=command, tty=False, env=dict(env or {})))
    await proc.start()
    try:
        for i in range(0, len(stdin), UPLOAD_CHUNK):
            await proc.write(stdin[i:i + UPLOAD_CHUNK])
        await proc.close_stdin()
        out: dict[int, list[bytes]] = {STDOUT: [], STDERR: []}
        while (chunk := await proc.read()) is not None:
            out[chunk[0]].append(chunk[1])
        code = await proc.wait()
    finally:
        await proc.close()
    return Outcome(code, b"".join(out[STDOUT]), b"".join(out[STDERR]))


async def install(target: dict[str, Any]) -> None:
    """Copy the helper built for the workspace's architecture into it."""
    arch = await run_once(target, ["uname", "-m"])
    name = ARCHES.get(arch.stdout.decode(errors="replace").strip())
    if arch.code != 0 or name is None:
        raise HelperUnusable(f"cannot run sessions on this architecture: {arch.stdout!r}")
    binary = helper_binary(name)
    for _ in range(3):  # a cut upload is refused by INSTALL's size check: try again
        done = await run_once(target, [*INSTALL, remote_path(), str(len(binary))], binary)
        if done.code == 0:
            return
    raise HelperUnusable(f"could not copy the session helper into the workspace "
                    f"(exit {done.code}): {done.stderr.decode(errors='replace')[:200]}")


async def run_helper(target: dict[str, Any], args: list[str],
                     env: dict[str, str] | None = None) -> Outcome:
    """``stackspace-session ARGS`` to its end, installing the helper if missing."""
    for _ in range(2):
        done = await run_once(target, [*RUN, remote_path(), *args], env=env)
        if done.code != MISSING:
            return done
        await install(target)
    return done


class SessionBridge(Session):
    """A WebSocket carried to a session in the workspace (start or attach).

    Built on :class:`proxy.server.Session` and its :class:`proxy.client_link.ClientLink`. The client
    going away or idling out detaches; nothing is killed: the helper keeps the
    session and ends it after its own idle time with no client.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.mode, sid = session_mode(self.claims.session)
        self.session_id = sid or new_session_id()
        self.offset = requested_offset(self.conn.request.path if self.conn.request else "")
        self.fields["session"] = self.session_id

    def helper_args(self) -> list[str]:
        if self.mode == "attach":
            return ["attach", self.session_id]
        cfg = self.config
        return ["start", "--id", self.session_id, "--idle", f"{cfg.session_idle_timeout:g}",
                "--max", str(cfg.max_sessions_per_workspace_kept),
                *(["--tty"] if self.claims.tty else []), "--", *self.claims.command]

    async def open(self) -> tuple[ExecProcess, dict[str, Any], list[tuple[bytes, bytes]],
                                  sf.FrameReader]:
        """Exec the helper and read its hello, installing it once if it is missing."""
        target = self.claims.target
        for attempt in range(2):
            proc = make_process(target, ExecRequest(
                command=[*RUN, remote_path(), *self.helper_args()], tty=False,
                env=dict(self.claims.env)))
            await proc.start()
            reader = sf.FrameReader()
            errors: list[bytes] = []
            try:
                with contextlib.suppress(OSError, ConnectionError):
                    await proc.write(sf.encode_json(sf.ATTACH, {"offset": self.offset}))
                hello = await asyncio.wait_for(self._hello(proc, reader, errors), HELLO_WAIT)
            except BaseException as exc:
                await proc.close()
                if isinstance(exc, TimeoutError):
                    raise ExecError("the session helper did not answer") from exc
                raise
            if hello is not None:
                return proc, json.loads(hello[0][1]), hello[1:], reader
            code = await proc.wait()
            await proc.close()
            if code == MISSING and attempt == 0:
                await install(target)
                continue
            if code in (MISSING, 126):  # still missing, or not executable (noexec)
                raise HelperUnusable(f"the session helper cannot run here (exit {code})")
            message = b"".join(errors).decode(errors="replace").strip()
            message = message.removeprefix("stackspace-session: ")
            raise ExecError(message or f"session helper exited with {code}")
        raise AssertionError("unreachable")

    @staticmethod
    async def _hello(proc: ExecProcess, reader: sf.FrameReader, errors: list[bytes]
                     ) -> list[tuple[bytes, bytes]] | None:
        """The helper's first frames (hello first), or None if it ended without any."""
        while (chunk := await proc.read()) is not None:
            channel, data = chunk
            if channel == STDERR:
                errors.append(data)
                continue
            frames = reader.feed(data)
            if frames and frames[0][0] == sf.HELLO:
                return frames
            if frames:
                raise ExecError("session helper sent no hello")
        return None

    async def run(self) -> None:
        self.started = time.monotonic()
        try:
            proc, hello, early, reader = await self.open()
        except ExecError as exc:
            if isinstance(exc, HelperUnusable) and self.mode == "start":
                now = time.monotonic()
                for key in [k for k, until in _unusable.items() if until <= now]:
                    del _unusable[key]
                _unusable[target_key(self.claims.target)] = now + UNUSABLE_FOR
                log.warning("sessions unavailable here, plain exec",
                            extra={**self.fields, "error": str(exc)})
                await Session.run(self)  # the command runs, ending with its connection
                return
            log.warning("session failed to open", extra={**self.fields, "error": str(exc)})
            await self.end_with(status_failure("InternalError", str(exc)), str(exc)[:120])
            return
        log.info("session attached", extra={**self.fields, "mode": self.mode,
                                             "offset": hello.get("offset")})
        self.touch()
        self.exit_code: int | None = None
        outcome = "error"
        try:
            await self.send(SESSION, json.dumps({
                "session": self.session_id, "offset": hello.get("offset", 0),
                "tty": hello.get("tty", False)}).encode())
            tasks = {asyncio.create_task(self.relay_output(proc, early, reader), name="output"),
                     asyncio.create_task(self.relay_input(proc), name="input"),
                     asyncio.create_task(self.watch_idle(), name="idle")}
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            first = min(done, key=lambda t: t.get_name() != "output")
            name, exc = first.get_name(), first.exception()
            await self.stop(tasks)
            if name == "output" and exc is None and self.exit_code is not None:
                outcome = "exited"
                acked = False
                with contextlib.suppress(ConnectionClosed):
                    await self.send_status(status_exit(self.exit_code))
                    acked = await self.status_acked()
                    await self.conn.close(CloseCode.NORMAL_CLOSURE)
                if acked:  # the client has the exit status: the session may end now
                    with contextlib.suppress(Exception):
                        await proc.write(sf.encode(sf.DONE))
            elif name == "output":
                outcome = "session gone" if exc is None else f"error: {exc!r}"
                await self.end_with(status_failure(
                    "SessionGone", "the session ended without an exit status"), "session gone")
            elif name == "idle":
                outcome = "idle timeout"
                await self.end_with(status_failure(
                    "Timeout", f"{self.idle_message()}; session {self.session_id} goes on "
                    "(stackspace term --attach)"), "idle timeout")
            else:
                outcome = self.client_outcome(exc, gone="client gone (detached)")
        finally:
            await proc.close()  # the helper's attach ends; the session stays
            await self.close_and_log(log, "session detached", outcome, exit_code=self.exit_code)

    async def status_acked(self) -> bool:
        """Whether the client acknowledges the exit status (``[255, 3]``) in time.
        Without it (a client that detached meanwhile, a plain v5 client) the ended
        session stays, its exit code listed, until its idle time runs out."""
        deadline = time.monotonic() + STATUS_ACK_WAIT
        with contextlib.suppress(TimeoutError):
            while (left := deadline - time.monotonic()) > 0:
                message = await asyncio.wait_for(self.conn.recv(), left)
                if message == bytes([CLOSE, STATUS]):
                    return True
        return False

    async def relay_output(self, proc: ExecProcess, early: list[tuple[bytes, bytes]],
                           reader: sf.FrameReader) -> None:
        """Helper frames to v5 channels, until the exit frame or the end of the stream."""
        frames = early
        while True:
            for kind, payload in frames:
                if kind == sf.EXIT:
                    self.exit_code = int(json.loads(payload)["code"])
                    return
                channel = STDOUT if kind == sf.STDOUT else STDERR if kind == sf.STDERR else None
                if channel is not None:
                    await self.send_output(channel, payload)
            chunk = await proc.read()
            if chunk is None:
                return
            if chunk[0] == STDOUT:
                frames = reader.feed(chunk[1])
            else:
                frames = []
                log.warning("session helper", extra={
                    **self.fields, "error": chunk[1][:200].decode(errors="replace")})

    async def relay_input(self, proc: ExecProcess) -> None:
        async for channel, data in self.client_frames():
            if channel == STDIN:
                for frame in sf.split(data, sf.STDIN):  # the helper takes <= 1 MiB a frame
                    await proc.write(frame)
            elif channel == RESIZE:
                await proc.write(sf.encode(sf.RESIZE, data))
            elif channel == CLOSE and data[:1] == bytes([STDIN]):
                await proc.write(sf.encode(sf.CLOSE_STDIN))


async def run_control(session: Any) -> None:
    """``list`` and ``kill``: one short helper run, its output and exit status."""
    mode, sid = session_mode(session.claims.session)
    args = ["list"] if mode == "list" else ["kill", sid]
    try:
        done = await run_helper(session.claims.target, args, env=dict(session.claims.env))
    except ExecError as exc:
        with contextlib.suppress(ConnectionClosed):
            await session.send_status(status_failure("InternalError", str(exc)))
            await session.conn.close(CloseCode.NORMAL_CLOSURE)
        return
    with contextlib.suppress(ConnectionClosed):
        if done.code == MISSING:  # nothing ever ran here: no sessions
            done = Outcome(0 if mode == "list" else 3, b"[]\n" if mode == "list" else b"",
                           b"" if mode == "list" else f"no session {sid}\n".encode())
        if done.stdout:
            await session.send(STDOUT, done.stdout)
        if done.stderr:
            await session.send(STDERR, done.stderr)
        await session.send(STATUS, json.dumps(status_exit(done.code)).encode())
        await session.conn.close(CloseCode.NORMAL_CLOSURE)


async def run_session(session: Any) -> None:
    """The hook :mod:`proxy.server` calls for a ticket with a session claim."""
    try:
        mode, _ = session_mode(session.claims.session)
    except ValueError as exc:
        with contextlib.suppress(ConnectionClosed):
            await session.send_status(status_failure("BadRequest", str(exc)))
            await session.conn.close(CloseCode.POLICY_VIOLATION, str(exc))
        return
    if mode == "start":
        try:
            remote_path()
        except HelperMissing as exc:  # e.g. a proxy image without it: a plain exec
            log.warning("sessions unavailable, plain exec", extra={"error": str(exc)})
            await session.run()
            return
        if _unusable.get(target_key(session.claims.target), 0) > time.monotonic():
            await session.run()  # not again the install that failed a moment ago
            return
    if mode in ("list", "kill"):
        await run_control(session)
        return
    await SessionBridge(session.proxy, session.conn, session.claims).run()
