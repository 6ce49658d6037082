"""TCP port forwarding through the proxy: one WebSocket per forwarded connection.

``GET /forward`` upgraded to WebSocket, with a "forward" ticket (kind, user,
workspace, target and port, signed and single-use like a terminal ticket) in
the subprotocol offer (:mod:`proxy.protocol`). The channels are the exec
channels, reused for a byte stream:

- client -> proxy: ``0`` bytes for the workspace port; ``[255, 0]`` half-close
  (the client's peer sent EOF: the server gets a TCP FIN and may still answer);
- proxy -> client: ``1`` bytes from the workspace port; ``3`` a Status once the
  server side ended (``Success``, or a ``Failure`` naming why: connection
  refused, no pod...), then a normal close.

The proxy never routes to the workspace: on Docker it execs a relay inside it
(:mod:`proxy.relay`), on Kubernetes it uses pods/portforward through the API
server. Forwarded connections are counted per user and per workspace apart from
terminal sessions (their own caps): a browser opens many short connections, and
each must not cost a terminal slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from components.runtime import DockerRuntime, KubernetesRuntime
from proxy.backends import DockerExec, ExecError, ExecRequest, KubernetesExec, target_runtime
from proxy.client_link import ClientLink
from proxy.protocol import (
    CLOSE,
    STDERR,
    STDIN,
    STDOUT,
    status_failure,
    status_success,
)
from proxy.relay import relay_command
from proxy.tickets import TicketClaims

log = logging.getLogger("stackspace.proxy.forward")
READ_CHUNK = 256 * 1024
MAX_ERROR = 2048  # bytes of the relay's stderr kept for the failure message


class Tunnel(ABC):
    """One TCP connection to a port inside a workspace."""

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def send(self, data: bytes) -> None: ...

    @abstractmethod
    async def close_write(self) -> None:
        """Half-close towards the server (it reads EOF, may still answer)."""

    @abstractmethod
    async def recv(self) -> bytes | None:
        """Next bytes from the server; None once its side ended."""

    @abstractmethod
    async def failure(self) -> str | None:
        """After recv() returned None: why the connection failed, or None if it ended well."""

    @abstractmethod
    async def close(self, abort: bool) -> None:
        """Release everything; ``abort`` when the client went away first."""


def make_tunnel(target: dict[str, Any], port: int) -> Tunnel:
    runtime = target_runtime(target)
    if isinstance(runtime, DockerRuntime) and target.get("type") == "docker":
        return DockerTunnel(DockerExec(runtime, target, ExecRequest(
            command=relay_command(port), tty=False)))
    if isinstance(runtime, KubernetesRuntime) and target.get("type") == "kubernetes":
        return KubernetesTunnel(runtime, target, port)
    raise ExecError(f"unknown target type {target.get('type')!r}")


OPEN_RETRIES = (0.2, 0.5, 1.0, 2.0)  # seconds between attempts


async def open_tunnel(target: dict[str, Any], port: int) -> Tunnel:
    """Open, retrying briefly: a burst of connections can exhaust what the runtime
    grants at once (an SSH Docker host's sshd allows MaxSessions channels, 10 by
    default), and those free up as connections end."""
    for delay in (*OPEN_RETRIES, None):
        tunnel = make_tunnel(target, port)
        try:
            await tunnel.open()
            return tunnel
        except ExecError:
            await tunnel.close(abort=False)
            if delay is None:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


class DockerTunnel(Tunnel):
    """The relay exec'd in the container: its stdin/stdout are the connection."""

    def __init__(self, proc: DockerExec) -> None:
        self.proc = proc
        self.stderr = b""

    async def open(self) -> None:
        await self.proc.start()

    async def send(self, data: bytes) -> None:
        await self.proc.write(data)

    async def close_write(self) -> None:
        await self.proc.close_stdin()

    async def recv(self) -> bytes | None:
        while (chunk := await self.proc.read()) is not None:
            channel, data = chunk
            if channel == STDOUT:
                return data
            if channel == STDERR and len(self.stderr) < MAX_ERROR:
                self.stderr += data[:MAX_ERROR - len(self.stderr)]
        return None

    async def failure(self) -> str | None:
        code = await self.proc.wait()
        if code == 0:
            return None
        return self.stderr.decode(errors="replace").strip() or f"relay exited with {code}"

    async def close(self, abort: bool) -> None:
        if abort:
            with contextlib.suppress(Exception):  # the container may be gone
                await self.proc.kill()
        await self.proc.close()


