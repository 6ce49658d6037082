"""The exec proxy end to end: a real workspace container on the Docker Engine, the
proxy as its own process on 127.0.0.1 (``python -m proxy``), and the client
functions the CLI uses."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pexpect
import pytest
from websockets.sync.client import connect

from proxy import activity
from proxy.protocol import subprotocols
from proxy.server import ProxyConfig
from proxy.tickets import mint_ticket
from service.exec_client import ExecClientError, run_exec
from tests.e2e.exec_fixtures import (
    ProxyProcess,
    docker_target,
    processes,
    wait_until_gone,
    workspace_container,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]
KEY = os.urandom(32)


@pytest.fixture(scope="module")
def workspace(docker_client):
    with workspace_container(docker_client) as container:
        yield container


@pytest.fixture(scope="module")
def config() -> ProxyConfig:
    return ProxyConfig(key=KEY, idle_timeout=120)


@pytest.fixture(scope="module")
def proxy(config):
    with ProxyProcess.running(config) as p:
        yield p


@pytest.fixture
def ticket(docker_host, workspace):
    def mint(command: list[str], *, tty: bool = False, user: str = "alice",
             name: str = "alice/dev", key: bytes = KEY, **kw) -> str:
        return mint_ticket(key, user=user, workspace=name,
                           target=docker_target(docker_host, workspace), command=command,
                           tty=tty, env=kw.pop("env", {}), **kw)[0]
    return mint


def run(url: str, ticket: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    code = run_exec(url, ticket, io.BytesIO(stdin), out, err)
    return code, out.getvalue(), err.getvalue()


# --- exec, exit codes, byte pipes ---------------------------------------------------

def test_exec_runs_as_workspace_user_with_env_and_separate_streams(proxy, ticket):
    code, out, err = run(proxy.url, ticket(
        ["sh", "-c", 'id -u; pwd; echo "$GREETING"; echo oops >&2; exit 7'],
        env={"GREETING": "hello there"}))
    assert (code, out, err) == (7, b"1000\n/workspace\nhello there\n", b"oops\n")


def test_exit_code_zero_and_stdin_half_close(proxy, ticket):
    # wc only prints once stdin is closed: the half-close must reach the process.
    code, out, _ = run(proxy.url, ticket(["wc", "-c"]), stdin=b"12345")
    assert (code, out.strip()) == (0, b"5")


def test_ten_megabytes_round_trip_binary_safe(proxy, ticket):
    data = os.urandom(10 * 1024 * 1024) + bytes(range(256)) * 4
    code, out, _ = run(proxy.url, ticket(["cat"]), stdin=data)
    assert code == 0
    assert len(out) == len(data)
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()


# --- terminal ----------------------------------------------------------------------

def spawn_terminal(url: str, ticket: str) -> pexpect.spawn:
    env = {**os.environ, "STACKSPACE_URL": url, "STACKSPACE_TICKET": ticket,
           "PYTHONPATH": str(REPO)}
    return pexpect.spawn(sys.executable, [str(REPO / "tests/e2e/exec_fixtures.py")],
                         env=env, dimensions=(24, 80), timeout=20)


def test_interactive_terminal_resize_ctrl_c_and_exit_code(proxy, ticket):
    child = spawn_terminal(proxy.url, ticket(["bash", "--norc", "-i"], tty=True,
                                             env={"PS1": "ws$ ", "TERM": "xterm"}))
    child.expect_exact("ws$ ")
    child.sendline("stty size")
    child.expect_exact("24 80")
    child.expect_exact("ws$ ")
    child.setwinsize(40, 123)  # the kernel sends the helper SIGWINCH
    for _ in range(50):  # the resize travels on its own channel: ask until it landed
        child.sendline("stty size")
        if child.expect_exact(["40 123", "24 80"]) == 0:
            break
        child.expect_exact("ws$ ")
    else:
        raise AssertionError("the resize never reached the remote terminal")
    child.expect_exact("ws$ ")
    # The quotes keep the typed line's echo from matching the command's output.
    child.sendline("echo sl''eeping; sleep 300; echo not-interrupted")
    child.expect_exact("sleeping")
    child.sendcontrol("c")  # raw mode: ^C travels as a byte, the remote tty makes it SIGINT
    child.expect_exact("ws$ ")
    child.sendline("exit 5")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 5
    assert b"not-interrupted" not in child.before


# --- ticket refusals ---------------------------------------------------------------

def refused(url: str, ticket: str) -> ExecClientError:
    with pytest.raises(ExecClientError) as info:
        run(url, ticket)
    return info.value


def assert_not_run(workspace, marker: str) -> None:
    code, _ = workspace.exec_run(["test", "-e", f"/tmp/{marker}"], user="1000")
    assert code == 1, f"{marker} exists: the refused command was executed"


def test_expired_ticket_is_refused_before_exec(proxy, ticket, workspace):
    t = ticket(["touch", "/tmp/expired"], ttl=30, now=time.time() - 31)
    err = refused(proxy.url, t)
    assert (err.code, str(err)) == (1008, "ticket refused: ticket expired")
    assert_not_run(workspace, "expired")


def test_replayed_ticket_is_refused(proxy, ticket, workspace):
    t = ticket(["sh", "-c", "echo once >> /tmp/replay"])
    assert run(proxy.url, t)[0] == 0
    err = refused(proxy.url, t)
    assert (err.code, str(err)) == (1008, "ticket refused: ticket already used")
    _, out = workspace.exec_run(["cat", "/tmp/replay"], user="1000")
    assert out == b"once\n"


def test_tampered_ticket_is_refused(proxy, ticket, workspace):
    version, kid, body, sig = ticket(["true"]).split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["cmd"] = ["touch", "/tmp/tampered"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    err = refused(proxy.url, f"{version}.{kid}.{forged}.{sig}")
    assert (err.code, str(err)) == (1008, "ticket refused: ticket signature is invalid")
    assert_not_run(workspace, "tampered")


def test_ticket_from_another_key_is_refused(proxy, ticket, workspace):
    err = refused(proxy.url, ticket(["touch", "/tmp/foreign"], key=os.urandom(32)))
    assert (err.code, str(err)) == (1008, "ticket refused: ticket was signed with a different key")
    assert_not_run(workspace, "foreign")


def test_unknown_path_or_unreachable_proxy(proxy, ticket):
    with pytest.raises(ExecClientError, match="HTTP 404"):
        run(proxy.url.replace("/exec", "/other"), ticket(["true"]))
    with pytest.raises(ExecClientError, match="cannot reach"):
        run("ws://127.0.0.1:9/exec", ticket(["true"]))


def test_garbage_or_missing_ticket_is_refused(proxy):
    assert str(refused(proxy.url, "not-a-ticket")) == "ticket refused: malformed ticket"
    with connect(proxy.url, subprotocols=["v5.channel.k8s.io"]) as ws:  # type: ignore[list-item]
        with pytest.raises(Exception):  # noqa: B017 - the close is what we check
            ws.recv(timeout=10)
        assert ws.close_code == 1008 and ws.close_reason == "ticket refused: no ticket"


# --- limits ------------------------------------------------------------------------

def open_session(url: str, ticket: str):
    """A raw session that stays open (for caps, back-pressure and disconnects)."""
    return connect(url, subprotocols=subprotocols(ticket), max_size=2**20,  # type: ignore[arg-type]
                   compression=None)


@contextmanager
def held_session(url: str, ticket: str) -> Iterator[object]:
    """A session the proxy admitted and started (its command said so), kept open."""
    ws = open_session(url, ticket)
    try:
        assert ws.recv(timeout=60) == bytes([1]) + b"up\n"
        yield ws
    finally:
        ws.close()


HOLD = ["sh", "-c", "echo up; exec cat"]


def admitted_once_freed(url: str, mint) -> int:
    """The exit code of a session retried while the proxy still frees a slot (1013)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return run(url, mint())[0]
        except ExecClientError as err:
            if err.code != 1013 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_session_caps_per_user_and_per_workspace(config, ticket):
    with ProxyProcess.running(config, max_sessions_per_user=2,
                             max_sessions_per_workspace=1) as p:
        with (held_session(p.url, ticket(HOLD, user="alice", name="alice/one")),
              held_session(p.url, ticket(HOLD, user="alice", name="alice/two"))):
            err = refused(p.url, ticket(["true"], user="alice", name="alice/three"))
            assert (err.code, str(err)) == (1013, "too many sessions for user (limit 2)")
            err = refused(p.url, ticket(["true"], user="bob", name="alice/one"))
            assert (err.code, str(err)) == (1013, "too many sessions for workspace (limit 1)")
        assert admitted_once_freed(
            p.url, lambda: ticket(["true"], user="alice", name="alice/one")) == 0


