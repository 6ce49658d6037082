"""The stackspace Python SDK: the one client of the HTTP API and the exec proxy,
used by the CLI and by programs (coding agents, scripts, CI).

Its shape follows E2B's SDK, so a tool written for E2B adapts in a few lines::

    from service.sdk import Client

    client = Client()                       # STACKSPACE_URL, STACKSPACE_TOKEN
    ws = client.create({"name": "agent-1", "repository": {"url": "https://..."}})
    result = ws.commands.run("make test", on_stdout=print)
    print(result.exit_code, result.stdout)
    ws.delete()

Every call raises :class:`ApiError` (the service's problem+json, with its
stable `type` and field errors) or :class:`ExecError` (the exec proxy refused
or lost the session); nothing is retried behind the caller's back except
waiting for an operation to end.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import quote

import requests

from service.exec_client import CHUNK, ExecClientError, run_exec, run_pty, start_detached
from service.forward_client import TicketSource, forward_connection
from service.session_cli import reconnector, sessions

DEFAULT_URL = "http://127.0.0.1:8080"
ACTIVE = ("queued", "running")
# How long one HTTP request may take (operations are asynchronous: never long).
REQUEST_TIMEOUT = 60.0

OutputCallback = Callable[[str], Any]
TAR = "application/x-tar"


class ApiError(Exception):
    """The service refused a request. `type` is the problem's stable type
    (e.g. 'validation', 'not-found', 'conflict'); `errors` maps a field to
    what is wrong with it."""

    def __init__(self, status: int, type_: str, detail: str,
                 errors: dict[str, str] | None = None) -> None:
        self.status, self.type, self.detail = status, type_, detail
        self.errors = errors or {}
        lines = [f"{status}: {detail}", *(f"  {k}: {v}" for k, v in self.errors.items())]
        super().__init__("\n".join(lines))


class ExecError(Exception):
    """The exec proxy refused the session or it broke off without an exit code."""


class OperationFailed(Exception):
    """An operation waited for ended other than `succeeded`."""

    def __init__(self, operation: dict[str, Any]) -> None:
        self.operation = operation
        super().__init__(f"{operation['kind']} {operation['workspace']}: "
                         f"{operation['status']} ({operation.get('error') or 'no error'})")


@dataclass
class CommandResult:
    """What a finished command left: its exit code and its whole output."""

    exit_code: int
    stdout: str
    stderr: str


class Client:
    """A connection to one stackspace service, as one user (their token)."""

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 timeout: float = REQUEST_TIMEOUT) -> None:
        self.url = (url or os.environ.get("STACKSPACE_URL") or DEFAULT_URL).rstrip("/")
        self.token = token or os.environ.get("STACKSPACE_TOKEN")
        if not self.token:
            raise ValueError("no token: pass token= or set STACKSPACE_TOKEN")
        self.timeout = timeout
        self._http = requests.Session()
        self._http.headers["Authorization"] = f"Bearer {self.token}"

    # --- raw API ---------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None, *,
             params: dict[str, str] | None = None) -> Any:
        """One API request (`path` under /api/v1); the decoded JSON answer."""
        resp = self._http.request(method, f"{self.url}/api/v1{path}", json=body, params=params,
                                  timeout=self.timeout)
        data = resp.json() if resp.content else {}
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, str(data.get("type", "")).rsplit("/", 1)[-1],
                           data.get("detail", resp.reason),
                           {e["field"]: e["message"] for e in data.get("errors", [])})
        return data

    # --- workspaces ------------------------------------------------------------
    def create(self, spec: dict[str, Any], *, wait: bool = True,
               timeout: float | None = None) -> Workspace:
        """Create a workspace from a spec (SPEC §2); with `wait`, return once
        it runs (raises OperationFailed if the create failed)."""
        op = self.call("POST", "/workspaces", spec)
        if wait:
            self.wait(op, timeout=timeout)
        return self.get(spec["name"])

    def get(self, name: str, *, owner: str | None = None) -> Workspace:
        data = self.call("GET", f"/workspaces/{name}", params={"owner": owner} if owner else None)
        return Workspace(self, data)

    def list(self, *, owner: str | None = None) -> list[Workspace]:
        data = self.call("GET", "/workspaces", params={"owner": owner} if owner else None)
        return [Workspace(self, item) for item in data["items"]]

    # --- operations -------------------------------------------------------------
    def operation(self, op_id: str) -> dict[str, Any]:
        return self.call("GET", f"/operations/{op_id}")

    def wait(self, op: dict[str, Any], *, timeout: float | None = None,
             check: bool = True,
             on_status: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
        """Follow an operation to its end, reading its event stream (SSE) as
        it happens, not polling; a dropped stream is resumed where it broke
        off. `on_status` gets the operation when it starts and when it ends.
        With `check`, an end other than `succeeded` raises OperationFailed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        after = 0
        while op["status"] in ACTIVE:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"operation {op['id']} still {op['status']}")
            try:
                for event in self._stream(op["id"], after, left):
                    if deadline is not None and time.monotonic() > deadline:
                        break
                    if event is None:  # a keep-alive
                        continue
                    after = event.pop("_id", after)
                    if event["event"] == "end":
                        break
                    if op["status"] == "queued" and on_status is not None:
                        op = self.operation(op["id"])  # it has started
                        on_status(op)
            except requests.RequestException:
                pass  # the stream broke off (or was idle past the deadline): look, resume
            op = self.operation(op["id"])
            if on_status is not None:
                on_status(op)
        if check and op["status"] != "succeeded":
            raise OperationFailed(op)
        return op

    def events(self, op_id: str) -> Iterator[dict[str, Any]]:
        """The operation's engine events as they happen (Server-Sent Events),
        ending with its `end` event."""
        for event in self._stream(op_id, 0, None):
            if event is not None:
                event.pop("_id", None)
                yield event

    def _stream(self, op_id: str, after: int, idle: float | None
                ) -> Iterator[dict[str, Any] | None]:
        """The operation's events after event id `after` (each with its `_id`;
        None for a keep-alive). `idle`: the longest wait for the next line
        (a requests error past it). A stream refused for load (503)
        yields nothing, after its Retry-After."""
        headers = {"Last-Event-ID": str(after)} if after else {}
        with self._http.get(f"{self.url}/api/v1/operations/{op_id}/events", stream=True,
                            headers=headers, timeout=(self.timeout, idle)) as resp:
            if resp.status_code == 503:
                time.sleep(min(float(resp.headers.get("Retry-After") or 1), idle or 60))
                return
            if resp.status_code >= 400:
                self.call("GET", f"/operations/{op_id}")  # raises the problem
            kind, data, event_id = "message", [], None
            for line in resp.iter_lines(decode_unicode=True):
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line.startswith("id:"):
                    event_id = int(line[3:].strip() or 0)
                elif line.startswith(":"):
                    yield None
                elif not line and data:
                    yield {"event": kind, **json.loads("\n".join(data)),
                           **({"_id": event_id} if event_id is not None else {})}
                    kind, data, event_id = "message", [], None

    def cancel(self, op_id: str) -> dict[str, Any]:
        return self.call("POST", f"/operations/{op_id}/cancel")


