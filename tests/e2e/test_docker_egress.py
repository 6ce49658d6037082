"""An outbound allowlist on Docker (a runtime's `egress_allow`, issue 17 item 3),
through the service on the real engine: two web servers this test starts share
a network with the workspace, and both answer a plain container there; the
workspace, allowed `<first server's name>:8080` only, reaches the first (its
name resolved by the network holder), and is refused at the second server and
at the first one's other port. The workspace user holds no capability, and
iptables run in its namespace without NET_ADMIN cannot flush the rules. The
allowlist holds after stop/start; exec and port forwarding keep working."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.conftest import custom_service
from tests.e2e.portforward_helpers import git_advertisement, port_forward, start_git_daemon
from tests.e2e.remote_helpers import labelled, operate, stackspace_exec, wait_op

pytestmark = pytest.mark.e2e

BUSYBOX = "stackspace/busybox:test"
HOLDER_IMAGE = "stackspace/egress:1"
# Serves its marker on 8080 and 8081 (two ports: an allowed one and one that is not).
SERVE = ("mkdir -p /tmp/www && echo \"$1\" > /tmp/www/index.html && "
         "httpd -p 8081 -h /tmp/www && exec httpd -f -p 8080 -h /tmp/www")
# One HTTP GET with bash's /dev/tcp (name resolution by the workspace's own libc).
GET = ('exec 3<>"/dev/tcp/$1/$2" || exit 7; printf "GET / HTTP/1.0\\r\\n\\r\\n" >&3; '
       "cat <&3")


@pytest.fixture
def targets(docker_client) -> Iterator[dict[str, Any]]:
    """A bridge network (containers reach each other on it) with two servers."""
    from tests.e2e.busybox_image import busybox_image

    busybox_image(docker_client)
    tag = secrets.token_hex(3)
    net = docker_client.networks.create(f"stackspace-egress-test-{tag}", driver="bridge",
                                        labels={"stackspace.dev/test": "egress"})
    made = {}
    try:
        for role in ("allowed", "denied"):
            made[role] = docker_client.containers.run(
                BUSYBOX, ["sh", "-c", SERVE, "sh", f"{role}-{tag}"], name=f"egress-{role}-{tag}",
                network=net.name, detach=True, labels={"stackspace.dev/test": "egress"})
        yield {"network": net.name, "tag": tag, **made}
    finally:
        for c in made.values():
            c.remove(force=True)
        net.remove()


def running_ids(docker_client: Any, name: str) -> set[str]:
    """The workspace's containers but init: the network holder and the workspace."""
    return {c.id for c in labelled(docker_client, "alice", name)[0]
            if c.labels["stackspace.dev/role"] != "init"}


def http_get(svc: Any, name: str, host: str, port: int) -> tuple[int, str]:
    r = stackspace_exec(svc, name, "timeout", "10", "bash", "-c", GET, "get", host, str(port))
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def check_allowlist(svc: Any, name: str, tag: str) -> None:
    code, out = http_get(svc, name, f"egress-allowed-{tag}", 8080)
    assert code == 0 and f"allowed-{tag}" in out, out
    for host, port in ((f"egress-denied-{tag}", 8080), (f"egress-allowed-{tag}", 8081)):
        code, out = http_get(svc, name, host, port)
        assert code != 0 and "refused" in out.lower(), (host, port, out)


def test_outbound_allowlist(tmp_path, docker_host, docker_client, pulumi_settings,
                            docker_provider, targets):
    tag, network = targets["tag"], targets["network"]
    # The control: on that network both servers answer a container without rules.
    for role in ("allowed", "denied"):
        out = docker_client.containers.run(
            BUSYBOX, ["sh", "-c", f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 '
                      f'"$(nslookup egress-{role}-{tag} 127.0.0.11 | '
                      "sed -n 's/^Address: \\([0-9.]*\\)$/\\1/p' | tail -1)\" 8080"],
            network=network, remove=True)
        assert f"{role}-{tag}".encode() in out, out
    runtimes = [{"name": "local", "type": "docker", "host": docker_host,
                 "network_mode": network, "egress_allow": [f"egress-allowed-{tag}:8080"]}]
    name = f"egress-{tag}"
    with custom_service(tmp_path, docker_host, pulumi_settings, runtimes=runtimes) as svc:
        try:
            op = operate(svc, "POST", "", json={"name": name})
            assert op["status"] == "succeeded", op.get("error")
            check_allowlist(svc, name, tag)

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
            check_allowlist(svc, name, tag)

            # A run with nothing changed keeps both containers (no drift).
            holder = docker_client.containers.get(mode.split(":", 1)[1])
            assert operate(svc, "POST", f"/{name}/start")["status"] == "succeeded"
            assert running_ids(docker_client, name) == {holder.id, ws.id}

            # Stop/start remakes holder and workspace: the allowlist holds.
            assert operate(svc, "POST", f"/{name}/stop")["status"] == "succeeded"
            assert operate(svc, "POST", f"/{name}/start")["status"] == "succeeded"
            check_allowlist(svc, name, tag)

            # Port forwarding relays through an exec inside the workspace (loopback).
            commit = start_git_daemon(svc, name, 9418)
            with port_forward(svc, name, "0:9418") as (port,):
                assert commit.encode() in git_advertisement(port)
        finally:
            r = svc.call("DELETE", f"/api/v1/workspaces/{name}?queue=true", svc.alice)
            if r.status_code == 202:
                assert wait_op(svc, svc.alice, r.json()["id"])["status"] == "succeeded"
    assert labelled(docker_client, "alice", name) == ([], [])