def test_session_caps_hold_across_proxy_replicas(config, ticket, store_target):
    """Two proxies on one database (SPEC §9): a user's cap counts both."""
    shared = {"database_url": str(store_target), "max_sessions_per_user": 2}
    with ProxyProcess.running(config, **shared) as a, ProxyProcess.running(config, **shared) as b:
        with (held_session(a.url, ticket(HOLD, name="alice/one")),
              held_session(b.url, ticket(HOLD, name="alice/two"))):
            for p in (a, b):
                err = refused(p.url, ticket(["true"], name="alice/three"))
                assert (err.code, str(err)) == (1013, "too many sessions for user (limit 2)")
            assert run(b.url, ticket(["true"], user="bob", name="bob/one"))[0] == 0
        # The sessions ended on their proxies: the slots are free on either.
        assert admitted_once_freed(b.url, lambda: ticket(["true"], name="alice/three")) == 0


def test_idle_session_is_closed_and_its_process_killed(config, ticket, workspace):
    with ProxyProcess.running(config, idle_timeout=1.5) as p:
        started = time.monotonic()
        err = refused(p.url, ticket(["sleep", "4321"]))
        assert str(err) == "no activity for 1.5s"
        assert time.monotonic() - started < 10
    assert "sleep 4321" not in wait_until_gone(workspace, "sleep 4321")


