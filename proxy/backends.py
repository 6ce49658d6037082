"""Exec backends for the proxy: Docker Engine exec and Kubernetes pods/exec.

Both sit behind :class:`ExecProcess` (start, write/close stdin, resize, read
output, wait, kill). Both talk to an API (the Docker Engine API on a unix socket,
tcp:// with TLS or ssh://; the Kubernetes API server through the kubernetes
client), never a CLI. A target names its runtime (the operator's runtime entry:
host, TLS files, SSH identity and known_hosts, kubeconfig) and the workspace.

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
import struct
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any

import docker

from components.base import LABEL_ROLE, label_selector, workspace_labels
from components.clients import HostKeyError, docker_client
from components.runtime import DockerRuntime, KubernetesRuntime, parse_runtime
from components.secret_env import with_secret_env
from components.spec import SpecError
from proxy.engine_stream import EngineStream, open_upgraded
from proxy.protocol import STDERR, STDOUT

READ_CHUNK = 64 * 1024
MARKER = "STACKSPACE_EXEC_ID"

# pods/exec has no workdir or env fields: a POSIX sh sets both, so any image
# with /bin/sh works (BusyBox's env(1) has no --chdir). Argv: WORKDIR, then
# NAME=VALUE assignments up to "--", then the command; values are exported
# from positional parameters, never parsed as shell text.
POSIX_EXEC = ["/bin/sh", "-c",
              'cd "$1" || exit 127; shift; '
              'while [ "$#" -gt 0 ] && [ "$1" != -- ]; do export "$1"; shift; done; '
              'shift; exec "$@"', "sh"]

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


def target_runtime(target: dict[str, Any]) -> Any:
    """The runtime a ticket's target names (an ExecError if it is malformed)."""
    try:
        return parse_runtime(target.get("runtime"))
    except SpecError as exc:
        raise ExecError(f"bad target runtime: {exc}") from exc


def make_process(target: dict[str, Any], request: ExecRequest) -> ExecProcess:
    runtime = target_runtime(target)
    if isinstance(runtime, DockerRuntime) and target.get("type") == "docker":
        return DockerExec(runtime, target, request)
    if isinstance(runtime, KubernetesRuntime) and target.get("type") == "kubernetes":
        return KubernetesExec(runtime, target, request)
    raise ExecError(f"unknown target type {target.get('type')!r}")


# --- Docker ------------------------------------------------------------------------

_clients: dict[DockerRuntime, Any] = {}
_clients_lock = threading.Lock()


def docker_api(rt: DockerRuntime) -> docker.APIClient:
    """One APIClient per runtime (version negotiation and SSH handshake once,
    pooled connections), built like every other client of the runtime."""
    with _clients_lock:
        if rt not in _clients:
            try:
                _clients[rt] = docker_client(rt).api
            except HostKeyError as exc:  # already names the runtime
                raise ExecError(str(exc)) from exc
            except Exception as exc:  # TLS files, unreachable engine, SSH auth
                raise ExecError(f"runtime {rt.name!r}: {exc}") from exc
        return _clients[rt]


def _forget(rt: DockerRuntime) -> None:
    """Drop a client whose connection broke (engine restarted, SSH session gone)."""
    with _clients_lock:
        _clients.pop(rt, None)


