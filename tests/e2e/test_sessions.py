"""Sessions that outlive their connection (SPEC §5) on the local Docker Engine:
the helper copied into the workspace on first use (the default image and a
BusyBox-only one), a killed client, a killed proxy, the client's own
reconnect, list, detach, kill and the idle end."""

from __future__ import annotations

import io
import json
import os
import threading
from dataclasses import replace

import pytest
from websockets.sync.client import connect

from proxy.protocol import RESIZE, SESSION, STDIN, STDOUT, subprotocols
from proxy.server import ProxyConfig
from proxy.tickets import mint_ticket
from service.exec_client import run_exec, start_detached
from tests.e2e.busybox_image import busybox_image
from tests.e2e.exec_fixtures import ProxyProcess, docker_target, workspace_container
from tests.e2e.session_checks import (
    LINES,
    check_killed_client_then_reattach,
    list_sessions,
    loop_command,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
KEY = os.urandom(32)


@pytest.fixture(scope="module", params=["bookworm", "busybox"])
def workspace(request, docker_client):
    image = busybox_image(docker_client) if request.param == "busybox" else \
        "stackspace/workspace:bookworm"
    with workspace_container(docker_client, image=image) as container:
        yield container


@pytest.fixture(scope="module")
def config() -> ProxyConfig:
    return ProxyConfig(key=KEY, idle_timeout=120, session_idle_timeout=120)


@pytest.fixture
def mint(docker_host, workspace):
    def mint(command: list[str], *, tty: bool = False, session: dict | None = None) -> str:
        return mint_ticket(KEY, user="alice", workspace="alice/dev",
                           target=docker_target(docker_host, workspace), command=command,
                           tty=tty, session=session)[0]
    return mint


def ps(container) -> str:
    """Every process's command line (BusyBox's ps has no -e)."""
    return container.exec_run(["sh", "-c", "ps -eo args 2>/dev/null || ps"],
                              user="1000")[1].decode()


def exists_in(container):
    return lambda marker: container.exec_run(["test", "-e", f"/tmp/{marker}"],
                                             user="1000")[0] == 0


def test_killed_client_then_reattach_by_id(config, mint, workspace):
    with ProxyProcess.running(config) as proxy:
        check_killed_client_then_reattach(proxy.url, mint, exists_in(workspace))


class RawSession:
    """A WebSocket to a session, read on a thread (a terminal as a browser holds it)."""

    def __init__(self, url: str, ticket: str, offset: int = 0) -> None:
        self.ws = connect(f"{url}?offset={offset}" if offset else url,
                          subprotocols=subprotocols(ticket),  # type: ignore[arg-type]
                          max_size=2**20, compression=None, legacy=True)
        self.out = bytearray()
        self.info: dict = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for message in self.ws:
                assert isinstance(message, bytes)
                if message[0] == SESSION:
                    self.info = json.loads(message[1:])
                elif message[0] == STDOUT:
                    self.out += message[1:]
        except Exception:  # noqa: BLE001, S110 - the connection is dropped on purpose
            pass

    def send(self, text: str) -> None:
        self.ws.send(bytes([STDIN]) + text.encode())


def test_terminal_survives_a_proxy_kill_and_is_listed_and_killed(config, mint, docker_client,
                                                                 workspace):
    shell = ["bash", "--norc", "-i"] if "bookworm" in workspace.image.tags[0] else ["sh", "-i"]
    first = ProxyProcess(replace(config, port=0))
    try:
        term = RawSession(first.url, mint(shell, tty=True, session={"mode": "start"}))
        term.ws.send(bytes([RESIZE]) + b'{"Width": 100, "Height": 30}')
        wait_for("the session id", lambda: term.info)
        sid = term.info["session"]
        term.send("echo before-$((40+2)); stty size\n")
        wait_for("the first output", lambda: b"before-42" in term.out and b"30 100" in term.out)
    finally:
        first.proc.kill()  # kill -9: no goodbye to anyone
        first.proc.wait()
    with ProxyProcess.running(config) as second:
        again = RawSession(second.url, mint(["attach"], tty=True,
                                            session={"mode": "attach", "id": sid}))
        wait_for("the replay", lambda: b"before-42" in again.out)
        assert again.info["session"] == sid and again.info["tty"] is True
        again.send("echo after-$((6*7))x\n")
        wait_for("the shell to answer", lambda: b"after-42x" in again.out)
        listed = {s["id"]: s for s in list_sessions(second.url, mint)}
        assert listed[sid]["running"] is True and listed[sid]["attached"] == 1
        assert listed[sid]["tty"] is True and listed[sid]["command"] == shell
        again.ws.close()
        code, _, _ = run_exec_quiet(second.url, mint(["kill"], session={"mode": "kill",
                                                                         "id": sid}))
        assert code == 0
        wait_for("the session to end",
                 lambda: sid not in [s["id"] for s in list_sessions(second.url, mint)])


def run_exec_quiet(url: str, ticket: str) -> tuple[int, bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    return run_exec(url, ticket, io.BytesIO(), out, err), out.getvalue(), err.getvalue()


class Buffer(io.RawIOBase):
    """A stdout another thread can watch while run_exec writes it."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self.data += b
        return len(b)


def test_client_reconnects_by_itself_across_a_proxy_restart(config, mint, workspace):
    """The output is neither lost nor duplicated, the exit code arrives."""
    marker = f"reconnect-{os.urandom(3).hex()}"
    proxies = [ProxyProcess(replace(config, port=0))]
    out, err, result = Buffer(), Buffer(), {}

    def reattach(sid: str) -> tuple[str, str]:
        return proxies[-1].url, mint(["attach"], session={"mode": "attach", "id": sid})

    def client() -> None:
        result["code"] = run_exec(proxies[0].url, mint(loop_command(marker),
                                                       session={"mode": "start"}),
                                  io.BytesIO(), out, err, reconnect=reattach)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_for("the first line", lambda: b"line 1\n" in out.data)
        proxies[0].proc.kill()
        proxies[0].proc.wait()
        proxies.append(ProxyProcess(replace(config, port=0)))
        thread.join(60)
        assert not thread.is_alive()
        assert result["code"] == 3
        assert bytes(out.data) == b"".join(b"line %d\n" % i for i in range(1, LINES + 1))
        assert bytes(err.data) == b""
        assert exists_in(workspace)(marker)
    finally:
        for p in proxies:
            p.stop()


def test_detached_command_and_idle_end(config, mint, workspace):
    with ProxyProcess.running(config, session_idle_timeout=2) as proxy:
        sid = start_detached(proxy.url, mint(["sh", "-c", "echo started; sleep 4321"],
                                             session={"mode": "start"}))
        wait_for("the command", lambda: "sleep 4321" in ps(workspace))
        listed = {s["id"]: s for s in list_sessions(proxy.url, mint)}
        assert listed[sid]["running"] is True and listed[sid]["attached"] == 0
        # no client for the idle time: the command is killed, the session gone
        wait_for("the command to be killed", lambda: "sleep 4321" not in ps(workspace))
        wait_for("the session to be gone",
                 lambda: sid not in [s["id"] for s in list_sessions(proxy.url, mint)])


def test_a_workspace_whose_tmp_is_noexec_gets_plain_execs(docker_client, docker_host, config):
    """The helper cannot run from a noexec /tmp: commands still run (ending with
    their connection, as before sessions), the first and the next."""
    container = docker_client.containers.run(
        "stackspace/workspace:bookworm", ["sleep", "infinity"], user="1000", init=True,
        detach=True, network_mode="none", tmpfs={"/tmp": "rw,noexec,mode=1777"},
        labels={"stackspace.dev/test": "exec-proxy"})
    try:
        def mint(command: list[str]) -> str:
            return mint_ticket(KEY, user="alice", workspace="alice/noexec",
                               target=docker_target(docker_host, container), command=command,
                               tty=False, session={"mode": "start"})[0]
        with ProxyProcess.running(config) as proxy:
            for _ in range(2):
                out, err = io.BytesIO(), io.BytesIO()
                code = run_exec(proxy.url, mint(["sh", "-c", "echo plain; exit 5"]),
                                io.BytesIO(), out, err)
                assert (code, out.getvalue()) == (5, b"plain\n")
    finally:
        container.remove(force=True)
