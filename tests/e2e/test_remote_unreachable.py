"""A remote Docker host that goes away never loses anything and never sticks: with
the remote test engine stopped mid-lifecycle, create, start and stop fail with a
clear reason and succeed when retried once it is back; delete is kept pending
(the workspace shows `deleting`) and completes when the host answers again."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.api.conftest import custom_service
from tests.conftest import REPO, default_network_works, remote_runtime
from tests.e2e.remote_helpers import labelled, operate, remote_client, stackspace_exec, wait_op

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]
SCRIPT = REPO / "scripts" / "test-docker-host"


@contextmanager
def host_down(local_host: str) -> Iterator[None]:
    """The remote engine stopped (sshd stays, like a host whose daemon died).
    Its restart must leave the local engine alone: both dockerds share this
    machine's network namespace, and a restart once deleted docker0."""
    subprocess.run([str(SCRIPT), "stop-engine"], check=True, capture_output=True, timeout=120)
    try:
        yield
    finally:
        host_up()
        assert default_network_works(local_host) is None


def host_up() -> None:
    subprocess.run([str(SCRIPT), "up"], check=True, capture_output=True, timeout=300)


def assert_unreachable_reason(op: dict, runtime: dict) -> None:
    assert op["status"] == "failed", op
    error = op["error"] or ""
    port = runtime["host"].rsplit(":", 1)[1]
    assert port in error or "connect" in error.lower(), error


@pytest.fixture
def remote_service(tmp_path, docker_host, pulumi_settings, docker_provider, remote_docker_host):
    runtime = remote_runtime(remote_docker_host, "tls", name="remote-flaky")
    with custom_service(tmp_path, docker_host, pulumi_settings, runtimes=[runtime],
                        timeout=600) as svc:
        yield svc, runtime, docker_host


def test_create_start_stop_fail_clearly_and_succeed_when_retried(remote_service):
    svc, runtime, local_host = remote_service
    remote = remote_client(runtime)
    first, second = (f"unreach-{secrets.token_hex(3)}" for _ in range(2))
    try:
        assert operate(svc, "POST", "", json={"name": first})["status"] == "succeeded"
        assert stackspace_exec(svc, first, "sh", "-c", "echo kept > note").returncode == 0

        with host_down(local_host):
            assert_unreachable_reason(operate(svc, "POST", f"/{first}/stop"), runtime)
            assert_unreachable_reason(operate(svc, "POST", "", json={"name": second}), runtime)
        op = operate(svc, "POST", f"/{first}/stop")  # retried once the host is back
        assert op["status"] == "succeeded", op
        assert svc.call("GET", f"/api/v1/workspaces/{first}", svc.alice
                        ).json()["state"] == "stopped"
        op = operate(svc, "POST", f"/{second}/start")  # the failed create, retried
        assert op["status"] == "succeeded", op

        with host_down(local_host):
            assert_unreachable_reason(operate(svc, "POST", f"/{first}/start"), runtime)
        op = operate(svc, "POST", f"/{first}/start")
        assert op["status"] == "succeeded", op
        r = stackspace_exec(svc, first, "cat", "note")  # storage untouched throughout
        assert (r.returncode, r.stdout) == (0, b"kept\n")
    finally:
        for name in (first, second):
            svc.call("DELETE", f"/api/v1/workspaces/{name}?queue=true", svc.alice)
        deadline = time.monotonic() + 600
        while svc.store.workspaces() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not svc.store.workspaces(), "a delete did not finish"
    for name in (first, second):
        assert labelled(remote, "alice", name) == ([], [])
    remote.close()


def test_delete_while_the_host_is_down_stays_pending_until_it_answers(remote_service):
    svc, runtime, local_host = remote_service
    remote = remote_client(runtime)
    name = f"unreach-del-{secrets.token_hex(3)}"
    assert operate(svc, "POST", "", json={"name": name})["status"] == "succeeded"
    try:
        with host_down(local_host):
            r = svc.call("DELETE", f"/api/v1/workspaces/{name}", svc.alice)
            assert r.status_code == 202
            wait_op(svc, svc.alice, r.json()["id"])  # an attempt while the host is down
            ws = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice)
            assert ws.status_code == 200 and ws.json()["state"] == "deleting", ws.text
        # Back up: the pending delete is retried by the service, nobody asks again.
        deadline = time.monotonic() + 300
        while svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).status_code != 404:
            assert time.monotonic() < deadline, "the pending delete never completed"
            time.sleep(1)
        assert labelled(remote, "alice", name) == ([], [])
    finally:
        host_up()
        again = svc.call("DELETE", f"/api/v1/workspaces/{name}?queue=true", svc.alice)
        if again.status_code == 202:  # without the service's retry: clean up by hand
            wait_op(svc, svc.alice, again.json()["id"])
        remote.close()
