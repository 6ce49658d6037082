"""The exec proxy (its own process) into workspaces on the remote test Docker host,
over TLS and over SSH: exit codes, separate streams, half-close, a 10 MiB binary
round trip, a TTY with resize, and a refused host key."""

from __future__ import annotations

import hashlib
import io
import os
import time

import pexpect
import pytest

from proxy.server import ProxyConfig
from proxy.tickets import mint_ticket
from service.exec_client import ExecClientError, run_exec
from tests.conftest import remote_runtime
from tests.e2e.exec_fixtures import ProxyProcess, workspace_container
from tests.e2e.remote_helpers import remote_client
from tests.e2e.test_exec_proxy import spawn_terminal

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
KEY = os.urandom(32)


@pytest.fixture(scope="module")
def proxy():
    with ProxyProcess.running(ProxyConfig(key=KEY, idle_timeout=120)) as p:
        yield p


@pytest.fixture(scope="module", params=["tls", "ssh"])
def remote(request, remote_docker_host):
    runtime = remote_runtime(remote_docker_host, request.param)
    client = remote_client(runtime)
    with workspace_container(client, f"exec-remote-{request.param}-{os.urandom(3).hex()}"
                             ) as container:
        yield runtime, container
    client.close()


def ticket(remote, command: list[str], tty: bool = False, env: dict | None = None) -> str:
    runtime, container = remote
    target = {"type": "docker", "runtime": runtime, "container": container.name}
    return mint_ticket(KEY, user="alice", workspace="alice/remote", target=target,
                       command=command, tty=tty, env=env or {})[0]


def run(url: str, t: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    return run_exec(url, t, io.BytesIO(stdin), out, err), out.getvalue(), err.getvalue()


def test_exit_code_streams_and_half_close(proxy, remote, docker_client):
    code, out, err = run(proxy.url, ticket(remote, [
        "sh", "-c", "id -u; pwd; wc -c; echo oops >&2; exit 7"]), stdin=b"12345")
    assert (code, out, err) == (7, b"1000\n/workspace\n5\n", b"oops\n")
    # the exec ran on the remote engine: the local one has no such container
    assert remote[1].name not in [c.name for c in docker_client.containers.list(all=True)]


def test_ten_megabytes_round_trip_binary_safe(proxy, remote):
    data = os.urandom(10 * 1024 * 1024) + bytes(range(256)) * 4
    code, out, _ = run(proxy.url, ticket(remote, ["cat"]), stdin=data)
    assert code == 0 and len(out) == len(data)
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()


def test_terminal_resize_and_exit_code(proxy, remote):
    child = spawn_terminal(proxy.url, ticket(remote, ["bash", "--norc", "-i"], tty=True,
                                             env={"PS1": "rws$ "}))
    child.expect_exact("rws$ ")
    child.sendline("stty size")
    child.expect_exact("24 80")
    child.setwinsize(33, 111)
    time.sleep(0.5)
    child.sendline("stty size")
    child.expect_exact("33 111")
    child.sendline("exit 9")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 9


def test_a_wrong_host_key_refuses_the_session(proxy, remote_docker_host, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")  # the host is unknown
    runtime = {**remote_runtime(remote_docker_host, "ssh", name="unknown-host"),
               "ssh_known_hosts_file": str(known_hosts)}
    target = {"type": "docker", "runtime": runtime, "container": "whatever"}
    t = mint_ticket(KEY, user="alice", workspace="alice/remote", target=target,
                    command=["true"], tty=False)[0]
    with pytest.raises(ExecClientError) as info:
        run(proxy.url, t)
    assert "runtime 'unknown-host'" in str(info.value) and "host key" in str(info.value)