class _Demux:
    """Splits Docker's non-TTY stream: 8-byte headers (stream, 0, 0, 0, size BE32).
    Consecutive payloads of one stream come back joined (one copy, fewer messages)."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._rest + data if self._rest else data
        view = memoryview(buf)
        out: list[tuple[int, bytes]] = []
        parts: list[memoryview] = []
        current = STDOUT
        i, n = 0, len(buf)
        while n - i >= 8:
            stream, size = struct.unpack_from(">BxxxL", buf, i)
            if n - i - 8 < size:
                break
            channel = STDERR if stream == 2 else STDOUT
            if parts and channel != current:
                out.append((current, b"".join(parts)))
                parts = []
            if size:
                current = channel
                parts.append(view[i + 8:i + 8 + size])
            i += 8 + size
        if parts:
            out.append((current, b"".join(parts)))
        self._rest = bytes(view[i:])
        return out


class DockerExec(ExecProcess):
    """An exec on the runtime's engine. Create, inspect, resize go through the
    Docker SDK; the attached stream is an upgraded connection the proxy drives
    on its event loop (:mod:`proxy.engine_stream`), the same for unix, TLS and SSH."""

    def __init__(self, runtime: DockerRuntime, target: dict[str, Any],
                 request: ExecRequest) -> None:
        self.container = str(target.get("container") or "")
        if not self.container:
            raise ExecError("docker target has no container")
        self.rt = runtime
        self.req = request
        if target.get("secret_env"):  # exported by a wrapper (components.secret_env)
            self.req = replace(request, command=with_secret_env(request.command))
        self.exec_id = ""
        self._stream: EngineStream | None = None
        self._pending: list[tuple[int, bytes]] = []
        self._demux = None if request.tty else _Demux()
        self._eof = False

    def _api(self) -> docker.APIClient:
        return docker_api(self.rt)

    async def start(self) -> None:
        try:
            api = await asyncio.to_thread(self._api)
            self.exec_id = await asyncio.to_thread(self._create, api)
            self._stream, early = await open_upgraded(
                self.rt, api, f"/exec/{self.exec_id}/start",
                {"Detach": False, "Tty": self.req.tty})
        except ExecError:
            raise
        except Exception as exc:  # API errors, a broken connection, SSH channel refused
            _forget(self.rt)
            detail = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
            raise ExecError(f"runtime {self.rt.name!r}: {detail}") from exc
        if early:
            self._pending.extend(self._frames(early))

    def _create(self, api: docker.APIClient) -> str:
        return api.exec_create(
            self.container, self.req.command, stdin=True, stdout=True, stderr=True,
            tty=self.req.tty, environment=self.req.environment(), user=self.req.user,
            workdir=self.req.workdir)["Id"]

    def _frames(self, data: bytes) -> list[tuple[int, bytes]]:
        return [(STDOUT, data)] if self._demux is None else self._demux.feed(data)

    async def write(self, data: bytes) -> None:
        assert self._stream is not None
        await self._stream.send(data)

    async def close_stdin(self) -> None:
        if self._stream is not None:
            await self._stream.shutdown_write()

    async def resize(self, width: int, height: int) -> None:
        if self.req.tty:
            await asyncio.to_thread(self._api().exec_resize, self.exec_id,
                                    height=height, width=width)

    async def read(self) -> tuple[int, bytes] | None:
        while not self._pending:
            if self._eof or self._stream is None:
                return None
            try:
                data = await self._stream.recv()
            except OSError:
                data = b""
            if not data:
                self._eof = True
                return None
            self._pending.extend(self._frames(data))
        channel, data = self._pending.pop(0)
        if self._pending and self._pending[0][0] == channel:
            # Coalesce what arrived together: fewer, larger WebSocket messages.
            parts = [data]
            while self._pending and self._pending[0][0] == channel:
                parts.append(self._pending.pop(0)[1])
            data = b"".join(parts)
        return channel, data

    async def wait(self) -> int:
        api = self._api()
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
        api = self._api()
        killer = api.exec_create(self.container, ["/bin/sh", "-c", KILL_SCRIPT, "kill",
                                                  self.req.exec_id],
                                 stdout=True, stderr=True, user=self.req.user)["Id"]
        api.exec_start(killer)

    async def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.close()


# --- Kubernetes --------------------------------------------------------------------

POD_WAIT = 30.0  # seconds to wait for a Running workspace pod (one may be coming up)


def workspace_selector(owner: str, workspace: str, installation: str) -> str:
    """The workspace pod's labels; the installation id (from the signed ticket)
    keeps another installation's pod of the same owner/name out. "" (a legacy
    store) selects pods without the label: never an id'd installation's, but
    still a legacy twin's (components/base.py)."""
    return label_selector({**workspace_labels(owner, workspace, installation),
                           LABEL_ROLE: "workspace"})


