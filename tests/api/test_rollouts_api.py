"""The rollout API without an engine (both stores): admin only, validation
naming fields, SSE progress, and cancel leaving queued work alone."""

from __future__ import annotations

import json
import time

import requests


def test_a_rollout_of_nothing_ends_at_once_and_streams_its_end(offline_service):
    svc = offline_service
    assert svc.call("POST", "/api/v1/rollouts", svc.alice, json={}).status_code == 404
    bad = svc.call("POST", "/api/v1/rollouts", svc.admin,
                   json={"batch": "200%", "max_failures": 0, "reviews": []})
    assert bad.status_code == 422
    assert bad.headers["Content-Type"] == "application/problem+json"
    assert {e["field"] for e in bad.json()["errors"]} == {"batch", "max_failures", "reviews"}
    r = svc.call("POST", "/api/v1/rollouts", svc.admin, json={"batch": 2})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert r.headers["Location"] == f"/api/v1/rollouts/{rid}"
    assert r.json()["items"] == []
    with requests.get(f"{svc.url}/api/v1/rollouts/{rid}/events", stream=True, timeout=30,
                      headers={"Authorization": f"Bearer {svc.admin}"}) as events:
        assert events.headers["Content-Type"].startswith("text/event-stream")
        lines = [ln for ln in events.iter_lines(decode_unicode=True) if ln]
    assert lines[-2] == "event: end"
    assert json.loads(lines[-1].removeprefix("data: "))["status"] == "finished"
    assert svc.call("GET", f"/api/v1/rollouts/{rid}", svc.admin).json()["status"] == "finished"
    assert svc.call("GET", "/api/v1/rollouts/nope", svc.admin).status_code == 404


def test_cancel_stops_a_rollout_and_leaves_requested_updates_queued(idle_service):
    svc = idle_service  # no dispatcher: every operation stays queued
    created = svc.call("POST", "/api/v1/workspaces", svc.alice, json={"name": "r1"})
    assert created.status_code == 202
    svc.call("POST", "/api/v1/workspaces", svc.bob, json={"name": "r2"})
    # Nothing applied yet: both run unknown code (outdated).
    assert svc.call("GET", "/api/v1/workspaces/r1", svc.alice).json()["outdated"] is True
    r = svc.call("POST", "/api/v1/rollouts", svc.admin, json={"batch": 1})
    rid = r.json()["id"]
    assert [i["workspace"] for i in r.json()["items"]] == ["alice/r1", "bob/r2"]
    # The first batch's update queues behind the create, through the queue.
    deadline = time.monotonic() + 30
    while not (rollout := svc.call("GET", f"/api/v1/rollouts/{rid}", svc.admin).json()
               )["items"][0]["operation"]:
        assert time.monotonic() < deadline, rollout
        time.sleep(0.2)
    op_id = rollout["items"][0]["operation"]
    assert op_id
    op = svc.call("GET", f"/api/v1/operations/{op_id}", svc.alice).json()
    assert op["kind"] == "update" and op["status"] == "queued"
    cancelled = svc.call("POST", f"/api/v1/rollouts/{rid}/cancel", svc.admin)
    assert cancelled.status_code == 200
    items = {i["workspace"]: i["status"] for i in cancelled.json()["items"]}
    assert cancelled.json()["status"] == "cancelled"
    assert items == {"alice/r1": "queued", "bob/r2": "cancelled"}
    assert svc.call("POST", f"/api/v1/rollouts/{rid}/cancel", svc.admin).status_code == 409


def test_a_rollout_defers_workspaces_in_use_by_default(idle_service):
    """SPEC §10: recent terminal activity, or a kept session still running
    (asked as idle auto-stop asks it), makes a workspace wait its turn."""
    svc = idle_service  # no dispatcher: every operation stays queued
    for name in ("idle", "typing", "detached"):
        assert svc.call("POST", "/api/v1/workspaces", svc.alice,
                        json={"name": name}).status_code == 202
    svc.store.touch_workspace("alice", "typing", time.time())
    svc.runner.in_use = lambda owner, name: name == "detached"
    try:
        r = svc.call("POST", "/api/v1/rollouts", svc.admin, json={"batch": "100%"})
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        deadline = time.monotonic() + 30
        waiting = ("pending", "in use: waits for its users")
        expected = {"alice/idle": ("queued", None), "alice/typing": waiting,
                    "alice/detached": waiting}
        while True:  # until the batch's step has been taken
            rollout = svc.call("GET", f"/api/v1/rollouts/{rid}", svc.admin).json()
            items = {i["workspace"]: (i["status"], i["detail"]) for i in rollout["items"]}
            if items == expected:
                break
            assert time.monotonic() < deadline and items["alice/typing"][0] == "pending" \
                and items["alice/detached"][0] == "pending", items
            time.sleep(0.2)
        assert rollout["status"] == "running"
        svc.call("POST", f"/api/v1/rollouts/{rid}/cancel", svc.admin)

        # Asked not to wait: every one gets its update.
        r = svc.call("POST", "/api/v1/rollouts", svc.admin,
                     json={"batch": "100%", "skip_active_minutes": 0})
        rid = r.json()["id"]
        while True:
            rollout = svc.call("GET", f"/api/v1/rollouts/{rid}", svc.admin).json()
            if all(i["operation"] for i in rollout["items"]):
                break
            assert time.monotonic() < deadline + 30, rollout
            time.sleep(0.2)
    finally:
        svc.runner.in_use = None
