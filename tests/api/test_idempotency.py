"""Idempotency-Key (IETF draft-ietf-httpapi-idempotency-key-header): a
replay answers with the first operation; the same key with another body is a
client error (422) that changes nothing."""

from __future__ import annotations


def test_a_key_reused_with_another_body_is_refused_and_changes_nothing(idle_service):
    svc = idle_service
    key = {"Idempotency-Key": "create-1"}
    first = svc.call("POST", "/api/v1/workspaces", svc.alice, headers=dict(key),
                     json={"name": "idem", "env": {"A": "1", "B": "2"}})
    assert first.status_code == 202, first.text
    # The same JSON, keys in another order: a replay.
    same = svc.call("POST", "/api/v1/workspaces", svc.alice, headers=dict(key),
                    json={"env": {"B": "2", "A": "1"}, "name": "idem"})
    assert same.status_code == 202 and same.json()["id"] == first.json()["id"]
    for body in ({"name": "idem", "env": {"A": "1", "B": "3"}}, {"name": "other"}):
        r = svc.call("POST", "/api/v1/workspaces", svc.alice, headers=dict(key), json=body)
        assert r.status_code == 422, r.text
        assert r.headers["Content-Type"] == "application/problem+json"
        assert [e["field"] for e in r.json()["errors"]] == ["Idempotency-Key"]
    listed = svc.call("GET", "/api/v1/workspaces", svc.alice).json()["items"]
    assert [(w["name"], w["spec"]["env"]) for w in listed] == [("idem", {"A": "1", "B": "2"})]

    # A PATCH alike: replayed with its body, refused with another.
    patch_key = {"Idempotency-Key": "patch-1"}
    url = "/api/v1/workspaces/idem?queue=true"
    op = svc.call("PATCH", url, svc.alice, headers=dict(patch_key), json={"env": {"C": "1"}})
    assert op.status_code == 202, op.text
    again = svc.call("PATCH", url, svc.alice, headers=dict(patch_key), json={"env": {"C": "1"}})
    assert again.status_code == 202 and again.json()["id"] == op.json()["id"]
    other = svc.call("PATCH", url, svc.alice, headers=dict(patch_key), json={"env": {"C": "2"}})
    assert other.status_code == 422, other.text
    ops = svc.store.db.execute("SELECT kind FROM operations WHERE owner='alice' AND "
                               "workspace='idem' ORDER BY seq").fetchall()
    assert [o["kind"] for o in ops] == ["create", "update"]
