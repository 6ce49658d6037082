"""The API's contract that holds without an engine: auth, owner isolation,
validation (nothing changes), problem+json, and the OpenAPI document."""

from __future__ import annotations

import re

from service.openapi import document
from tests.conftest import raw_store_contents


def test_openapi_matches_the_routes(offline_service):
    doc = offline_service.call("GET", "/openapi.json", None).json()
    assert doc == document()
    routes = set()
    for rule in offline_service.app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)  # {path}, not {path:path}
        routes |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented
    # The service's own endpoints answer at the root and under /api/v1 alike.
    for path in ("/healthz", "/openapi.json", "/metrics"):
        root, prefixed = (offline_service.call("GET", p, None) for p in (path, f"/api/v1{path}"))
        assert root.status_code == prefixed.status_code == 200, path
        assert root.headers["Content-Type"] == prefixed.headers["Content-Type"], path


def test_no_token_and_bad_token_are_401_problems(offline_service):
    for token in (None, "nope"):
        r = offline_service.call("GET", "/api/v1/workspaces", token)
        assert r.status_code == 401
        assert r.headers["Content-Type"] == "application/problem+json"
        assert r.json()["type"].endswith("/unauthorized")


def test_validation_errors_name_fields_and_change_nothing(offline_service):
    r = offline_service.call("POST", "/api/v1/workspaces", offline_service.alice,
                             json={"name": "Bad_Name", "colour": "red",
                                   "files": [{"path": "../etc/passwd", "content": "x"}]})
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {"name", "colour", "files[0].path"}
    assert offline_service.call("GET", "/api/v1/workspaces", offline_service.alice
                                ).json() == {"items": [], "next": None}
    r = offline_service.call("POST", "/api/v1/workspaces", offline_service.alice,
                             data="not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = offline_service.call("POST", "/api/v1/workspaces", offline_service.alice,
                             json={"name": "x", "runtime": "nowhere"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "runtime"


def test_other_users_workspace_is_404_not_403(offline_service):
    svc = offline_service
    r = svc.call("POST", "/api/v1/workspaces", svc.alice, json={"name": "mine"})
    assert r.status_code == 202
    for method, path in [("GET", ""), ("DELETE", ""), ("POST", "/stop"), ("POST", "/start"),
                         ("PATCH", "")]:
        r = svc.call(method, f"/api/v1/workspaces/mine{path}", svc.bob,
                     json={} if method == "PATCH" else None)
        assert r.status_code == 404, (method, path)
    op_id = svc.call("GET", "/api/v1/workspaces/mine", svc.alice).json()["last_operation"]["id"]
    assert svc.call("GET", f"/api/v1/operations/{op_id}", svc.bob).status_code == 404
    assert svc.call("GET", "/api/v1/workspaces?owner=alice", svc.bob).json()["items"] == []
    admin_view = svc.call("GET", "/api/v1/workspaces?owner=alice", svc.admin).json()
    assert [w["name"] for w in admin_view["items"]] == ["mine"]


def test_second_mutation_conflicts_unless_queued_and_idempotent_retries(idle_service):
    svc = idle_service
    first = svc.call("POST", "/api/v1/workspaces", svc.alice, json={"name": "busy"},
                     headers={"Idempotency-Key": "k1"})
    assert first.status_code == 202
    assert first.headers["Location"] == f"/api/v1/operations/{first.json()['id']}"
    retry = svc.call("POST", "/api/v1/workspaces", svc.alice, json={"name": "busy"},
                     headers={"Idempotency-Key": "k1"})
    assert retry.status_code == 202 and retry.json()["id"] == first.json()["id"]
    # the create stays queued (the dispatcher is stopped): a stop conflicts...
    r = svc.call("POST", "/api/v1/workspaces/busy/stop", svc.alice)
    assert r.status_code == 409 and r.json()["type"].endswith("/conflict")
    # ...unless the client asks to queue it
    r = svc.call("POST", "/api/v1/workspaces/busy/stop?queue=true", svc.alice)
    assert r.status_code == 202


def test_secrets_are_never_echoed(offline_service):
    svc = offline_service
    r = svc.call("POST", "/api/v1/workspaces", svc.alice, json={
        "name": "sec", "repository": {"url": "https://git.example.test/a", "credential": "T0K3N"},
        "files": [{"path": ".netrc", "content": "PASSW0RD", "secret": True}]})
    assert r.status_code == 202
    shown = svc.call("GET", "/api/v1/workspaces/sec", svc.alice).text
    listed = svc.call("GET", "/api/v1/workspaces", svc.alice).text
    for text in (r.text, shown, listed):
        assert "T0K3N" not in text and "PASSW0RD" not in text
    assert b"T0K3N" not in raw_store_contents(svc.store)


def test_concurrent_mutations_on_one_workspace_admit_exactly_one(idle_service):
    from concurrent.futures import ThreadPoolExecutor

    svc = idle_service  # operations stay queued: the race is on admission alone
    assert svc.call("POST", "/api/v1/workspaces", svc.alice, json={"name": "race"}
                    ).status_code == 202
    op_id = svc.call("GET", "/api/v1/workspaces/race", svc.alice).json()["last_operation"]["id"]
    assert svc.call("POST", f"/api/v1/operations/{op_id}/cancel", svc.alice).status_code == 202
    assert svc.store.operation(op_id)["status"] == "cancelled"
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: svc.call("POST", "/api/v1/workspaces/race/stop",
                                                 svc.alice).status_code, range(8)))
    assert sorted(codes) == [202] + [409] * 7
    # queued requests are all accepted and kept in order
    with ThreadPoolExecutor(4) as pool:
        ops = list(pool.map(lambda _: svc.call(
            "POST", "/api/v1/workspaces/race/start?queue=true", svc.alice).json(), range(4)))
    seqs = [svc.store.operation(o["id"])["seq"] for o in ops]
    assert len(set(seqs)) == 4


# A stop the storage guard refused leaves state, desire and stack config as
# they were: proven on the real engine in tests/faults/test_storage_guard.py
# (no Outcome is faked into the runner here).


def test_cancelled_queued_stop_leaves_the_workspace_as_it_was(idle_service):
    svc = idle_service
    svc.call("POST", "/api/v1/workspaces", svc.alice, json={"name": "busy2"})
    create = svc.store.last_operation("alice", "busy2")
    svc.store.update_operation(create["id"], status="succeeded")
    svc.store.update_workspace("alice", "busy2", state="running")
    stop = svc.call("POST", "/api/v1/workspaces/busy2/stop", svc.alice).json()
    assert svc.call("POST", f"/api/v1/operations/{stop['id']}/cancel", svc.alice
                    ).status_code == 202
    ws = svc.call("GET", "/api/v1/workspaces/busy2", svc.alice).json()
    assert (ws["state"], ws["desired"]) == ("running", "running")
    assert ws["last_operation"]["status"] == "cancelled"
    # a create cancelled before it ran leaves a failed workspace to retry or delete
    svc.call("POST", "/api/v1/workspaces", svc.alice, json={"name": "never"})
    create = svc.store.last_operation("alice", "never")
    svc.call("POST", f"/api/v1/operations/{create['id']}/cancel", svc.alice)
    assert svc.call("GET", "/api/v1/workspaces/never", svc.alice).json()["state"] == "failed"
