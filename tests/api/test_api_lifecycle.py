"""Workspaces over HTTP on the real engine: create, stop, start, update, delete,
with SSE events and the state a user sees at each step."""

from __future__ import annotations

import secrets
import time

import docker.errors
import pytest

from service import session_cli

pytestmark = pytest.mark.e2e


def wait_op(svc, token, op_id, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op = svc.call("GET", f"/api/v1/operations/{op_id}", token).json()
        if op["status"] not in ("queued", "running"):
            return op
        time.sleep(0.5)
    raise AssertionError(f"operation {op_id} did not end")


def test_workspace_lifecycle_over_http(service, docker_client):
    svc = service
    name = f"http-{secrets.token_hex(3)}"
    r = svc.call("POST", "/api/v1/workspaces", svc.alice,
                 json={"name": name, "env": {"A": "1"}})
    assert r.status_code == 202
    op = wait_op(svc, svc.alice, r.json()["id"])
    assert op["status"] == "succeeded", op
    assert set(op["timings"]) >= {"config", "up", "total"}
    ws = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()
    assert ws["state"] == "running"
    container = docker_client.containers.get(ws["outputs"]["container"])
    assert container.status == "running"
    container.exec_run(["sh", "-c", "echo kept > /workspace/kept.txt"], user="1000")

    events = svc.call("GET", f"/api/v1/operations/{op['id']}/events", svc.alice, stream=True)
    body = events.text
    assert "event: resource" in body and "event: end" in body
    assert "docker:index/volume:Volume" in body

    op = wait_op(svc, svc.alice, svc.call("POST", f"/api/v1/workspaces/{name}/stop",
                                          svc.alice).json()["id"])
    assert op["status"] == "succeeded", op
    assert svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()["state"] == "stopped"
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(ws["outputs"]["container"])

    op = wait_op(svc, svc.alice, svc.call("POST", f"/api/v1/workspaces/{name}/start",
                                          svc.alice).json()["id"])
    assert op["status"] == "succeeded", op
    assert "preview" in op["timings"]
    container = docker_client.containers.get(ws["outputs"]["container"])
    assert container.exec_run(["cat", "/workspace/kept.txt"]).output == b"kept\n"

    op = wait_op(svc, svc.alice, svc.call("PATCH", f"/api/v1/workspaces/{name}", svc.alice,
                                          json={"env": {"A": "2"}}).json()["id"])
    assert op["status"] == "succeeded", op
    container = docker_client.containers.get(ws["outputs"]["container"])
    assert container.exec_run(["sh", "-c", "echo $A; cat /workspace/kept.txt"]).output == \
        b"2\nkept\n"

    shrink = svc.call("PATCH", f"/api/v1/workspaces/{name}", svc.alice,
                      json={"resources": {"storage": "1Mi"}})
    assert shrink.status_code == 422

    op = wait_op(svc, svc.alice, svc.call("DELETE", f"/api/v1/workspaces/{name}",
                                          svc.alice).json()["id"])
    assert op["status"] == "succeeded", op
    assert svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).status_code == 404
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(f"{ws['outputs']['storage']}")


def test_idle_workspace_is_stopped_and_keeps_its_storage(tmp_path, docker_host, docker_client,
                                                         pulumi_settings, docker_provider,
                                                         store_backend):
    from tests.api.conftest import custom_service

    with custom_service(tmp_path, docker_host, pulumi_settings, idle_stop_after=3,
                        database_url=store_backend("idle_stop")) as svc:
        name = f"idle-{secrets.token_hex(3)}"
        op = wait_op(svc, svc.alice, svc.call("POST", "/api/v1/workspaces", svc.alice,
                                              json={"name": name}).json()["id"])
        assert op["status"] == "succeeded", op

        # A detached command is use, though no client is attached: the idle
        # check finds it running (and counts that as activity) more than once,
        # and the workspace stays up; once it ends, the workspace idles out.
        def grant(body: dict) -> dict:
            r = svc.call("POST", f"/api/v1/workspaces/{name}/terminals", svc.alice, json=body)
            assert r.status_code == 201, r.text
            return r.json()

        session = session_cli.command(grant, ["sleep", "600"], detach=True)
        detached = time.time()
        deadline = time.monotonic() + 120
        while ((row := svc.store.workspace("alice", name))["last_activity"] or 0) < detached + 6:
            assert row["desired"] == "running", "stopped while a detached command ran"
            assert time.monotonic() < deadline, "the idle check never ran"
            time.sleep(0.2)
        ws = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()
        assert (ws["state"], ws["desired"]) == ("running", "running"), ws
        assert ws["last_operation"]["kind"] == "create"
        assert session_cli.kill(grant, session) == 0

        deadline = time.monotonic() + 120
        while True:
            ws = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()
            if ws["state"] == "stopped":
                break
            assert time.monotonic() < deadline, f"not stopped: {ws['state']}"
            time.sleep(0.5)
        assert ws["desired"] == "stopped" and ws["last_operation"]["kind"] == "stop"
        assert docker_client.volumes.get(ws["outputs"]["storage"])
        assert docker_client.containers.list(filters={"name": ws["outputs"]["storage"][:-5]}
                                             ) == []
        op = wait_op(svc, svc.alice, svc.call("DELETE", f"/api/v1/workspaces/{name}",
                                              svc.alice).json()["id"])
        assert op["status"] == "succeeded", op


def test_timed_out_operation_is_interrupted_and_a_retry_succeeds(
        tmp_path, docker_host, docker_client, pulumi_settings, docker_provider, store_backend):
    """The per-operation timeout interrupts the engine (graceful SIGINT): the
    operation fails, the stack is left unlocked, and the user's retry works."""
    from tests.api.conftest import custom_service

    with custom_service(tmp_path, docker_host, pulumi_settings, timeout=1.0,
                        database_url=store_backend("timeout")) as svc:
        name = f"slow-{secrets.token_hex(3)}"
        op = wait_op(svc, svc.alice, svc.call("POST", "/api/v1/workspaces", svc.alice,
                                              json={"name": name}).json()["id"])
        assert op["status"] == "failed", op
        events = svc.call("GET", f"/api/v1/operations/{op['id']}/events", svc.alice).text
        assert "operation timed out" in events
        assert "timed out" in op["error"]
        # The workspace says what the engine left: a running workload only if
        # its container runs.
        ws = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()
        running = [c for c in docker_client.containers.list(
            filters={"label": f"stackspace.dev/workspace={name}"}) if c.status == "running"
            and c.labels.get("stackspace.dev/role") == "workspace"]
        assert ws["state"] in ("failed", "stopped", "running"), ws
        assert (ws["state"] == "running") == bool(running), (ws, running)
        svc.runner.timeout = 600  # the retry gets room to finish
        retry = wait_op(svc, svc.alice, svc.call("POST", f"/api/v1/workspaces/{name}/start",
                                                 svc.alice).json()["id"])
        assert retry["status"] == "succeeded", retry["error"]
        ws = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()
        assert docker_client.containers.get(ws["outputs"]["container"]).status == "running"
        done = wait_op(svc, svc.alice, svc.call("DELETE", f"/api/v1/workspaces/{name}",
                                                svc.alice).json()["id"])
        assert done["status"] == "succeeded", done
