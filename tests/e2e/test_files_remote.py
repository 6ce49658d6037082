"""The file API on a workspace on the remote test Docker host over TLS and SSH, through
the service and the exec proxy: a binary round trip with mode and mtime, a
listing, tar both ways and the escapes (local Docker: test_files.py)."""

from __future__ import annotations

import secrets

import pytest

from tests.api.conftest import custom_service
from tests.conftest import remote_runtime
from tests.e2e.file_steps import escapes_refused, round_trip, tar_round_trip
from tests.e2e.remote_helpers import labelled, operate, remote_client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.mark.parametrize("kind", ["tls", "ssh"])
def test_file_api_on_the_remote_host(kind, tmp_path, docker_host, docker_client,
                                     pulumi_settings, docker_provider, remote_docker_host):
    runtime = remote_runtime(remote_docker_host, kind)
    name = f"files-{kind}-{secrets.token_hex(3)}"
    with custom_service(tmp_path, docker_host, pulumi_settings, runtimes=[runtime]) as svc:
        try:
            op = operate(svc, "POST", "", json={"name": name})
            assert op["status"] == "succeeded", op
            round_trip(svc, name, 2 * 1024 * 1024)
            tar_round_trip(svc, name)
            escapes_refused(svc, name)
            assert labelled(docker_client, "alice", name) == ([], [])  # nothing local
        finally:
            assert operate(svc, "DELETE", f"/{name}?queue=true")["status"] == "succeeded"
    assert labelled(remote_client(runtime), "alice", name) == ([], [])
