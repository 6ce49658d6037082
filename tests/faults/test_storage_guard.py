"""The service's storage guard (SPEC §3) refuses a non-delete plan that would
delete storage and changes nothing: not the store, not the stack config, not
the engine. Proven where only stackspace's guard can refuse: the storage is
unprotected in the stack's state (an operator's `pulumi state unprotect`), so
Pulumi's own `protect` check lets the plan through."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from tests.faults.checks import assert_truthful, delete_clean
from tests.faults.conftest import live_service, unique
from tests.faults.harness import LiveService

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]
VOLUME = "docker:index/volume:Volume"
STEADY = ("name", "state", "desired", "spec", "outputs", "stack", "runtime")


def storage_urn(svc: LiveService, stack: str) -> str:
    state = json.loads(svc.pulumi("stack", "export", "--stack", stack).stdout)
    (urn,) = [r["urn"] for r in state["deployment"]["resources"] if r["type"] == VOLUME]
    return urn


def expose_storage(svc: LiveService, stack: str) -> tuple[str, str]:
    """Operator edits that make the program's next plan delete the volume:
    unprotect it and rename it in state (the program declares `storage`, the
    state holds only `storage-was`, so the plan deletes `storage-was`)."""
    urn = storage_urn(svc, stack)
    svc.pulumi("state", "unprotect", "--stack", stack, urn, "--yes")
    svc.pulumi("state", "rename", "--stack", stack, urn, "storage-was", "--yes")
    return urn, urn.rsplit("::", 1)[0] + "::storage-was"


def restore_storage(svc: LiveService, stack: str, urn: str, moved: str) -> None:
    svc.pulumi("state", "rename", "--stack", stack, moved, "storage", "--yes")
    svc.pulumi("state", "protect", "--stack", stack, urn, "--yes")


def stack_config(svc: LiveService, stack: str) -> dict[str, Any]:
    return json.loads(svc.pulumi("config", "--stack", stack, "--json").stdout)


def steady(ws: dict[str, Any]) -> dict[str, Any]:
    return {k: ws[k] for k in STEADY}


def assert_refused(op: dict[str, Any]) -> None:
    assert op["status"] == "failed", op
    assert op["error_type"] == "storage-at-risk", op


def test_guard_refuses_stop_and_update_that_would_delete_storage(docker_faults, docker_view,
                                                                 docker_client):
    svc, engine = docker_faults, docker_view
    svc.ensure_running()
    name = unique("fault-guard")
    assert svc.run_op("POST", "/workspaces", json={"name": name})["status"] == "succeeded"
    ws = assert_truthful(svc, engine, name)
    stack, container = ws["stack"], ws["outputs"]["container"]
    volumes = engine.storage(name)
    urn, moved = expose_storage(svc, stack)
    config = stack_config(svc, stack)
    try:
        for method, path, body in (("POST", f"/workspaces/{name}/stop", None),
                                   ("PATCH", f"/workspaces/{name}",
                                    {"env": {"CHANGED": secrets.token_hex(3)}})):
            op = svc.run_op(method, path, json=body)
            assert_refused(op)
            after = svc.workspace(name).json()
            assert steady(after) == steady(ws), f"{path}: the store changed"
            assert "refused" in (after["last_error"] or ""), after
            assert stack_config(svc, stack) == config, f"{path}: the stack config changed"
            assert engine.storage(name) == volumes
            assert docker_client.containers.get(container).status == "running"
    finally:
        restore_storage(svc, stack, urn, moved)
    delete_clean(svc, engine, name, stack)


def test_guard_refuses_a_create_that_would_delete_storage(tmp_path, docker_runtime, pulumi_bin,
                                                          pulumi_home, docker_view,
                                                          docker_client):
    """A second installation on the same backend (another store; or a store
    restored from an old backup) creates a workspace whose stack already
    exists: it has no settings for that stack, so the create is refused as
    another installation's before any plan, and deleting its failed workspace
    leaves the stack and the engine alone."""
    engine = docker_view
    shared = {"backend_url": f"file://{tmp_path / 'shared-state'}",
              "passphrase": "faults-" + secrets.token_hex(8)}
    (tmp_path / "shared-state").mkdir()
    name = unique("fault-gcreate")
    token = secrets.token_hex(16)  # the same admin, so the same owner and stack
    with live_service(tmp_path / "a", docker_runtime, pulumi_bin, pulumi_home, engine,
                      settings=dict(shared), token=token) as first:
        assert first.run_op("POST", "/workspaces", json={"name": name})["status"] == \
            "succeeded"
        ws = assert_truthful(first, engine, name)
        stack, container = ws["stack"], ws["outputs"]["container"]
        volumes = engine.storage(name)
        urn, moved = expose_storage(first, stack)
        config = stack_config(first, stack)
        try:
            second = LiveService(tmp_path / "b", docker_runtime, settings=dict(shared),
                                 token=token, pulumi_bin=pulumi_bin, pulumi_home=pulumi_home)
            second.start()
            try:
                op = second.run_op("POST", "/workspaces", json={
                    "name": name, "env": {"FROM": "second"}})
                assert (op["status"], op["error_type"]) == ("failed", "stack-taken"), op
                assert second.workspace(name).json()["state"] != "running"
                gone = second.run_op("DELETE", f"/workspaces/{name}")
                assert gone["status"] == "succeeded", gone
                assert second.workspace(name).status_code == 404
            finally:
                second.stop()
            assert stack_config(first, stack) == config, "the refused create wrote config"
            assert engine.storage(name) == volumes
            assert docker_client.containers.get(container).status == "running"
        finally:
            restore_storage(first, stack, urn, moved)
        delete_clean(first, engine, name, stack)
