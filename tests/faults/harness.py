"""Fault injection against a real `stackspace run`: start it as a user would,
follow an operation's engine events over SSE, kill -9 the whole process tree
(service, exec proxy, workers, Pulumi CLI, language host, providers) at a
chosen point, start it again on the same data dir, and check what the user
sees against what is really on the engine.

Shared by tests/faults/ and bench/kill_matrix.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
LABEL = "stackspace.dev/workspace"
BUSY = ("provisioning", "starting", "stopping", "deleting")
ACTIVE = ("queued", "running")
# Texts of Pulumi's own lock/concurrency errors: two engine runs met on one stack.
LOCK_ERRORS = ("concurrentupdate", "currently locked", "conflict", "another update")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether a server could listen on `port` now (as servers do, with
    SO_REUSEADDR: closed connections in TIME_WAIT do not hold it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- processes ------------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def process_tree(root: int) -> list[int]:
    """`root` and all its live descendants (workers call setsid, so a process
    group or session would miss them: follow parent links instead)."""
    kids = _children()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_tree(root: int) -> list[int]:
    """kill -9 of a whole process tree at one instant: freeze every process
    (SIGSTOP, so none can fork or finish a step meanwhile), then SIGKILL all."""
    frozen: set[int] = set()
    while True:
        tree = set(process_tree(root)) - frozen
        if not tree:
            break
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        frozen |= tree
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return sorted(frozen)


def wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in left if alive(p)]
    return left


# --- the service ----------------------------------------------------------------

class ProxyPortTaken(Exception):
    """`stackspace run` stopped: its proxy's port was taken before it bound it."""


