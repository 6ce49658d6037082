"""`stackspace port-forward` through the service and the exec proxy on the real
engine: a real server inside the workspace (git daemon on the default image,
BusyBox httpd on a BusyBox-only image) reached by many concurrent connections,
on local Docker, the remote Docker host (SSH) and Kubernetes; no port is ever
published on the Docker host, and either side's close reaches the other."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.api.conftest import custom_service
from tests.conftest import remote_runtime
from tests.e2e.busybox_image import busybox_image
from tests.e2e.portforward_helpers import (
    git_advertisement,
    many,
    port_forward,
    start_git_daemon,
    wait_refused,
)
from tests.e2e.remote_helpers import operate, remote_client, stackspace_exec

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
GIT_PORT = 9418


def relays(svc, name: str) -> list[str]:
    """Relay processes in the workspace (the perl one-liner's argv names IO::Select)."""
    r = stackspace_exec(svc, name, "ps", "-eo", "args")
    assert r.returncode == 0, r.stderr
    return [ln for ln in r.stdout.decode().splitlines() if "IO::Select" in ln]


def until(check, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while not (result := check()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return result


def assert_concurrent_git(port: int, commit: str, n: int) -> None:
    answers = many(lambda _: git_advertisement(port), n)
    # every answer whole: the advertised ref, and the flush packet that ends it
    assert all(a.startswith(b"0") and f"{commit} refs/heads/main".encode() in a
               and a.endswith(b"0000") for a in answers), answers[:2]
    assert len(set(answers)) == 1


def assert_no_published_ports(container) -> None:
    container.reload()
    host_config, network = container.attrs["HostConfig"], container.attrs["NetworkSettings"]
    assert not host_config.get("PortBindings") and not host_config.get("PublishAllPorts")
    assert not any((network.get("Ports") or {}).values()), network.get("Ports")


def test_port_forward_on_local_docker(tmp_path, docker_host, docker_client, pulumi_settings,
                                      docker_provider):
    name = f"pf-{secrets.token_hex(3)}"
    with custom_service(tmp_path, docker_host, pulumi_settings) as svc:
        op = operate(svc, "POST", "", json={"name": name})
        try:
            assert op["status"] == "succeeded", op.get("error")
            # A port-forward ticket names a valid port and nothing else.
            for body, field in (({"port": 0}, "port"), ({"port": "80"}, "port"),
                                ({"port": 80, "command": ["sh"]}, "command")):
                r = svc.call("POST", f"/api/v1/workspaces/{name}/terminals", svc.alice,
                             json=body)
                assert r.status_code == 422, r.text
                assert r.headers["Content-Type"] == "application/problem+json"
                assert [e["field"] for e in r.json()["errors"]] == [field]
            bad = subprocess.run([sys.executable, "-m", "service.cli", "port-forward", name,
                                  "80:70000"], capture_output=True, text=True, check=False,
                                 env={**os.environ, "STACKSPACE_TOKEN": svc.alice})
            assert bad.returncode == 2 and "PORTS" in bad.stderr and "70000" in bad.stderr

            commit = start_git_daemon(svc, name, GIT_PORT)
            errors: list[str] = []
            with port_forward(svc, name, f":{GIT_PORT}", ":9", stderr=errors) as (
                    port, closed_port):
                # 50 connections at once, every answer whole and right
                assert_concurrent_git(port, commit, 50)
                # a real git client
                ls = subprocess.run(["git", "ls-remote", f"git://127.0.0.1:{port}/srv.git"],
                                    capture_output=True, text=True, timeout=60, check=False)
                assert ls.stdout == f"{commit}\trefs/heads/main\n", ls.stderr
                # nothing listens on 9 in the workspace: the local connection just ends
                with socket.create_connection(("127.0.0.1", closed_port), timeout=30) as s:
                    assert s.recv(10) == b""
                # A client that goes away mid-connection: the relay in the workspace ends.
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                s.sendall(b"00")
                assert until(lambda: relays(svc, name)), "no relay while connected"
                s.close()
                assert until(lambda: not relays(svc, name)), relays(svc, name)
            assert wait_refused(port)
            # the refused connection is named, once
            assert errors[0].count("error: port 9: ") == 1, errors
            assert "Connection refused" in errors[0], errors
            container = docker_client.containers.get(svc.call(
                "GET", f"/api/v1/workspaces/{name}", svc.alice).json()["outputs"]["container"])
            assert_no_published_ports(container)
        finally:
            assert operate(svc, "DELETE", f"/{name}")["status"] == "succeeded"


def test_port_forward_to_busybox_httpd(tmp_path, docker_host, docker_client, pulumi_settings,
                                       docker_provider):
    """An image with BusyBox only: the relay is its nc, the server its httpd."""
    name = f"pfb-{secrets.token_hex(3)}"
    body = os.urandom(48 * 1024).hex().encode()  # 96 KiB, several frames each way
    with custom_service(tmp_path, docker_host, pulumi_settings) as svc:
        op = operate(svc, "POST", "", json={"name": name, "image": busybox_image(docker_client)})
        try:
            assert op["status"] == "succeeded", op.get("error")
            r = stackspace_exec(svc, name, "sh", "-c",
                                "mkdir -p www && cat > www/data.txt && "
                                "httpd -p 127.0.0.1:8080 -h /workspace/www", stdin=body)
            assert r.returncode == 0, r.stderr
            with port_forward(svc, name, "8080") as (port,):
                assert port == 8080  # REMOTE alone: the same local port

                def get(i: int) -> bytes:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/data.txt?{i}",
                                                timeout=60) as resp:
                        return resp.read()

                assert many(get, 50) == [body] * 50
        finally:
            assert operate(svc, "DELETE", f"/{name}")["status"] == "succeeded"


def test_port_forward_on_the_remote_docker_host(tmp_path, docker_host, pulumi_settings,
                                                docker_provider, remote_docker_host):
    runtime = remote_runtime(remote_docker_host, "ssh")
    name = f"pfr-{secrets.token_hex(3)}"
    with custom_service(tmp_path, docker_host, pulumi_settings, runtimes=[runtime]) as svc:
        op = operate(svc, "POST", "", json={"name": name})
        try:
            assert op["status"] == "succeeded", op.get("error")
            commit = start_git_daemon(svc, name, GIT_PORT)
            with port_forward(svc, name, f":{GIT_PORT}") as (port,):
                # more at once than sshd's MaxSessions (10) channels
                assert_concurrent_git(port, commit, 20)
            remote = remote_client(runtime)
            container = svc.call("GET", f"/api/v1/workspaces/{name}",
                                 svc.alice).json()["outputs"]["container"]
            assert_no_published_ports(remote.containers.get(container))
            remote.close()
        finally:
            assert operate(svc, "DELETE", f"/{name}?queue=true")["status"] == "succeeded"


@pytest.mark.usefixtures("kubernetes_provider")
def test_port_forward_on_kubernetes(tmp_path, kube_cluster, docker_host, pulumi_settings):
    from kubernetes import client, config

    from tests.e2e.stack_helpers import ensure_namespace

    namespace = "stackspace-pf-e2e"
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kube_cluster)))
    ensure_namespace(core, namespace)
    runtime = {"name": "cluster", "type": "kubernetes", "kubeconfig": str(kube_cluster),
               "namespace": namespace}
    name = f"pfk-{secrets.token_hex(3)}"
    with custom_service(tmp_path, docker_host, pulumi_settings, runtimes=[runtime]) as svc:
        op = operate(svc, "POST", "", json={
            "name": name, "resources": {"cpu": "250m", "memory": "128Mi", "storage": "32Mi"}})
        try:
            assert op["status"] == "succeeded", op.get("error")
            commit = start_git_daemon(svc, name, GIT_PORT)
            errors: list[str] = []
            with port_forward(svc, name, f":{GIT_PORT}", ":9", stderr=errors) as (
                    port, closed_port):
                assert_concurrent_git(port, commit, 10)
                # nothing listens on 9 in the pod: the local connection just ends
                with socket.create_connection(("127.0.0.1", closed_port), timeout=60) as s:
                    assert s.recv(10) == b""
            assert errors[0].count("error: port 9: ") == 1, errors
        finally:
            assert operate(svc, "DELETE", f"/{name}")["status"] == "succeeded"