class KubernetesTunnel(Tunnel):
    """pods/portforward through the API server (the official client's ``portforward``:
    a thread per connection moves bytes between its WebSocket and a socketpair that
    this side drives on the event loop). The WebSocket port-forward protocol has no
    half-close: a client's EOF is not passed on, the server's answer still comes back."""

    def __init__(self, runtime: KubernetesRuntime, target: dict[str, Any], port: int) -> None:
        # The pod lookup is the exec backend's (labels, installation, Running).
        self.pods = KubernetesExec(runtime, target, ExecRequest(command=["true"], tty=False))
        self.rt, self.port = runtime, port
        self._pf: Any = None
        self._sock: Any = None

    def _connect(self) -> None:
        from kubernetes.stream import portforward

        pod = self.pods._find_pod()
        core = self.pods._core()
        self._pf = portforward(core.connect_get_namespaced_pod_portforward, pod,
                               self.rt.namespace, ports=str(self.port))
        self._sock = self._pf.socket(self.port)._socket
        self._sock.setblocking(False)

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._connect)
        except ExecError:
            raise
        except Exception as exc:  # ApiException (403: no pods/portforward), connection errors
            raise ExecError(f"runtime {self.rt.name!r}: port-forward failed: {exc}") from exc

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self._sock, data)

    async def close_write(self) -> None:
        return None  # see the class docstring

    async def recv(self) -> bytes | None:
        try:
            data = await asyncio.get_running_loop().sock_recv(self._sock, READ_CHUNK)
        except OSError:
            return None
        return data or None

    async def failure(self) -> str | None:
        error = self._pf.error(self.port) if self._pf is not None else None
        return error.strip() if error else None

    async def close(self, abort: bool) -> None:
        if self._sock is not None:
            self._sock.close()  # the client's thread sees EOF and closes its WebSocket


class ForwardSession(ClientLink):
    """Copies bytes between the client's WebSocket and one tunnel, both ways."""

    def __init__(self, proxy: Any, conn: ServerConnection, claims: TicketClaims) -> None:
        super().__init__(proxy, conn, claims, {"port": claims.port})

    async def _status(self, status: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.send_status(status)

    async def run(self) -> None:
        self.started = time.monotonic()
        try:
            tunnel = await open_tunnel(self.claims.target, self.claims.port)
        except ExecError as exc:
            log.warning("forward failed to start", extra={**self.fields, "error": str(exc)})
            await self._status(status_failure("InternalError", str(exc)))
            await self.conn.close(CloseCode.INTERNAL_ERROR, "forward failed to start")
            return
        self.touch()
        outcome = "error"
        tasks = {asyncio.create_task(self.downstream(tunnel), name="down"),
                 asyncio.create_task(self.upstream(tunnel), name="up"),
                 asyncio.create_task(self.watch_idle(), name="idle")}
        abort = True
        try:
            # The client's half-close ends "up" normally: keep copying the answer.
            pending: set[asyncio.Task[Any]] = set(tasks)
            while True:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                finished = {t.get_name(): t for t in done}
                if "down" in finished:  # the server's end wins, whatever else ended with it
                    first = finished["down"]
                    break
                up = finished.get("up")
                if up is not None and up.exception() is None and up.result():
                    continue  # half-closed: copy the rest of the answer
                first = next(iter(done))
                break
            name = first.get_name()
            if name == "down" and first.exception() is None:
                abort, outcome = False, "closed by server"
                failure = await tunnel.failure()
                if failure:
                    outcome = f"failed: {failure}"
                await self.end_with(status_failure("ConnectionFailed", failure) if failure
                                    else status_success())
            elif name == "idle":
                outcome = "idle timeout"
                await self._status(status_failure("Timeout", self.idle_message()))
            else:
                outcome = self.client_outcome(first.exception())
        finally:
            await self.stop(tasks)
            await tunnel.close(abort)
            await self.close_and_log(log, "forward ended", outcome)

    async def downstream(self, tunnel: Tunnel) -> None:
        while (data := await tunnel.recv()) is not None:
            await self.send_output(STDOUT, data)

    async def upstream(self, tunnel: Tunnel) -> bool:
        """Client bytes to the server, in order; True once the client half-closed,
        False when its WebSocket ended without one."""
        async for channel, data in self.client_frames():
            if channel == STDIN:
                await tunnel.send(data)
            elif channel == CLOSE and data[:1] == bytes([STDIN]):
                await tunnel.close_write()
                return True
        return False