def test_oversized_frame_closes_the_session(config, ticket, workspace):
    with (ProxyProcess.running(config, max_frame_bytes=64 * 1024) as p,
          open_session(p.url, ticket(["sh", "-c", "cat; sleep 5678"])) as ws):
        ws.send(b"\x00" + b"x" * (128 * 1024))
        with pytest.raises(Exception):  # noqa: B017 - the close is what we check
            while True:
                ws.recv(timeout=10)
        assert ws.close_code == 1009  # message too big
    assert "sleep 5678" not in wait_until_gone(workspace, "sleep 5678")


def bytes_written(container, pattern: str) -> int:
    """What the (one) process matching ``pattern`` has written so far (/proc/PID/io)."""
    code, out = container.exec_run(
        ["sh", "-c", 'for p in $(pgrep -f "$1"); do sed -n "s/^wchar: //p" /proc/$p/io; '
                     'done', "sh", pattern], user="1000")
    values = [int(v) for v in out.decode().split()]
    assert code == 0 and values, out
    return max(values)


def test_slow_client_backpressures_the_command(proxy, ticket, workspace):
    # 256 MiB of output that the client never reads: the producer must block
    # (the proxy buffers a bounded amount) instead of finishing into memory.
    with open_session(proxy.url, ticket(
            ["sh", "-c", "head -c 268435456 /dev/zero; touch /tmp/bp-done"])):
        # Until the producer stalls: the same byte count on 5 reads in a row.
        deadline, seen = time.monotonic() + 60, []
        while len(seen) < 5 or len(set(seen[-5:])) > 1:
            assert time.monotonic() < deadline, f"the producer never stalled: {seen[-5:]}"
            seen.append(bytes_written(workspace, "head -c 268435456"))
            time.sleep(0.2)
        assert 0 < seen[-1] < 64 << 20, seen[-1]  # stalled with a bounded amount in flight
        assert_not_run(workspace, "bp-done")
    assert "head -c" not in wait_until_gone(workspace, "head -c")


# --- teardown ----------------------------------------------------------------------

def test_client_vanishing_mid_stream_leaves_no_process(proxy, ticket, workspace):
    with open_session(proxy.url, ticket(["sh", "-c", "sleep 2468 & yes"])) as ws:
        assert ws.recv(timeout=10)[:1] == b"\x01"  # output is flowing
        ws.socket.shutdown(socket.SHUT_RDWR)  # no close frame: the peer just goes away
    # The proxy's kill script walks /proc in a shell: seconds on a loaded host.
    ps = wait_until_gone(workspace, "sleep 2468", timeout=60)
    assert "sleep 2468" not in ps and " yes" not in ps
    assert "sleep infinity" in ps  # only the session was killed, not the workspace


def test_closed_terminal_kills_jobs_but_not_detached_daemons(proxy, ticket, workspace):
    with open_session(proxy.url, ticket(["bash", "--norc", "-i"], tty=True,
                                        env={"PS1": "ws$ "})) as ws:
        # a job in its own process group, and a daemon in its own session (like tmux)
        ws.send(b"\x00sleep 1357 & setsid sleep 9753 &\n")
        deadline = time.monotonic() + 10
        while "sleep 9753" not in processes(workspace) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "sleep 1357" in processes(workspace)
    ps = wait_until_gone(workspace, "sleep 1357")
    assert "sleep 1357" not in ps and "sleep 9753" in ps
    workspace.exec_run(["pkill", "-f", "sleep 9753"], user="1000")


@contextmanager
def activity_receiver() -> Iterator[tuple[str, list[tuple[bytes, dict[str, str]]]]]:
    """An HTTP endpoint on loopback collecting the proxy's activity reports."""
    got: list[tuple[bytes, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((body, dict(self.headers)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/activity", got
    finally:
        server.shutdown()


def wait_for(got: list, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(got) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_activity_is_reported_rate_limited_and_signed(config, ticket):
    with (activity_receiver() as (url, got),
          ProxyProcess.running(config, activity_url=url, activity_interval=60) as p):
        for _ in range(3):
            assert run(p.url, ticket(["echo", "hi"], user="carol", name="carol/ws"))[0] == 0
        # Another workspace's session after them: its report comes after any of carol's.
        assert run(p.url, ticket(["echo", "hi"], user="dave", name="dave/ws"))[0] == 0
        wait_for(got, 2)
    reports = [json.loads(body)["workspace"] for body, _ in got]
    assert sorted(reports) == ["carol/ws", "dave/ws"], reports
    body, headers = next((b, h) for b, h in got if b"carol/ws" in b)
    report = json.loads(body)
    assert report["user"] == "carol" and report["workspace"] == "carol/ws"
    assert abs(report["timestamp"] - time.time()) < 60
    # Signed in its headers (checked before the body is read), the body by its digest.
    activity.check_body(activity.check_headers(KEY, headers, time.time()), body)
    with pytest.raises(activity.ActivityRejected):
        activity.check_headers(b"k" * 32, headers, time.time())
