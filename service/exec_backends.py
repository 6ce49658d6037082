"""Exec backends for the proxy: Docker Engine exec and Kubernetes pods/exec.

Both sit behind :class:`ExecProcess` (start, write/close stdin, resize, read
output, wait, kill). Both talk to an API (Docker Engine API through the docker
SDK, the Kubernetes API server through the kubernetes client), never a CLI.

Killing: runc starts every exec'd process as the leader of a new session (TTY
or not), so the process tree of one exec is that session, job-control process
groups included. Each exec gets a random ``STACKSPACE_EXEC_ID`` in its
environment; :data:`KILL_SCRIPT`, run as a second exec, finds the session led by
the process carrying it and SIGKILLs every member (never PID 1's session) until
none is left. The proxy kills only when the client goes away or idles out; a
command that exits normally leaves its background processes alone, as kubectl
exec does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import struct
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import docker

STDOUT, STDERR = 1, 2
READ_CHUNK = 64 * 1024
MARKER = "STACKSPACE_EXEC_ID"

# POSIX sh + /proc only, so it works in any image with a shell. $1 is the exec id.
# The exec's own session is led by a process the runtime started (ppid 0 inside the
# container), or has lost its leader; sessions that descendants created on purpose
# (tmux, setsid daemons) are left alone, like an SSH logout leaves them.
KILL_SCRIPT = r"""
m="STACKSPACE_EXEC_ID=$1"; nl='
'
stat_of() { read -r st < "/proc/$1/stat" 2>/dev/null || return 1; st=${st##*) }; set -- $st
  [ "$1" = Z ] && return 1; echo "$2 $4"; }
root=$(stat_of 1); root=${root#* }; me=$(stat_of $$); me=${me#* }; sids=" "
for d in /proc/[0-9]*; do
  p=${d#/proc/}
  e=$(tr '\0' '\n' < "$d/environ" 2>/dev/null) || continue
  case "$nl$e$nl" in *"$nl$m$nl"*) ;; *) continue ;; esac
  s=$(stat_of "$p") || continue; ppid=${s% *}; s=${s#* }
  if [ "$p" = "$s" ] && [ "$ppid" = 0 ] || [ ! -e "/proc/$s" ]; then sids="$sids$s "; fi
done
i=0
while [ $i -lt 50 ]; do
  left=0
  for d in /proc/[0-9]*; do
    s=$(stat_of "${d#/proc/}") || continue; s=${s#* }
    [ "$s" = "$root" ] || [ "$s" = "$me" ] && continue
    case "$sids" in *" $s "*) kill -KILL "${d#/proc/}" 2>/dev/null && left=1 ;; esac
  done
  [ $left = 0 ] && exit 0
  i=$((i+1)); sleep 0.1
done
exit 1
"""


class ExecError(Exception):
    """The exec could not be started (bad target, no such container, API error)."""


@dataclass
class ExecRequest:
    command: list[str]
    tty: bool
    env: dict[str, str] = field(default_factory=dict)
    user: str = "1000"
    workdir: str = "/workspace"
    exec_id: str = field(default_factory=lambda: secrets.token_hex(8))

    def environment(self) -> dict[str, str]:
        return {**self.env, MARKER: self.exec_id}


class ExecProcess(ABC):
    """One running exec. Methods are coroutines; blocking SDK calls go to threads."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Write to stdin; returns once written (this is the back-pressure)."""

    @abstractmethod
    async def close_stdin(self) -> None: ...

    @abstractmethod
    async def resize(self, width: int, height: int) -> None: ...

    @abstractmethod
    async def read(self) -> tuple[int, bytes] | None:
        """Next output chunk as (channel, bytes), or None once output ended."""

    @abstractmethod
    async def wait(self) -> int:
        """Exit code; call after read() returned None."""

    @abstractmethod
    async def kill(self) -> None:
        """Kill every process of this exec's session."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def make_process(target: dict[str, Any], request: ExecRequest) -> ExecProcess:
    kind = target.get("type")
    if kind == "docker":
        return DockerExec(target, request)
    if kind == "kubernetes":
        return KubernetesExec(target, request)
    raise ExecError(f"unknown target type {kind!r}")


# --- Docker ------------------------------------------------------------------------

_clients: dict[str, docker.APIClient] = {}
_clients_lock = threading.Lock()


def docker_api(host: str) -> docker.APIClient:
    """One APIClient per engine (version negotiation once, pooled connections)."""
    if not host.startswith(("unix://", "tcp://", "http://")):
        raise ExecError("unsupported Docker host (unix:// or tcp:// without TLS)")
    with _clients_lock:
        if host not in _clients:
            _clients[host] = docker.APIClient(base_url=host, version="auto",
                                              max_pool_size=64)
        return _clients[host]


class _Demux:
    """Splits Docker's non-TTY stream: 8-byte headers (stream, 0, 0, 0, size BE32)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out = []
        while len(self._buf) >= 8:
            stream, size = struct.unpack(">BxxxL", self._buf[:8])
            if len(self._buf) < 8 + size:
                break
            payload = bytes(self._buf[8:8 + size])
            del self._buf[:8 + size]
            if payload:
                out.append((STDERR if stream == 2 else STDOUT, payload))
        return out


class DockerExec(ExecProcess):
    def __init__(self, target: dict[str, Any], request: ExecRequest) -> None:
        self.container = str(target.get("container") or "")
        if not self.container:
            raise ExecError("docker target has no container")
        self.host = str(target.get("host") or "unix:///var/run/docker.sock")
        self.req = request
        self.exec_id = ""
        self._sock: socket.socket | None = None
        self._sockio: Any = None
        self._pending: list[tuple[int, bytes]] = []
        self._demux = None if request.tty else _Demux()
        self._eof = False

    async def start(self) -> None:
        await asyncio.to_thread(self._start_blocking)

    def _start_blocking(self) -> None:
        api = docker_api(self.host)
        try:
            self.exec_id = api.exec_create(
                self.container, self.req.command, stdin=True, stdout=True, stderr=True,
                tty=self.req.tty, environment=self.req.environment(), user=self.req.user,
                workdir=self.req.workdir)["Id"]
            sockio = api.exec_start(self.exec_id, tty=self.req.tty, socket=True)
        except docker.errors.APIError as exc:
            raise ExecError(exc.explanation or str(exc)) from exc
        self._sockio = sockio
        sock: socket.socket = getattr(sockio, "_sock", sockio)
        sock.setblocking(False)
        self._sock = sock
        # http.client may have read past the upgrade response into its buffer;
        # those bytes are the first output and must not be lost.
        buffered = getattr(getattr(getattr(sockio, "_response", None), "raw", None), "_fp", None)
        fp = getattr(buffered, "fp", None)
        if fp is not None:
            with contextlib.suppress(Exception):
                early = fp.peek()
                if early:
                    self._pending.extend(self._frames(fp.read(len(early))))

    def _frames(self, data: bytes) -> list[tuple[int, bytes]]:
        return [(STDOUT, data)] if self._demux is None else self._demux.feed(data)

    async def write(self, data: bytes) -> None:
        assert self._sock is not None
        await asyncio.get_running_loop().sock_sendall(self._sock, data)

    async def close_stdin(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)

    async def resize(self, width: int, height: int) -> None:
        if self.req.tty:
            await asyncio.to_thread(docker_api(self.host).exec_resize, self.exec_id,
                                    height=height, width=width)

    async def read(self) -> tuple[int, bytes] | None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while not self._pending:
            if self._eof:
                return None
            try:
                data = await loop.sock_recv(self._sock, READ_CHUNK)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            if not data:
                self._eof = True
                return None
            self._pending.extend(self._frames(data))
        return self._pending.pop(0)

    async def wait(self) -> int:
        api = docker_api(self.host)
        for _ in range(100):  # the stream ends a moment before the engine records the exit
            info = await asyncio.to_thread(api.exec_inspect, self.exec_id)
            if not info.get("Running"):
                return int(info.get("ExitCode") or 0)
            await asyncio.sleep(0.05)
        raise ExecError("exec did not finish after its output ended")

    async def kill(self) -> None:
        # Detach first: while the engine is blocked writing this exec's output to
        # a socket nobody reads, it does not finish other execs (the kill included).
        await self.close()
        if self.exec_id:
            await asyncio.to_thread(self._kill_blocking)

    def _kill_blocking(self) -> None:
        api = docker_api(self.host)
        killer = api.exec_create(self.container, ["/bin/sh", "-c", KILL_SCRIPT, "kill",
                                                  self.req.exec_id],
                                 stdout=True, stderr=True, user=self.req.user)["Id"]
        api.exec_start(killer)

    async def close(self) -> None:
        for obj in (self._sock, self._sockio, getattr(self._sockio, "_response", None)):
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()
        self._sock = self._sockio = None


# --- Kubernetes --------------------------------------------------------------------

class KubernetesExec(ExecProcess):
    """pods/exec through the API server, on the kubernetes client's (blocking) WSClient.

    A reader thread moves output into a bounded queue; it blocks when the queue
    is full, so a slow proxy client slows the pod's output instead of buffering.
    The pod's securityContext sets the user; ``env --chdir`` sets cwd and env
    (pods/exec has no fields for them).
    """

    def __init__(self, target: dict[str, Any], request: ExecRequest) -> None:
        self.target = target
        self.req = request
        self._ws: Any = None
        self._queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(maxsize=8)
        self._thread: threading.Thread | None = None

    def _core(self) -> Any:
        from kubernetes import client, config

        api_client = config.new_client_from_config(
            config_file=self.target.get("kubeconfig"), context=self.target.get("context"))
        return client.CoreV1Api(api_client)

    def _stream(self, command: list[str], *, stdin: bool, tty: bool) -> Any:
        from kubernetes.stream import stream

        core = self._core()
        return stream(core.connect_get_namespaced_pod_exec, self.target["pod"],
                      self.target.get("namespace", "default"),
                      container=self.target.get("container", "workspace"), command=command,
                      stdin=stdin, stdout=True, stderr=True, tty=tty,
                      _preload_content=False, binary=True)

    async def start(self) -> None:
        env = [f"{k}={v}" for k, v in self.req.environment().items()]
        # pods/exec has no workdir or env: env(1) sets both. The command goes
        # through `sh -c 'exec "$@"'` so a first argument holding '=' is never
        # taken for another assignment.
        command = ["env", f"--chdir={self.req.workdir}", "--", *env,
                   "/bin/sh", "-c", 'exec "$@"', "sh", *self.req.command]
        try:
            self._ws = await asyncio.to_thread(self._stream, command, stdin=True,
                                               tty=self.req.tty)
        except Exception as exc:  # ApiException, config errors, connection errors
            raise ExecError(f"kubernetes exec failed: {exc}") from exc
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._pump, args=(loop,), daemon=True)
        self._thread.start()

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        ws = self._ws
        try:
            while ws.is_open():
                ws.update(timeout=0.5)
                for ch in (STDOUT, STDERR):
                    data = ws.read_channel(ch)
                    if data:
                        asyncio.run_coroutine_threadsafe(self._queue.put((ch, data)),
                                                         loop).result()
        finally:
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(self._queue.put(None), loop)

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self._ws.write_stdin, data)

    async def close_stdin(self) -> None:
        await asyncio.to_thread(self._ws.close_channel, 0)

    async def resize(self, width: int, height: int) -> None:
        msg = json.dumps({"Width": width, "Height": height}).encode()
        await asyncio.to_thread(self._ws.write_channel, 4, msg)

    async def read(self) -> tuple[int, bytes] | None:
        return await self._queue.get()

    async def wait(self) -> int:
        code = await asyncio.to_thread(lambda: self._ws.returncode)
        return int(code) if code is not None else 1

    async def kill(self) -> None:
        def run() -> None:
            ws = self._stream(["/bin/sh", "-c", KILL_SCRIPT, "kill", self.req.exec_id],
                              stdin=False, tty=False)
            ws.run_forever(timeout=10)
            ws.close()

        await asyncio.to_thread(run)

    async def close(self) -> None:
        if self._ws is not None:
            await asyncio.to_thread(self._ws.close)