@dataclass
class Workspace:
    """One workspace as last read (`refresh()` reads it again)."""

    client: Client
    data: dict[str, Any]
    commands: Commands = field(init=False)

    files: WorkspaceFiles = field(init=False)

    def __post_init__(self) -> None:
        self.commands = Commands(self)
        self.files = WorkspaceFiles(self)

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def owner(self) -> str:
        return self.data["owner"]

    @property
    def state(self) -> str:
        return self.data["state"]

    def refresh(self) -> Workspace:
        self.data = self.client.get(self.name, owner=self.owner).data
        return self

    def _path(self, suffix: str = "") -> str:
        return f"/workspaces/{self.name}{suffix}"

    def _params(self, queue: bool) -> dict[str, str]:
        params = {"owner": self.owner}
        if queue:
            params["queue"] = "true"
        return params

    def _mutate(self, method: str, suffix: str, body: Any, wait: bool, queue: bool,
                timeout: float | None) -> dict[str, Any]:
        op = self.client.call(method, self._path(suffix), body, params=self._params(queue))
        if wait:
            op = self.client.wait(op, timeout=timeout)
            if op["kind"] != "delete":
                self.refresh()
        return op

    def start(self, *, wait: bool = True, queue: bool = False,
              timeout: float | None = None) -> dict[str, Any]:
        return self._mutate("POST", "/start", None, wait, queue, timeout)

    def stop(self, *, wait: bool = True, queue: bool = False,
             timeout: float | None = None) -> dict[str, Any]:
        return self._mutate("POST", "/stop", None, wait, queue, timeout)

    def update(self, patch: dict[str, Any], *, wait: bool = True, queue: bool = False,
               timeout: float | None = None) -> dict[str, Any]:
        """PATCH the spec (image, env, files, resources, command, secrets)."""
        return self._mutate("PATCH", "", patch, wait, queue, timeout)

    def delete(self, *, wait: bool = True, queue: bool = True,
               timeout: float | None = None) -> dict[str, Any]:
        return self._mutate("DELETE", "", None, wait, queue, timeout)

    def pty(self, *, cols: int = 80, rows: int = 24, on_data: Callable[[bytes], Any],
            command: Sequence[str] | None = None) -> Pty:
        """An interactive terminal (a login shell, or `command` on a pty)."""
        return Pty(self.commands, cols, rows, on_data, command)

    def forward(self, port: int, *, local: int = 0, host: str = "127.0.0.1") -> Forward:
        """Reach `port` inside the workspace at `Forward.address` on this machine
        (E2B: `get_host(port)`), until the Forward is closed."""
        return Forward(self, port, local=local, host=host)

    def ticket(self, command: Sequence[str] | None = None, *, tty: bool = False,
               port: int | None = None, **extra: Any) -> dict[str, Any]:
        """A single-use exec proxy ticket: for a command (or a login shell), or
        with `port` for one forwarded connection."""
        body: dict[str, Any] = {"port": port} if port is not None else {"tty": tty, **extra}
        if command is not None:
            body["command"] = list(command)
        return self.client.call("POST", self._path("/terminals"), body,
                                params={"owner": self.owner})


