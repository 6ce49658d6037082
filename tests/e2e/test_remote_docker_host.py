"""Workspaces on a remote Docker host (scripts/test-docker-host: a second engine
with TLS on 127.0.0.1 and sshd in front of its socket) through the service API,
over TLS and over SSH: the whole lifecycle, checked on the remote engine itself,
and terminals through the proxy."""

from __future__ import annotations

import secrets
import subprocess

import pytest

from tests.api.conftest import custom_service
from tests.conftest import remote_runtime
from tests.e2e.remote_helpers import labelled, operate, remote_client, stackspace_exec

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.mark.parametrize("kind", ["tls", "ssh"])
def test_lifecycle_and_terminals_on_the_remote_host(kind, tmp_path, docker_host, docker_client,
                                                    pulumi_settings, docker_provider,
                                                    remote_docker_host):
    runtime = remote_runtime(remote_docker_host, kind)
    remote = remote_client(runtime)
    name = f"remote-{kind}-{secrets.token_hex(3)}"
    with custom_service(tmp_path, docker_host, pulumi_settings, runtimes=[runtime]) as svc:
        try:
            op = operate(svc, "POST", "", json={"name": name, "env": {"MARK": "v1"}})
            assert op["status"] == "succeeded", op
            ws = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()
            assert ws["state"] == "running" and ws["runtime"] == runtime["name"]
            container = ws["outputs"]["container"]
            assert remote.containers.get(container).status == "running"
            containers, volumes = labelled(remote, "alice", name)
            assert len(volumes) == 1 and container in [c.name for c in containers]
            assert labelled(docker_client, "alice", name) == ([], [])  # nothing local

            # A terminal on the remote host: stdin, stdout, stderr and the exit code.
            r = stackspace_exec(svc, name, "sh", "-c",
                                'cat > note; echo "$MARK $(cat note)"; echo err >&2; exit 3',
                                stdin=b"kept\n")
            assert (r.returncode, r.stdout, r.stderr) == (3, b"v1 kept\n", b"err\n")

            op = operate(svc, "POST", f"/{name}/stop")
            assert op["status"] == "succeeded", op
            containers, volumes = labelled(remote, "alice", name)
            assert container not in [c.name for c in containers] and len(volumes) == 1

            op = operate(svc, "POST", f"/{name}/start")
            assert op["status"] == "succeeded", op
            r = stackspace_exec(svc, name, "cat", "note")
            assert (r.returncode, r.stdout) == (0, b"kept\n")

            op = operate(svc, "PATCH", f"/{name}", json={"env": {"MARK": "v2"}})
            assert op["status"] == "succeeded", op
            r = stackspace_exec(svc, name, "sh", "-c", 'echo "$MARK $(cat note)"')
            assert (r.returncode, r.stdout) == (0, b"v2 kept\n")
        finally:
            op = operate(svc, "DELETE", f"/{name}?queue=true")
        assert op["status"] == "succeeded", op
        assert labelled(remote, "alice", name) == ([], [])
    remote.close()


def test_unknown_ssh_host_key_is_refused_naming_the_runtime(tmp_path, docker_host,
                                                            pulumi_settings, docker_provider,
                                                            remote_docker_host):
    keys = tmp_path / "keys"
    keys.mkdir()
    known_hosts = keys / "known_hosts"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "other")],
                   check=True)
    other = (keys / "other.pub").read_text().split()[:2]
    host = remote_docker_host["SSH_HOST"].split("@", 1)[1]  # 127.0.0.1:PORT
    addr, port = host.rsplit(":", 1)
    known_hosts.write_text(f"[{addr}]:{port} {' '.join(other)}\n")  # someone else's key
    runtime = {**remote_runtime(remote_docker_host, "ssh", name="impostor"),
               "ssh_known_hosts_file": str(known_hosts)}
    remote = remote_client(remote_runtime(remote_docker_host, "ssh"))
    name = f"remote-hostkey-{secrets.token_hex(3)}"
    with custom_service(tmp_path, docker_host, pulumi_settings, runtimes=[runtime]) as svc:
        op = operate(svc, "POST", "", json={"name": name})
        assert op["status"] == "failed"
        assert "runtime 'impostor'" in op["error"] and "host key" in op["error"], op["error"]
    assert labelled(remote, "alice", name) == ([], [])
    remote.close()


