"""Docker workspaces are isolated from each other on the network (SPEC §8), as a
NetworkPolicy does on Kubernetes: through the service on the real engine, a
server listening in alice's workspace cannot be reached from bob's workspace on
the same host, nor from another of alice's; `internal` is Docker's internal
network; the old shared bridge, still an explicit choice, shows the test can fail."""

from __future__ import annotations

import secrets

import pytest

from tests.api.conftest import custom_service
from tests.e2e.busybox_image import busybox_image
from tests.e2e.remote_helpers import labelled, wait_op

pytestmark = pytest.mark.e2e


def create(svc, token: str, name: str, image: str, runtime: str) -> None:
    r = svc.call("POST", "/api/v1/workspaces", token,
                 json={"name": name, "image": image, "runtime": runtime})
    assert r.status_code == 202, r.text
    op = wait_op(svc, token, r.json()["id"])
    assert op["status"] == "succeeded", op.get("error")


def container(docker_client, owner: str, name: str):
    (found,) = docker_client.containers.list(filters={"label": [
        f"stackspace.dev/workspace={name}", f"stackspace.dev/owner={owner}",
        "stackspace.dev/role=workspace"]})
    return found


def address(c) -> str:
    (net,) = c.attrs["NetworkSettings"]["Networks"].values()
    return net["IPAddress"]


def connects(client_container, ip: str) -> bool:
    code, _ = client_container.exec_run(["nc", "-w", "3", ip, "8080"], user="1000")
    return code == 0


def test_workspaces_cannot_reach_each_other_and_internal_is_sealed(
        tmp_path, docker_host, docker_client, pulumi_settings, docker_provider):
    image = busybox_image(docker_client)
    runtimes = [{"name": "local", "type": "docker", "host": docker_host},  # the default
                {"name": "sealed", "type": "docker", "host": docker_host,
                 "network_mode": "internal"},
                {"name": "shared", "type": "docker", "host": docker_host,
                 "network_mode": "bridge"}]
    tag = secrets.token_hex(2)
    made = [("alice", f"net-a-{tag}"), ("bob", f"net-b-{tag}"), ("alice", f"net-c-{tag}"),
            ("alice", f"net-s1-{tag}"), ("bob", f"net-s2-{tag}"), ("bob", f"net-i-{tag}")]
    with custom_service(tmp_path, docker_host, pulumi_settings, runtimes=runtimes) as svc:
        tokens = {"alice": svc.alice, "bob": svc.bob}
        try:
            for (owner, name), runtime in zip(made, ["local"] * 3 + ["shared"] * 2 + ["sealed"],
                                              strict=True):
                create(svc, tokens[owner], name, image, runtime)
            a, b, c, s1, s2, i = (container(docker_client, o, n) for o, n in made)
            for server in (a, s1):
                server.exec_run(["nc", "-ll", "-p", "8080", "-e", "true"], user="1000",
                                detach=True)
            assert a.attrs["HostConfig"]["NetworkMode"] == "stackspace-isolated"
            assert not connects(b, address(a)), "bob's workspace reached alice's server"
            assert not connects(c, address(a)), "a workspace reached its neighbour's server"
            # The control: on the shared default bridge the same connection works.
            assert connects(s2, address(s1))
            # `internal`: Docker's internal network (no forwarding off the host;
            # reaching a real outside would need traffic this suite never sends).
            assert i.attrs["HostConfig"]["NetworkMode"] == "stackspace-internal"
            sealed = docker_client.networks.get("stackspace-internal").attrs
            assert sealed["Internal"] is True
            assert sealed["Options"]["com.docker.network.bridge.enable_icc"] == "false"
        finally:
            for owner, name in made:
                r = svc.call("DELETE", f"/api/v1/workspaces/{name}?queue=true", tokens[owner])
                if r.status_code == 202:
                    assert wait_op(svc, tokens[owner], r.json()["id"])["status"] == "succeeded"
    for owner, name in made:
        assert labelled(docker_client, owner, name) == ([], [])