class _Sink(io.RawIOBase):
    """Collects a stream's bytes and hands each decoded chunk to a callback."""

    def __init__(self, callback: OutputCallback | None) -> None:
        super().__init__()
        self.callback, self.chunks = callback, bytearray()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.chunks += data
        text = self._decoder.decode(bytes(data))
        if text and self.callback is not None:
            self.callback(text)
        return len(data)

    def text(self) -> str:
        return bytes(self.chunks).decode("utf-8", "replace")


class Forward:
    """A local TCP port carried to a port inside the workspace through the exec
    proxy (as `stackspace port-forward`), served on a background thread until
    `close()` (or the end of a `with` block). Nothing is published on the
    workspace's host. `address` is what to connect to: "127.0.0.1:PORT"."""

    def __init__(self, workspace: Workspace, remote: int, *, local: int = 0,
                 host: str = "127.0.0.1") -> None:
        self.remote, self.host, self.port = remote, host, 0
        self.errors: list[str] = []  # connections that failed, with the reason
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

        def fetch() -> dict[str, Any]:
            return workspace.ticket(port=remote)

        async def serve() -> None:
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
            source = TicketSource(fetch)
            await source.first()  # a refusal (not running, bad port) shows here

            async def handle(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
                try:
                    await forward_connection(reader, writer, await source.take())
                except Exception as e:  # noqa: BLE001 - one connection failed, not the forward
                    writer.close()
                    self.errors.append(str(e))

            server = await asyncio.start_server(handle, host, local)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            async with server:
                await server.serve_forever()

        def run() -> None:
            try:
                # The Runner cancels the connections still open when it ends.
                with asyncio.Runner() as runner:
                    runner.run(serve())
            except asyncio.CancelledError:
                pass  # closed
            except BaseException as e:  # noqa: BLE001 - handed to the caller below
                self._failed = e
            finally:
                self._ready.set()

        self._thread = threading.Thread(target=run, name=f"forward-{remote}", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise self._failed

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        if self._loop is not None and self._task is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop has just ended
                self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout=10)

    def __enter__(self) -> Forward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WorkspaceFiles:
    """Files under the workspace root (E2B: `sandbox.files`), streamed through
    the file API: paths are relative to /workspace and confined to it."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._api = Files(workspace.client.url, workspace.client.token or "")

    def read(self, path: str, *, format: str = "text") -> Any:  # noqa: A002 - E2B's name
        """The file's content: `text` (str), `bytes`, or `stream` (an iterator
        of chunks, for files of any size)."""
        resp = self._api.read(self.workspace.name, path)
        if format == "stream":
            return resp.iter_content(CHUNK)
        data = resp.content
        return data if format == "bytes" else data.decode()

    def write(self, path: str, data: str | bytes | BinaryIO, *, mode: int | None = None,
              mtime: float | None = None) -> dict[str, Any]:
        """Write (replace) a file as the workspace user; parent folders are made."""
        body = data.encode() if isinstance(data, str) else data
        return self._api.write(self.workspace.name, path, body, mode=mode, mtime=mtime)

    def list(self, path: str = "") -> list[dict[str, Any]]:
        """A folder's entries: name, type, size, mode, mtime."""
        return self._api.list(self.workspace.name, path)

    def stat(self, path: str) -> dict[str, Any] | None:
        """A path's type, size, mode and mtime; None if it does not exist."""
        return self._api.stat(self.workspace.name, path)

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None


