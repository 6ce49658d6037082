"""API tokens through the HTTP API (SPEC §4, §8): minted once with their
value, listed without it, owner-isolated (404), revoked and expired (401);
validation names the field and changes nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

import time

import requests

from service import tokens

API = "/api/v1"


def _ids(svc, token: str, query: str = "") -> set[str]:
    r = svc.call("GET", f"{API}/tokens{query}", token)
    assert r.status_code == 200, r.text
    return {t["id"] for t in r.json()["items"]}


def _works(svc, token: str) -> bool:
    code = svc.call("GET", f"{API}/workspaces", token).status_code
    assert code in (200, 401)
    return code == 200


def test_mint_list_revoke_and_owner_isolation(idle_service):
    svc = idle_service
    r = svc.call("POST", f"{API}/tokens", svc.alice, json={"name": "ci", "expires_in": 3600})
    assert r.status_code == 201, r.text
    minted = r.json()
    value = minted["token"]
    assert minted["owner"] == "alice" and minted["name"] == "ci" and not minted["admin"]
    assert minted["expires_at"] > time.time() + 3500
    assert _works(svc, value)

    # Listed by id and owner, never with a value (neither the new one nor the caller's).
    r = svc.call("GET", f"{API}/tokens", svc.alice)
    assert minted["id"] in {t["id"] for t in r.json()["items"]}
    assert all("token" not in t and "hash" not in t for t in r.json()["items"])
    assert value not in r.text and svc.alice not in r.text
    assert {t["owner"] for t in r.json()["items"]} == {"alice"}

    # Another user neither sees nor revokes it: 404, like a token that does not exist.
    assert minted["id"] not in _ids(svc, svc.bob)
    assert minted["id"] not in _ids(svc, svc.bob, "?owner=alice")  # ?owner= is for admins
    r = svc.call("DELETE", f"{API}/tokens/{minted['id']}", svc.bob)
    assert r.status_code == 404 and r.headers["Content-Type"] == "application/problem+json"
    assert svc.call("DELETE", f"{API}/tokens/nope", svc.bob).status_code == 404
    assert _works(svc, value)
    # Only admins mint for someone else.
    r = svc.call("POST", f"{API}/tokens", svc.bob, json={"owner": "alice"})
    assert r.status_code == 403 and r.json()["type"].endswith("/forbidden")

    # The owner revokes it: 401 from then on; a second revoke finds nothing.
    assert svc.call("DELETE", f"{API}/tokens/{minted['id']}", svc.alice).status_code == 204
    assert not _works(svc, value)
    assert svc.call("DELETE", f"{API}/tokens/{minted['id']}", svc.alice).status_code == 404
    assert minted["id"] not in _ids(svc, svc.alice)
    assert _works(svc, svc.alice)  # the caller's own token is untouched


def test_admin_lists_all_mints_for_others_and_revokes_any(idle_service):
    svc = idle_service
    r = svc.call("POST", f"{API}/tokens", svc.admin, json={"owner": "carol"})
    assert r.status_code == 201 and r.json()["owner"] == "carol"
    carol, carol_id = r.json()["token"], r.json()["id"]
    assert _works(svc, carol)  # a new user, created by the admin's request
    every = svc.call("GET", f"{API}/tokens", svc.admin).json()["items"]
    assert {"root", "alice", "bob", "carol"} <= {t["owner"] for t in every}
    assert {t["owner"] for t in svc.call("GET", f"{API}/tokens?owner=carol", svc.admin
                                         ).json()["items"]} == {"carol"}
    assert svc.call("DELETE", f"{API}/tokens/{carol_id}", svc.admin).status_code == 204
    assert not _works(svc, carol)


def test_an_expired_token_is_refused(idle_service):
    svc = idle_service
    r = svc.call("POST", f"{API}/tokens", svc.alice, json={"expires_in": 1})
    assert r.status_code == 201
    value = r.json()["token"]
    deadline = time.monotonic() + 15
    while _works(svc, value):
        assert time.monotonic() < deadline, "the token still works after its expiry"
        time.sleep(0.2)
    assert time.time() >= r.json()["expires_at"]
    r = svc.call("GET", f"{API}/workspaces", value)
    assert r.status_code == 401 and r.json()["type"].endswith("/unauthorized")
    # Minted through the store with a past expiry: refused at once.
    past, _ = tokens.mint(svc.store, "alice", expires_at=time.time() - 1)
    assert not _works(svc, past)


def test_bad_token_requests_name_the_field_and_change_nothing(idle_service):
    svc = idle_service
    before = _ids(svc, svc.admin)
    now = time.time()
    cases = [
        ({"expires_in": -5, "colour": "red"}, {"expires_in", "colour"}),
        ({"expires_in": 60, "expires_at": now + 60}, {"expires_at"}),
        ({"expires_at": now - 60}, {"expires_at"}),
        ({"expires_in": "1h"}, {"expires_in"}),
        ({"expires_in": True}, {"expires_in"}),
        ({"owner": "Not_A_User"}, {"owner"}),
        ({"name": ""}, {"name"}),
        ([], {"body"}),
    ]
    for body, fields in cases:
        r = svc.call("POST", f"{API}/tokens", svc.admin, json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.headers["Content-Type"] == "application/problem+json"
        assert {e["field"] for e in r.json()["errors"]} == fields, body
    r = svc.call("POST", f"{API}/tokens", svc.admin, data="{",
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert svc.call("POST", f"{API}/tokens", svc.admin, data="x").status_code == 415
    # `queue` belongs to requests that enqueue an operation (the fuzzer's negative cases).
    for method, path in (("POST", "/tokens"), ("GET", "/tokens"), ("GET", "/workspaces")):
        r = svc.call(method, f"{API}{path}?queue=true", svc.admin, json={})
        assert r.status_code == 400, (method, path)
    assert _ids(svc, svc.admin) == before


def test_an_idempotency_key_makes_minting_and_starting_a_rollout_safe_to_retry(idle_service):
    """SPEC §4: a retry with the same key gets the first answer (the same
    token value) and makes nothing new; another body with that key is 422;
    another key, or another user's same key, is a new request."""
    svc = idle_service

    def mint(token: str, key: str, body: dict) -> requests.Response:
        return svc.call("POST", "/api/v1/tokens", token, json=body,
                        headers={"Idempotency-Key": key})

    def alice_tokens() -> list[str]:
        return [t["id"] for t in svc.call("GET", "/api/v1/tokens", svc.alice).json()["items"]]

    before = alice_tokens()
    first = mint(svc.alice, "k1", {"name": "ci"})
    assert first.status_code == 201, first.text
    again = mint(svc.alice, "k1", {"name": "ci"})
    assert (again.status_code, again.json()) == (201, first.json())
    assert alice_tokens() == [*before, first.json()["id"]]
    reused = mint(svc.alice, "k1", {"name": "other"})
    assert reused.status_code == 422 and "Idempotency-Key" in reused.text
    assert alice_tokens() == [*before, first.json()["id"]]
    assert mint(svc.alice, "k2", {"name": "ci"}).json()["token"] != first.json()["token"]
    assert mint(svc.bob, "k1", {"name": "ci"}).json()["owner"] == "bob"
    # A refused request keeps nothing: its key is free for the corrected one.
    assert mint(svc.alice, "k3", {"expires_in": -1}).status_code == 422
    assert mint(svc.alice, "k3", {"expires_in": 60}).status_code == 201

    def rollout(key: str) -> requests.Response:
        return svc.call("POST", "/api/v1/rollouts", svc.admin, json={"batch": 1},
                        headers={"Idempotency-Key": key})

    started = rollout("r1")
    assert started.status_code == 201, started.text
    assert rollout("r1").json()["id"] == started.json()["id"]
    assert rollout("r2").json()["id"] != started.json()["id"]