@dataclass
class LiveService:
    """`stackspace run` in its own session on loopback, with a fixed data dir and ports."""

    tmp: Path
    runtimes: list[dict[str, Any]]
    quota: int = 10
    sigint_ignored: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proxy_port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: subprocess.Popen | None = None
    pulumi_bin: Path | None = None
    pulumi_home: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # the service's own
    cwd: Path = REPO  # the checkout it runs (another one: a deploy of new code)

    def __post_init__(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.settings = dict(self.settings)
        # A shared passphrase lets two services use one backend (SPEC §9).
        self.passphrase = (self.settings.pop("passphrase", None)
                           or "faults-" + secrets.token_hex(8))
        self.data_dir = self.tmp / "data"
        self.config = self.tmp / "stackspace.yaml"
        self._write_config()
        self.log = self.tmp / "service.log"

    def _write_config(self) -> None:
        self.config.write_text(yaml.safe_dump({
            "data_dir": str(self.data_dir), "listen": f"127.0.0.1:{self.port}",
            "proxy_listen": f"127.0.0.1:{self.proxy_port}", "quota": self.quota,
            "runtimes": self.runtimes, **self.settings}))

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, "STACKSPACE_ADMIN_TOKEN": self.token,
               "PULUMI_CONFIG_PASSPHRASE": self.passphrase}
        for var in ("STACKSPACE_DATA_DIR", "STACKSPACE_LISTEN", "STACKSPACE_PROXY_LISTEN",
                    "PULUMI_BACKEND_URL", "STACKSPACE_QUOTA", "STACKSPACE_DATABASE_URL",
                    "STACKSPACE_SECRETS_DIR", "STACKSPACE_REPLICA_ID"):
            env.pop(var, None)
        if self.pulumi_bin:
            env["STACKSPACE_PULUMI_BIN"] = str(self.pulumi_bin)
        if self.pulumi_home:
            env["PULUMI_HOME"] = str(self.pulumi_home)
        return {**env, **self.extra_env}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend_url(self) -> str:
        return self.settings.get("backend_url") or f"file://{self.data_dir / 'state'}"

    def start(self, command: str = "run") -> None:
        """Start the service; wait until it answers. Free ports are picked
        before they are bound, and any outgoing connection on this machine
        may take one as its source port meanwhile: `run` then refuses to
        start (its proxy cannot listen), and the proxy gets another port."""
        for _ in range(3):
            try:
                return self._start(command)
            except ProxyPortTaken:
                self.proxy_port = free_port()
                self._write_config()
        self._start(command)

    def _start(self, command: str) -> None:
        argv = [sys.executable, "-m", "service.cli", command, "--config", str(self.config)]
        if self.sigint_ignored:  # what `nohup cmd &` from a script gives
            argv = ["/bin/sh", "-c", "trap '' INT; exec \"$@\"", "sh", *argv]
        with self.log.open("ab") as log:
            log.write(f"\n--- start {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            started_at = log.tell()
            # No preexec_fn: Python code between fork and exec in a test process
            # that has gRPC threads (the Pulumi SDK, loaded by other tests on the
            # same xdist worker) can abort the child (SIGABRT, "epoll_wait error").
            self.proc = subprocess.Popen(argv, cwd=self.cwd, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                said = self.log.read_bytes()[started_at:].decode(errors="replace")
                if f"cannot listen on 127.0.0.1:{self.proxy_port}:" in said:
                    raise ProxyPortTaken(said)
                raise AssertionError(f"service exited {self.proc.returncode}: {self.tail()}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).ok:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise AssertionError(f"service did not start: {self.tail()}")

    def ensure_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def kill9(self) -> list[int]:
        assert self.proc is not None
        pids = kill_tree(self.proc.pid)
        self.proc.wait(timeout=30)
        assert not wait_gone(pids), "processes survived SIGKILL"
        return pids

    def restart_after_kill(self) -> None:
        self.kill9()
        self.start()

    def stop(self) -> None:
        """Tear down (tests' finalizer): SIGTERM, then kill whatever is left."""
        if self.proc is None:
            return
        pids = process_tree(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        for pid in pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    # --- HTTP -------------------------------------------------------------------
    def call(self, method: str, path: str, token: str | None = None, **kw: Any
             ) -> requests.Response:
        headers = {"Authorization": f"Bearer {token or self.token}", **kw.pop("headers", {})}
        return requests.request(method, f"{self.url}/api/v1{path}", headers=headers,
                                timeout=60, **kw)

    def op(self, op_id: str) -> dict[str, Any]:
        return self.call("GET", f"/operations/{op_id}").json()

    def workspace(self, name: str) -> requests.Response:
        return self.call("GET", f"/workspaces/{name}")

    def wait_op(self, op_id: str, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            op = self.op(op_id)
            if op["status"] not in ACTIVE:
                return op
            time.sleep(0.5)
        raise AssertionError(f"operation {op_id} did not end in {timeout}s: {self.op(op_id)}")

    def mutate(self, method: str, path: str, timeout: float = 300, **kw: Any
               ) -> dict[str, Any]:
        """Ask for an operation (retrying while another one is in flight: 409)."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.call(method, path, **kw)
            if r.status_code == 202:
                return r.json()
            assert r.status_code == 409 and time.monotonic() < deadline, (r.status_code, r.text)
            time.sleep(1)

    def run_op(self, method: str, path: str, timeout: float = 600, **kw: Any
               ) -> dict[str, Any]:
        return self.wait_op(self.mutate(method, path, **kw)["id"], timeout)

    def settle(self, name: str, timeout: float = 300) -> dict[str, Any]:
        """The workspace once nothing is in flight and it shows no busy state."""
        deadline = time.monotonic() + timeout
        ws: dict[str, Any] = {}
        while time.monotonic() < deadline:
            r = self.workspace(name)
            if r.status_code == 404:
                return {}
            ws = r.json()
            last = ws.get("last_operation") or {}
            if ws["state"] not in BUSY and last.get("status") not in ACTIVE:
                return ws
            time.sleep(0.5)
        raise AssertionError(f"workspace {name} stuck: state={ws.get('state')!r}, last "
                             f"operation={ws.get('last_operation')}")

    def follow(self, op_id: str, until: Callable[[dict[str, Any]], bool],
               timeout: float = 600) -> tuple[bool, list[dict[str, Any]]]:
        """Read the operation's SSE stream until `until(event)`; returns whether
        it matched (False: the operation ended first) and the events seen."""
        seen: list[dict[str, Any]] = []
        with requests.get(f"{self.url}/api/v1/operations/{op_id}/events", stream=True,
                          timeout=timeout,
                          headers={"Authorization": f"Bearer {self.token}"}) as r:
            assert r.status_code == 200, r.text
            for line in r.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                seen.append(event)
                if until(event):
                    return True, seen
                if event.get("type") == "end":
                    return False, seen
        return False, seen

    # --- Pulumi, as an operator sees it -----------------------------------------
    def pulumi(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The plain CLI; on one stack (`--stack S`) through `stackspace stack S`,
        the operator's command, which brings the stack's settings from the store."""
        binary = str(self.pulumi_bin / "pulumi") if self.pulumi_bin else "pulumi"
        env = {**self.env, "PULUMI_BACKEND_URL": self.backend_url,
               "PULUMI_SKIP_UPDATE_CHECK": "true", "PYTHONPATH": str(REPO),
               "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true"}
        command = [binary]
        if "--stack" in args:
            stack = args[args.index("--stack") + 1]
            command = [sys.executable, "-m", "service.cli", "stack", stack,
                       "--config", str(self.config), "--"]
        proc = subprocess.run([*command, *args, "--non-interactive"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        if check:
            assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    def stacks(self) -> set[str]:
        out = self.pulumi("stack", "ls", "--json").stdout
        return {s["name"].rsplit("/", 1)[-1] for s in json.loads(out or "[]")}


# --- kill points ----------------------------------------------------------------

def resource_event(phase: str, name: str, ops: tuple[str, ...] = ()
                   ) -> Callable[[dict[str, Any]], bool]:
    """Matches the engine event of resource `name` (the URN's last part) in `phase`."""
    def match(event: dict[str, Any]) -> bool:
        return (event.get("type") == "resource" and event.get("phase") == phase
                and str(event.get("urn", "")).endswith(f"::{name}")
                and (not ops or event.get("op") in ops))
    return match


def any_resource_event(event: dict[str, Any]) -> bool:
    return event.get("type") == "resource"


EngineCheck = Callable[[Any, str], bool]  # (EngineView, workspace name) -> reached?


@dataclass(frozen=True)
class KillPoint:
    """Where to kill: right after the request (`at_request`), at a fixed
    delay after the operation started running, at an engine event seen over
    SSE, or as soon as the runtime shows a step's effect (`engine`: polled;
    preview and update emit alike-looking events, the runtime does not lie)."""

    label: str
    event: Callable[[dict[str, Any]], bool] | None = None
    delay: float | None = None
    at_request: bool = False
    engine: EngineCheck | None = None


def kill_during(svc: LiveService, op: dict[str, Any], point: KillPoint,
                engine: Any = None, name: str = "") -> str:
    """Kill the whole service at `point` of `op`; returns what the run had reached."""
    if point.at_request:
        svc.kill9()
        return "request accepted"
    if point.engine is not None:
        deadline = time.monotonic() + 600
        while not point.engine(engine, name):
            status = svc.op(op["id"])["status"]
            assert status in ACTIVE, f"the operation ended ({status}) before {point.label}"
            assert time.monotonic() < deadline, f"never reached {point.label}"
            time.sleep(0.02)
        svc.kill9()
        return "engine has " + (",".join(sorted(engine.roles(name))) or "nothing")
    if point.delay is not None:
        deadline = time.monotonic() + 120
        while svc.op(op["id"])["status"] == "queued":
            assert time.monotonic() < deadline, "the operation never started"
            time.sleep(0.05)
        time.sleep(point.delay)
        status = svc.op(op["id"])["status"]
        svc.kill9()
        return f"{point.delay:.0f}s after start ({status})"
    assert point.event is not None
    matched, seen = svc.follow(op["id"], point.event)
    svc.kill9()
    resources = [e for e in seen if e.get("type") == "resource"]
    last = resources[-1] if resources else {}
    resource = str(last.get("urn", "")).rsplit("::", 1)[-1]
    where = f"{last.get('phase', '-')} {last.get('op', '')} {resource}"
    assert matched, f"the operation ended before {point.label}: {[e.get('type') for e in seen]}"
    return where


# --- trial results ----------------------------------------------------------------

@dataclass
class Trial:
    runtime: str
    operation: str
    point: str
    recovered: bool = False
    orphans: int = 0
    reached: str = ""
    seconds: float = 0.0
    error: str = ""

    @property
    def stuck(self) -> bool:
        """The workspace or its operation never settled (the "never stuck" promise)."""
        return "stuck" in self.error or "did not end" in self.error


RESULTS: list[Trial] = []


@contextlib.contextmanager
def trial(runtime: str, operation: str, point: str) -> Iterator[Trial]:
    """Record one kill trial: recovered unless the body raised."""
    t = Trial(runtime, operation, point)
    started = time.monotonic()
    try:
        yield t
        t.recovered = True
    except BaseException as e:
        t.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        raise
    finally:
        t.seconds = time.monotonic() - started
        RESULTS.append(t)


def matrix_table(results: list[Trial]) -> str:
    """The kill matrix: operation x kill point -> trials, recovered, stuck, orphans."""
    rows: dict[tuple[str, str, str], list[Trial]] = {}
    for t in results:
        rows.setdefault((t.runtime, t.operation, t.point), []).append(t)
    head = f"{'runtime':<11}{'operation':<10}{'kill point':<26}{'trials':>7}{'recovered':>10}" \
           f"{'stuck':>6}{'orphans':>8}  reached at kill / error"
    lines = [head, "-" * len(head)]

    def counts(ts: list[Trial]) -> str:
        return (f"{len(ts):>7}{sum(t.recovered for t in ts):>10}{sum(t.stuck for t in ts):>6}"
                f"{sum(t.orphans for t in ts):>8}")

    for (runtime, operation, point), ts in rows.items():
        note = "; ".join(dict.fromkeys(t.error or t.reached for t in ts))[:90]
        lines.append(f"{runtime:<11}{operation:<10}{point:<26}{counts(ts)}  {note}")
    lines.append(f"{'total':<47}{counts(results)}")
    return "\n".join(lines)