class Commands:
    """Commands in a workspace (E2B: `sandbox.commands`). Each runs in a session
    kept inside the workspace: it outlives this client's connection, a dropped
    connection is reattached by itself (output replayed), and a background
    command can be reattached later by its id."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def _grant(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.workspace.client.call("POST", self.workspace._path("/terminals"), body,
                                          params={"owner": self.workspace.owner})

    def run(self, cmd: str | Sequence[str], *, background: bool = False,
            on_stdout: OutputCallback | None = None,
            on_stderr: OutputCallback | None = None, stdin: bytes | BinaryIO | None = None,
            cwd: str | None = None, envs: dict[str, str] | None = None
            ) -> CommandResult | CommandHandle:
        """Run a command: a string goes to `sh -c`, a list is the argv. To its
        end: output streams to the callbacks as it comes and is returned whole
        with the exit code (a non-zero exit is a result, not an error). With
        `background`, start it and return a handle at once."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if cwd is not None or envs:
            # POSIX sh only, and every value passes as an argument, never code.
            assigns = [f"{k}={v}" for k, v in (envs or {}).items()]
            argv = ["sh", "-c", 'cd "$1" && shift && exec env "$@"', "sh",
                    cwd or ".", *assigns, *argv]
        grant = self._grant({"command": argv, "tty": False})
        if background:
            try:
                return CommandHandle(self, start_detached(grant["url"], grant["ticket"]))
            except ExecClientError as e:
                raise ExecError(str(e)) from e
        source = io.BytesIO(stdin or b"") if stdin is None or isinstance(stdin, bytes) \
            else stdin
        return self._follow(grant, source, on_stdout, on_stderr)

    def _follow(self, grant: dict[str, Any], stdin: BinaryIO,
                on_stdout: OutputCallback | None,
                on_stderr: OutputCallback | None) -> CommandResult:
        out, err = _Sink(on_stdout), _Sink(on_stderr)
        try:
            code = run_exec(grant["url"], grant["ticket"], stdin, out, err,  # type: ignore[arg-type]
                            reconnect=reconnector(self._grant))
        except ExecClientError as e:
            raise ExecError(str(e)) from e
        return CommandResult(code, out.text(), err.text())

    def connect(self, session_id: str) -> CommandHandle:
        """A handle on a command started earlier (by anyone with this token)."""
        return CommandHandle(self, session_id)

    def list(self) -> list[dict[str, Any]]:
        """The workspace's sessions: id, command, started, running or exit code,
        attached clients."""
        try:
            return sessions(self._grant)
        except (ExecClientError, RuntimeError) as e:
            raise ExecError(str(e)) from e