def pick_pod(pods: list[Any]) -> str | None:
    """A Running, not terminating pod; the newest if several (a rollout)."""
    ready = [p for p in pods if p.status is not None and p.status.phase == "Running"
             and p.metadata.deletion_timestamp is None]
    ready.sort(key=lambda p: p.metadata.creation_timestamp or 0, reverse=True)
    return ready[0].metadata.name if ready else None


class KubernetesExec(ExecProcess):
    """pods/exec through the API server, on the kubernetes client's (blocking) WSClient.

    The pod is found by label selector in the runtime's namespace (the workspace
    may be a bare Pod or a Deployment's pod with a generated name).
    A reader thread moves output into a bounded queue; it blocks when the queue
    is full, so a slow proxy client slows the pod's output instead of buffering.
    The pod's securityContext sets the user; a POSIX sh sets cwd and the exec
    marker (POSIX_EXEC: pods/exec has no fields for them). Workspace env values are not put
    in the exec argv (API-server audit logs record it): the container's own env
    already reaches exec'd processes.
    """

    def __init__(self, runtime: KubernetesRuntime, target: dict[str, Any],
                 request: ExecRequest) -> None:
        self.rt = runtime
        self.owner = str(target.get("owner") or "")
        self.workspace = str(target.get("workspace") or "")
        if not (self.owner and self.workspace):
            raise ExecError("kubernetes target names no workspace")
        self.installation = str(target.get("installation") or "")
        self.container = str(target.get("container") or "workspace")
        self.req = request
        self.pod = ""
        self._core_api: Any = None
        self._ws: Any = None
        self._queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(maxsize=8)
        self._thread: threading.Thread | None = None

    def _core(self) -> Any:
        if self._core_api is None:
            from kubernetes import client

            from components.clients import kube_api_client

            self._core_api = client.CoreV1Api(kube_api_client(self.rt))
        return self._core_api

    def _find_pod(self) -> str:
        selector = workspace_selector(self.owner, self.workspace, self.installation)
        deadline = time.monotonic() + POD_WAIT
        while True:
            pods = self._core().list_namespaced_pod(self.rt.namespace,
                                                    label_selector=selector).items
            name = pick_pod(pods)
            if name:
                return name
            if time.monotonic() > deadline:
                raise ExecError(f"no running pod for workspace {self.workspace!r} in "
                                f"namespace {self.rt.namespace!r}")
            time.sleep(0.5)

    def _stream(self, command: list[str], *, stdin: bool, tty: bool) -> Any:
        from kubernetes.stream import stream

        return stream(self._core().connect_get_namespaced_pod_exec, self.pod,
                      self.rt.namespace, container=self.container, command=command,
                      stdin=stdin, stdout=True, stderr=True, tty=tty,
                      _preload_content=False, binary=True)

    async def start(self) -> None:
        env = [f"{k}={v}" for k, v in self.req.environment().items()]
        command = [*POSIX_EXEC, self.req.workdir, *env, "--", *self.req.command]
        try:
            self.pod = await asyncio.to_thread(self._find_pod)
            self._ws = await asyncio.to_thread(self._stream, command, stdin=True,
                                               tty=self.req.tty)
        except ExecError:
            raise
        except Exception as exc:  # ApiException, config errors, connection errors
            raise ExecError(f"runtime {self.rt.name!r}: kubernetes exec failed: {exc}") from exc
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._pump, args=(loop,), daemon=True)
        self._thread.start()

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        ws = self._ws

        def drain() -> None:
            for ch in (STDOUT, STDERR):
                data = ws.read_channel(ch)
                if data:
                    asyncio.run_coroutine_threadsafe(self._queue.put((ch, data)),
                                                     loop).result()

        try:
            while ws.is_open():
                ws.update(timeout=0.5)
                drain()
            # read_channel of one channel may take in the next frame (another
            # channel's output) before the close: what it took in is still
            # buffered here, and was lost when the loop simply ended.
            drain()
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
