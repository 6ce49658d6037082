"""kill -9 of the whole service (service, proxy, workers, Pulumi CLI, language
host, providers) at chosen points of create, stop, start, update and delete on
Docker; after a restart on the same data dir each workspace settles truthfully,
retries converge, storage survives, and delete leaves 0 labelled objects."""

from __future__ import annotations

import secrets

import pytest

from tests.faults.checks import after_restart, assert_truthful, converge, delete_clean
from tests.faults.conftest import unique
from tests.faults.harness import KillPoint, LiveService, kill_during, resource_event, trial

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]
KEEP = ("keep.txt", "user data")

CREATE_POINTS = [
    # Before the create's stack config can have been written (issue 9: the
    # workspace could then neither start nor be deleted).
    KillPoint("request accepted", at_request=True),
    KillPoint("run started", delay=0),
    KillPoint("volume created", event=resource_event("done", "storage")),
    KillPoint("init container step", event=resource_event("pre", "init")),
    # Docker made the container, Pulumi may not have recorded it yet.
    KillPoint("workspace container step", event=resource_event("pre", "workspace")),
]


@pytest.mark.parametrize("point", CREATE_POINTS, ids=lambda p: p.label.replace(" ", "-"))
def test_kill_during_create_recovers(point, docker_faults: LiveService, docker_view):
    svc, engine = docker_faults, docker_view
    svc.ensure_running()
    name = unique("fault-create")
    with trial("docker", "create", point.label) as t:
        r = svc.call("POST", "/workspaces", json={"name": name})
        assert r.status_code == 202, r.text
        op = r.json()
        stack = svc.workspace(name).json()["stack"]
        t.reached = kill_during(svc, op, point)
        at_kill = engine.storage(name)
        svc.start()
        after_restart(svc, engine, name, op["id"], at_kill)
        converge(svc, engine, name, "running")
        converge(svc, engine, name, "stopped")
        converge(svc, engine, name, "running")
        delete_clean(svc, engine, name, stack, t)


def _op(svc: LiveService, kind: str, name: str, marker: str) -> dict:
    method, path, body = {
        "stop": ("POST", f"/workspaces/{name}/stop", None),
        "start": ("POST", f"/workspaces/{name}/start", None),
        "update": ("PATCH", f"/workspaces/{name}", {"env": {"ROUND": marker}}),
        "delete": ("DELETE", f"/workspaces/{name}", None),
    }[kind]
    r = svc.call(method, path, json=body)
    assert r.status_code == 202, r.text
    return r.json()


def _container_env(engine, name: str) -> dict[str, str]:  # noqa: ANN001
    (load,) = [w for w in engine.workloads(name) if w.running]
    env = engine.client.containers.get(load.name).attrs["Config"]["Env"] or []
    return dict(e.split("=", 1) for e in env)


def _replaced_gap(event: dict) -> bool:
    """Update: the old container is gone and its replacement not yet made."""
    return (resource_event("done", "workspace", ("delete-replaced",))(event)
            or resource_event("pre", "workspace", ("create-replacement",))(event))


CHAINS = {
    "at-events": [
        ("stop", KillPoint("container removal", event=resource_event(
            "pre", "workspace", ("delete",)))),
        ("start", KillPoint("container creation", event=resource_event(
            "pre", "workspace", ("create",)))),
        ("update", KillPoint("between replace steps", event=_replaced_gap)),
        ("delete", KillPoint("storage removal", event=resource_event(
            "pre", "storage", ("delete",)))),
    ],
    "at-delays": [
        ("stop", KillPoint("2s after start", delay=2)),
        ("start", KillPoint("2s after start", delay=2)),
        ("update", KillPoint("3s after start", delay=3)),
        ("delete", KillPoint("workload removal", event=resource_event(
            "pre", "workspace", ("delete",)))),
    ],
}


@pytest.mark.parametrize("chain", list(CHAINS))
def test_kill_during_stop_start_update_delete_recovers(chain, docker_faults: LiveService,
                                                       docker_view):
    """One workspace through stop, start, update and delete, each killed once;
    the user's file on the workspace storage survives every crash."""
    svc, engine = docker_faults, docker_view
    svc.ensure_running()
    name = unique(f"fault-{chain}")
    created = svc.run_op("POST", "/workspaces", json={"name": name})
    assert created["status"] == "succeeded", created
    ws = assert_truthful(svc, engine, name)
    stack = ws["stack"]
    engine.write_file(ws["outputs"]["container"], *KEEP)
    for kind, point in CHAINS[chain]:
        with trial("docker", kind, point.label) as t:
            marker = secrets.token_hex(4)
            op = _op(svc, kind, name, marker)
            t.reached = kill_during(svc, op, point)
            at_kill = engine.storage(name)
            svc.start()
            ws = after_restart(svc, engine, name, op["id"], at_kill, deleting=kind == "delete")
            if kind == "delete":
                delete_clean(svc, engine, name, stack, t)
                continue
            if kind == "update":  # the user retries the update: it converges
                again = svc.run_op("PATCH", f"/workspaces/{name}", json={"env": {
                    "ROUND": marker}})
                assert again["status"] == "succeeded", again
                ws = assert_truthful(svc, engine, name)
                assert ws["state"] == "running" and ws["spec"]["env"] == {"ROUND": marker}
                assert _container_env(engine, name)["ROUND"] == marker
            else:
                ws = converge(svc, engine, name, "stopped" if kind == "stop" else "running")
            if ws["state"] == "running":
                running = next(w.name for w in engine.workloads(name) if w.running)
                assert engine.read_file(running, KEEP[0]) == KEEP[1]