class Pty:
    """An interactive terminal driven by a program (E2B: `sandbox.pty`): a login
    shell on a pseudo-terminal, in a session that outlives its connection
    (a drop is reattached by itself, missed output replayed). Output goes to
    `on_data` (bytes) on a background thread."""

    def __init__(self, commands: Commands, cols: int, rows: int,
                 on_data: Callable[[bytes], Any], command: Sequence[str] | None) -> None:
        self.size = (cols, rows)
        body: dict[str, Any] = {"tty": True}
        if command is not None:
            body["command"] = list(command)
        grant = commands._grant(body)
        read_end, self._input = os.pipe()
        self._resend: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.exit_code: int | None = None
        self.error: Exception | None = None

        class Out(io.RawIOBase):
            def writable(self) -> bool:
                return True

            def write(self, data: bytes) -> int:  # type: ignore[override]
                on_data(bytes(data))
                return len(data)

        def opened(loop: asyncio.AbstractEventLoop, resend: Callable[[], None]) -> None:
            self._loop, self._resend = loop, resend

        def run() -> None:
            try:
                self.exit_code = run_pty(grant["url"], grant["ticket"], read_end, Out(),
                                         lambda: self.size, opened,
                                         reconnect=reconnector(commands._grant))
            except Exception as e:  # noqa: BLE001 - handed to wait()
                self.error = e
            finally:
                os.close(read_end)

        self._thread = threading.Thread(target=run, name="pty", daemon=True)
        self._thread.start()

    def send(self, data: bytes | str) -> None:
        """Type into the terminal (b"\x03" is ^C, b"\x04" ^D)."""
        os.write(self._input, data.encode() if isinstance(data, str) else data)

    def resize(self, cols: int, rows: int) -> None:
        self.size = (cols, rows)
        if self._loop is not None and self._resend is not None:
            with contextlib.suppress(RuntimeError):  # the session has just ended
                self._loop.call_soon_threadsafe(self._resend)

    def wait(self, timeout: float | None = None) -> int:
        """The shell's exit code, once it ended (raises ExecError if it broke off)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the terminal is still open")
        with contextlib.suppress(OSError):
            os.close(self._input)
        if self.error is not None:
            raise ExecError(str(self.error)) from self.error
        assert self.exit_code is not None
        return self.exit_code


@dataclass
class CommandHandle:
    """A command running (or ended) in a session inside the workspace."""

    commands: Commands
    id: str

    def wait(self, *, on_stdout: OutputCallback | None = None,
             on_stderr: OutputCallback | None = None) -> CommandResult:
        """Attach, replay what it printed so far, follow it to its end; the
        output and exit code, even if it ended long ago (while kept)."""
        grant = self.commands._grant({"session": {"attach": self.id}, "tty": False})
        return self.commands._follow(grant, io.BytesIO(), on_stdout, on_stderr)

    def kill(self) -> None:
        grant = self.commands._grant({"session": {"kill": self.id}, "tty": False})
        try:
            run_exec(grant["url"], grant["ticket"], io.BytesIO(), io.BytesIO(), io.BytesIO())
        except ExecClientError as e:
            raise ExecError(str(e)) from e


class FilesError(Exception):
    """A refusal from the service (its problem detail) or a local failure."""


class Files:
    """The file API of one service (the calls ``cp`` makes; an SDK can reuse it)."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url.rstrip("/"), token

    def _url(self, ws: str, path: str) -> str:
        return f"{self.url}/api/v1/workspaces/{ws}/files/{quote(path.lstrip('/'))}"

    def _request(self, method: str, ws: str, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        try:
            resp = requests.request(method, self._url(ws, path), headers=headers,
                                    timeout=(30, 300), **kw)
        except requests.RequestException as exc:
            raise FilesError(f"cannot reach the service: {exc}") from exc
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.reason)
            except ValueError:
                detail = resp.reason
            raise FilesError(f"{ws}:{path}: {detail} ({resp.status_code})")
        return resp

    def stat(self, ws: str, path: str) -> dict[str, Any] | None:
        try:
            return self._request("GET", ws, path, params={"format": "stat"}).json()
        except FilesError as exc:
            if "(404)" in str(exc):
                return None
            raise

    def list(self, ws: str, path: str) -> list[dict[str, Any]]:
        return self._request("GET", ws, path).json()["entries"]

    def read(self, ws: str, path: str) -> requests.Response:
        """A streamed response: iterate ``iter_content``; headers carry mode and mtime."""
        return self._request("GET", ws, path, stream=True)

    def write(self, ws: str, path: str, body: Any, *, mode: int | None = None,
              mtime: float | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/octet-stream"}
        if mode is not None:
            headers["X-Stackspace-Mode"] = f"{mode & 0o7777:04o}"
        if mtime is not None:
            headers["X-Stackspace-Mtime"] = str(int(mtime))
        return self._request("PUT", ws, path, data=body, headers=headers).json()

    def read_tar(self, ws: str, path: str) -> requests.Response:
        return self._request("GET", ws, path, params={"format": "tar"}, stream=True)

    def write_tar(self, ws: str, path: str, body: Any) -> dict[str, Any]:
        return self._request("PUT", ws, path, data=body, headers={"Content-Type": TAR}).json()
