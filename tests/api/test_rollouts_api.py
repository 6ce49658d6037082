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
