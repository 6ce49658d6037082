"""The kill scenarios, shared by tests/faults/ and bench/kill_matrix.py: one
trial kills the whole service at one point of one operation, restarts it on
the same data dir and checks what the user sees against the engine
(tests/faults/checks.py). Each trial is recorded for the kill matrix."""

from __future__ import annotations

import secrets
from typing import Any

from tests.faults.checks import after_restart, assert_truthful, converge, delete_clean
from tests.faults.engine import EngineView
from tests.faults.harness import (
    EngineCheck,
    KillPoint,
    LiveService,
    kill_during,
    resource_event,
    trial,
)

KEEP = ("keep.txt", "user data")

def has(role: str) -> EngineCheck:
    """The runtime holds an object of `role` for the workspace."""
    return lambda engine, name: role in engine.roles(name)


def workload_stopping(engine: EngineView, name: str) -> bool:
    """The workload is being removed or is gone (Pulumi may not know yet)."""
    return not any(w.running for w in engine.workloads(name))


def workload_gone_storage_kept(engine: EngineView, name: str) -> bool:
    return not engine.workloads(name) and bool(engine.storage(name))


CREATE_POINTS = [
    # Before the create's stack config can have been written (issue 9: the
    # workspace could then neither start nor be deleted).
    KillPoint("request accepted", at_request=True),
    KillPoint("run started", delay=0),
    KillPoint("storage created", engine=has("storage")),
    KillPoint("init step", engine=has("init")),
    # The runtime made the workload; Pulumi may not have recorded it yet.
    KillPoint("workload step", engine=has("workspace")),
]

CHAINS: dict[str, list[tuple[str, KillPoint]]] = {
    "at-engine-steps": [
        ("stop", KillPoint("workload removal", engine=workload_stopping)),
        ("start", KillPoint("workload creation", engine=has("workspace"))),
        # The old workload is gone and its replacement not yet made.
        ("update", KillPoint("between replace steps", engine=workload_stopping)),
        ("delete", KillPoint("workload gone, storage kept", engine=workload_gone_storage_kept)),
    ],
    "at-delays": [
        ("stop", KillPoint("2s after start", delay=2)),
        ("start", KillPoint("2s after start", delay=2)),
        ("update", KillPoint("3s after start", delay=3)),
        ("delete", KillPoint("storage removal", event=resource_event(
            "pre", "storage", ("delete",)))),
    ],
}


def create_trial(svc: LiveService, engine: EngineView, name: str, point: KillPoint,
                 spec: dict[str, Any] | None = None, then_delete: bool = True) -> str:
    """Kill during a create; recover; start/stop/start converge; delete is clean.
    Returns the workspace's stack."""
    svc.ensure_running()
    with trial(engine.runtime, "create", point.label) as t:
        r = svc.call("POST", "/workspaces", json={"name": name, **(spec or {})})
        assert r.status_code == 202, r.text
        op = r.json()
        stack = svc.workspace(name).json()["stack"]
        t.reached = kill_during(svc, op, point, engine, name)
        at_kill = engine.storage(name)
        svc.start()
        after_restart(svc, engine, name, op["id"], at_kill)
        converge(svc, engine, name, "running")
        if then_delete:
            converge(svc, engine, name, "stopped")
            converge(svc, engine, name, "running")
            delete_clean(svc, engine, name, stack, t)
    return stack


def _request(svc: LiveService, kind: str, name: str, marker: str) -> dict[str, Any]:
    method, path, body = {
        "stop": ("POST", f"/workspaces/{name}/stop", None),
        "start": ("POST", f"/workspaces/{name}/start", None),
        "update": ("PATCH", f"/workspaces/{name}", {"env": {"ROUND": marker}}),
        "delete": ("DELETE", f"/workspaces/{name}", None),
    }[kind]
    r = svc.call(method, path, json=body)
    assert r.status_code == 202, r.text
    return r.json()


def op_trial(svc: LiveService, engine: EngineView, name: str, stack: str, kind: str,
             point: KillPoint, check_env: bool = True) -> None:
    """Kill during stop/start/update/delete of a workspace; recover; the
    user's retry converges and the file they wrote on the storage survives."""
    svc.ensure_running()
    with trial(engine.runtime, kind, point.label) as t:
        marker = secrets.token_hex(4)
        op = _request(svc, kind, name, marker)
        t.reached = kill_during(svc, op, point, engine, name)
        at_kill = engine.storage(name)
        svc.start()
        ws = after_restart(svc, engine, name, op["id"], at_kill, deleting=kind == "delete")
        if kind == "delete":
            delete_clean(svc, engine, name, stack, t)
            return
        if kind == "update":  # the user retries the update: it converges
            again = svc.run_op("PATCH", f"/workspaces/{name}", json={"env": {"ROUND": marker}})
            assert again["status"] == "succeeded", again
            ws = assert_truthful(svc, engine, name)
            assert ws["state"] == "running" and ws["spec"]["env"] == {"ROUND": marker}, ws
            if check_env:
                assert workload_env(engine, name).get("ROUND") == marker
        else:
            ws = converge(svc, engine, name, "stopped" if kind == "stop" else "running")
        if ws["state"] == "running":
            running = next(w.name for w in engine.workloads(name) if w.running)
            assert engine.read_file(running, KEEP[0]) == KEEP[1], "user data lost"


def workload_env(engine: EngineView, name: str) -> dict[str, str]:
    (load,) = [w for w in engine.workloads(name) if w.running]
    env = engine.client.containers.get(load.name).attrs["Config"]["Env"] or []  # type: ignore[attr-defined]
    return dict(e.split("=", 1) for e in env)


def chain_trials(svc: LiveService, engine: EngineView, name: str,
                 steps: list[tuple[str, KillPoint]]) -> None:
    """One workspace through the given operations, each killed once."""
    svc.ensure_running()
    created = svc.run_op("POST", "/workspaces", json={"name": name})
    assert created["status"] == "succeeded", created
    ws = assert_truthful(svc, engine, name)
    running = next(w.name for w in engine.workloads(name) if w.running)
    engine.write_file(running, *KEEP)
    for kind, point in steps:
        op_trial(svc, engine, name, ws["stack"], kind, point,
                 check_env=engine.runtime == "docker")
