"""What "never stuck, never orphaned" means to a user, as assertions (SPEC §3):
after a crash the workspace settles in a state the API reports truthfully,
retried start/stop converge, storage survives, and delete leaves nothing."""

from __future__ import annotations

from typing import Any

from tests.faults.engine import EngineView
from tests.faults.harness import LiveService, Trial

SETTLED = ("running", "stopped", "failed")


def assert_cut_by_the_kill(op: dict[str, Any], killed_at: float) -> None:
    """An operation running when its process was killed: either the kill cut it
    (it failed as interrupted, to be retried) or it had already ended before
    the kill landed. It can never succeed after the kill."""
    assert op["status"] in ("failed", "succeeded"), op
    if op["status"] == "failed":
        assert "interrupted" in (op["error"] or ""), op
    else:
        assert op["ended"] is not None and op["ended"] <= killed_at, \
            ("succeeded after its process was killed", op, killed_at)


def assert_truthful(svc: LiveService, engine: EngineView, name: str) -> dict[str, Any]:
    """The workspace's settled state matches the engine: `running` iff its
    workload runs, `stopped` iff it has none; a terminal is granted iff running."""
    ws = svc.settle(name)
    assert ws, f"workspace {name} disappeared without a delete"
    loads = engine.workloads(name)
    running = [w.name for w in loads if w.running]
    assert ws["state"] in SETTLED, ws
    if ws["state"] == "running":
        assert running, f"API says running, engine has {loads}"
        assert len(loads) == 1, f"more than one workload: {loads}"
        # The outputs name the workload (a container or pod), or what owns it
        # (a Deployment's name prefixes its pods' names).
        named = [str(v) for v in (ws["outputs"] or {}).values() if isinstance(v, str) and v]
        assert any(running[0] == v or running[0].startswith(f"{v}-") for v in named), \
            f"API says running but its outputs {ws['outputs']} do not name {running[0]}"
    elif ws["state"] == "stopped":
        assert not loads, f"API says stopped, engine has {loads}"
    else:
        assert not running, f"API says failed while {running} runs"
    ticket = svc.call("POST", f"/workspaces/{name}/terminals",
                      json={"command": ["true"], "tty": False})
    assert ticket.status_code < 500, f"ticket for a {ws['state']} workspace: {ticket.text}"
    if ws["state"] == "running":
        assert ticket.status_code == 201, ticket.text
    else:
        assert ticket.status_code == 409, ticket.text
    return ws


def converge(svc: LiveService, engine: EngineView, name: str, desired: str
             ) -> dict[str, Any]:
    """The user retries start or stop: it succeeds and the engine agrees."""
    kind = "start" if desired == "running" else "stop"
    op = svc.run_op("POST", f"/workspaces/{name}/{kind}")
    assert op["status"] == "succeeded", f"retried {kind}: {op}"
    ws = assert_truthful(svc, engine, name)
    assert ws["state"] == desired, ws
    return ws


def delete_clean(svc: LiveService, engine: EngineView, name: str, stack: str,
                 t: Trial | None = None) -> None:
    """Delete succeeds at the first try and leaves no labelled object and no
    stack. A workspace already gone (a delete the restart carried to its end)
    is only checked."""
    op = None
    if svc.workspace(name).status_code != 404:
        op = svc.run_op("DELETE", f"/workspaces/{name}")
    left = engine.objects(name)
    if t is not None:
        t.orphans = len(left)
    assert op is None or op["status"] == "succeeded", f"delete: {op}"
    assert svc.workspace(name).status_code == 404
    assert not left, f"orphans after delete: {left}"
    assert stack not in svc.stacks(), f"stack {stack} left behind"


def after_restart(svc: LiveService, engine: EngineView, name: str, op_id: str,
                  storage_at_kill: dict[str, str], deleting: bool = False
                  ) -> dict[str, Any]:
    """Right after the service came back: the killed operation ended, the
    workspace settled truthfully, and no storage was lost (unless deleting)."""
    op = svc.wait_op(op_id, timeout=300)
    assert op["status"] in ("succeeded", "failed", "cancelled"), op
    ws = svc.settle(name) if deleting else assert_truthful(svc, engine, name)
    if ws and deleting:
        ws = assert_truthful(svc, engine, name)
    if not deleting:
        now = engine.storage(name)
        for vol, uid in storage_at_kill.items():
            assert now.get(vol) == uid, f"storage {vol} lost or replaced: {now}"
    return ws
