"""An outbound allowlist on Docker (a runtime's `egress_allow`, issue 17 item 3),
through the service on the real engine: two web servers this test starts share
a network with the workspace, and both answer a plain container there; the
workspace, allowed `<first server's name>:8080` only, reaches the first (its
name resolved by the network holder), and is refused at the second server and
at the first one's other port. The workspace user holds no capability, and
iptables run in its namespace without NET_ADMIN cannot flush the rules. The
allowlist holds after stop/start; exec and port forwarding keep working. On the
local engine and on the remote test host over TLS and over SSH."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from tests.api.conftest import custom_service
from tests.conftest import remote_runtime
from tests.e2e.busybox_image import busybox_image
from tests.e2e.portforward_helpers import git_advertisement, port_forward, start_git_daemon
from tests.e2e.remote_helpers import labelled, operate, remote_client, stackspace_exec, wait_op

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

BUSYBOX = "stackspace/busybox:test"
HOLDER_IMAGE = "stackspace/egress:1"
# Serves its marker ($1) on ports $2 and $3 (an allowed port and one that is
# not), of address $4 if given.
SERVE = ('mkdir -p /tmp/www && echo "$1" > /tmp/www/index.html && '
         'httpd -p "${4:+$4:}$3" -h /tmp/www && exec httpd -f -p "${4:+$4:}$2" -h /tmp/www')
# One HTTP GET with bash's /dev/tcp (name resolution by the workspace's own libc).
GET = ('exec 3<>"/dev/tcp/$1/$2" || exit 7; printf "GET / HTTP/1.0\\r\\n\\r\\n" >&3; '
       "cat <&3")


@dataclass
class Targets:
    network: str
    tag: str
    allow_entry: str  # the runtime's one egress_allow entry
    allowed: tuple[str, int]  # host, port: answers with its marker
    denied: list[tuple[str, int]]  # reachable on the network, not allowed
    addresses: dict[tuple[str, int], str]  # (host, port) -> address for the control


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextmanager
def targets(docker_client: Any, on_host_network: bool = False) -> Iterator[Targets]:
    """A bridge network with two web servers. On the local engine: containers
    on that network, the allowed one by its name (Docker's DNS). On the remote
    test host (whose bridges forward nothing between containers: it runs without
    iptables rules, under this machine's FORWARD policy), containers on the host
    network bound to the network's gateway address only, told apart by port."""
    busybox_image(docker_client)
    tag = secrets.token_hex(3)
    net = docker_client.networks.create(f"stackspace-egress-test-{tag}", driver="bridge",
                                        labels={"stackspace.dev/test": "egress"})
    made = []
    try:
        run = {"detach": True, "labels": {"stackspace.dev/test": "egress"}}
        if on_host_network:
            gateway = net.attrs["IPAM"]["Config"][0]["Gateway"]
            p1, p2 = free_ports(2)
            made.append(docker_client.containers.run(
                BUSYBOX, ["sh", "-c", SERVE, "sh", f"allowed-{tag}", str(p1), str(p2), gateway],
                network_mode="host", **run))
            yield Targets(net.name, tag, f"{gateway}:{p1}", (gateway, p1), [(gateway, p2)],
                          {(gateway, p1): gateway, (gateway, p2): gateway})
            return
        for role in ("allowed", "denied"):
            made.append(docker_client.containers.run(
                BUSYBOX, ["sh", "-c", SERVE, "sh", f"{role}-{tag}", "8080", "8081"],
                name=f"egress-{role}-{tag}", network=net.name, **run))
        ips = {c.name: c.attrs["NetworkSettings"]["Networks"][net.name]["IPAddress"]
               for c in (docker_client.containers.get(m.id) for m in made)}
        allowed, denied = f"egress-allowed-{tag}", f"egress-denied-{tag}"
        yield Targets(net.name, tag, f"{allowed}:8080", (allowed, 8080),
                      [(denied, 8080), (allowed, 8081)],
                      {(allowed, 8080): ips[allowed], (denied, 8080): ips[denied],
                       (allowed, 8081): ips[allowed]})
    finally:
        for c in made:
            c.remove(force=True)
        net.remove()


def running_ids(docker_client: Any, name: str) -> set[str]:
    """The workspace's containers but init: the network holder and the workspace."""
    return {c.id for c in labelled(docker_client, "alice", name)[0]
            if c.labels["stackspace.dev/role"] != "init"}


def http_get(svc: Any, name: str, host: str, port: int) -> tuple[int, str]:
    r = stackspace_exec(svc, name, "timeout", "10", "bash", "-c", GET, "get", host, str(port))
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def check_allowlist(svc: Any, name: str, t: Targets) -> None:
    code, out = http_get(svc, name, *t.allowed)
    assert code == 0 and f"allowed-{t.tag}" in out, out
    for host, port in t.denied:
        code, out = http_get(svc, name, host, port)
        assert code != 0 and "refused" in out.lower(), (host, port, out)


def check_unresolved(svc: Any, docker_client: Any, tag: str) -> None:
    name = f"egress-x-{tag}"
    try:
        op = operate(svc, "POST", "", json={"name": name, "runtime": "unresolved"})
        assert op["status"] == "failed"
        assert f"cannot resolve nowhere-{tag}.invalid (runtime.egress_allow)" in op["error"], op
        (ws,) = [c for c in labelled(docker_client, "alice", name)[0]
                 if c.labels["stackspace.dev/role"] == "workspace"]
        assert ws.status != "running"
    finally:
        assert operate(svc, "DELETE", f"/{name}?queue=true")["status"] == "succeeded"


def test_outbound_allowlist(tmp_path, docker_host, docker_client, pulumi_settings,
                            docker_provider):
    runtime = {"name": "local", "type": "docker", "host": docker_host}
    with targets(docker_client) as made:
        check_on(docker_client, runtime, made, tmp_path, docker_host, pulumi_settings)


@pytest.mark.parametrize("kind", ["ssh"])  # TLS is the same code past the transport
def test_outbound_allowlist_on_a_remote_host(kind, tmp_path, docker_host, pulumi_settings,
                                             docker_provider, remote_docker_host):
    runtime = remote_runtime(remote_docker_host, kind)
    remote = remote_client(runtime)
    try:
        with targets(remote, on_host_network=True) as made:
            check_on(remote, runtime, made, tmp_path, docker_host, pulumi_settings)
    finally:
        remote.close()


def check_on(docker_client: Any, runtime: dict[str, str], t: Targets, tmp_path: Any,
             docker_host: str, pulumi_settings: Any) -> None:
    # The control: on that network every target answers a container without rules.
    for target in [t.allowed, *t.denied]:
        out = docker_client.containers.run(
            BUSYBOX, ["sh", "-c", 'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 "$1" "$2"',
                      "sh", t.addresses[target], str(target[1])],
            network=t.network, remove=True)
        assert f"-{t.tag}".encode() in out, (target, out)
    tag, network = t.tag, t.network
    runtimes = [{**runtime, "network_mode": network,
                 "egress_allow": [t.allow_entry]}]
    if runtime["name"] == "local":  # a name that does not resolve fails the run, naming it
        runtimes.append({**runtime, "name": "unresolved", "network_mode": network,
                         "egress_allow": [f"nowhere-{tag}.invalid:443"]})
    name = f"egress-{tag}"
    with custom_service(tmp_path, docker_host, pulumi_settings, runtimes=runtimes) as svc:
        try:
            op = operate(svc, "POST", "", json={"name": name})
            assert op["status"] == "succeeded", op.get("error")
            check_allowlist(svc, name, t)

            # Nothing in the workspace holds a capability; iptables in its
            # namespace without NET_ADMIN (even as root) cannot undo the rules.
            status = stackspace_exec(svc, name, "cat", "/proc/self/status").stdout.decode()
            assert "CapBnd:\t0000000000000000" in status, status
            (ws,) = docker_client.containers.list(filters={"label": [
                f"stackspace.dev/workspace={name}", "stackspace.dev/role=workspace"]})
            assert ws.attrs["HostConfig"]["CapAdd"] in (None, [])
            mode = ws.attrs["HostConfig"]["NetworkMode"]
            assert mode.startswith("container:"), mode
            for user in ("1000", "0"):
                flush = docker_client.containers.create(
                    HOLDER_IMAGE, ["iptables", "-F", "OUTPUT"], network_mode=mode, user=user,
                    cap_drop=["ALL"], security_opt=["no-new-privileges:true"])
                try:
                    flush.start()
                    assert flush.wait(timeout=60)["StatusCode"] != 0
                    assert b"ermission denied" in flush.logs(), flush.logs()
                finally:
                    flush.remove(force=True)
            check_allowlist(svc, name, t)

            # A run with nothing changed keeps both containers (no drift).
            holder = docker_client.containers.get(mode.split(":", 1)[1])
            op = operate(svc, "POST", f"/{name}/start")
            assert op["status"] == "succeeded"
            assert running_ids(docker_client, name) == {holder.id, ws.id}
            (changes,) = [e["changes"] for _, e in svc.store.events(op["id"])
                          if e.get("type") == "summary"]
            assert set(changes) == {"same"}, changes

            # Stop/start remakes holder and workspace: the allowlist holds.
            assert operate(svc, "POST", f"/{name}/stop")["status"] == "succeeded"
            assert operate(svc, "POST", f"/{name}/start")["status"] == "succeeded"
            check_allowlist(svc, name, t)

            # A holder stopped by hand: the workspace's namespace loses its
            # interface (nothing gets out), and the next operation starts the
            # holder and restarts the workspace into the holder's new namespace.
            (holder,) = [c for c in labelled(docker_client, "alice", name)[0]
                         if c.labels["stackspace.dev/role"] == "network"]
            holder.stop(timeout=2)
            code, out = http_get(svc, name, t.addresses[t.allowed], t.allowed[1])
            assert code != 0 and "unreachable" in out.lower(), out
            assert operate(svc, "POST", f"/{name}/start")["status"] == "succeeded"
            check_allowlist(svc, name, t)

            if len(runtimes) > 1:
                check_unresolved(svc, docker_client, tag)

            # Port forwarding relays through an exec inside the workspace (loopback).
            commit = start_git_daemon(svc, name, 9418)
            with port_forward(svc, name, "0:9418") as (port,):
                assert commit.encode() in git_advertisement(port)
        finally:
            r = svc.call("DELETE", f"/api/v1/workspaces/{name}?queue=true", svc.alice)
            if r.status_code == 202:
                assert wait_op(svc, svc.alice, r.json()["id"])["status"] == "succeeded"
    assert labelled(docker_client, "alice", name) == ([], [])
