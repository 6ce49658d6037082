"""The dispatcher is woken by the store, not by a tick (SPEC §4, issue 18): an
idle replica does not look for work at all, and a create queued through
another replica's API is picked up by this replica's dispatcher as soon as
the store announces it (PostgreSQL NOTIFY; SQLite's data_version), on both
stores."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable

import pytest

from stacks.settings import PulumiSettings
from tests.api.conftest import custom_service


def settle(check: Callable[[], bool], timeout: float) -> bool:
    """Whether `check` holds within `timeout` (looked at every 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_another_replicas_create_wakes_an_idle_dispatcher(tmp_path, store_backend,
                                                          monkeypatch: pytest.MonkeyPatch):
    settings = PulumiSettings(backend_url=f"file://{tmp_path}",
                              passphrase=secrets.token_hex(8), pulumi_home=tmp_path)
    url = store_backend("wake")
    # Two replicas on one store (SQLite: one data dir); only A dispatches.
    with custom_service(tmp_path, "unix:///nonexistent.sock", settings,
                        database_url=url) as a, \
            custom_service(tmp_path, "unix:///nonexistent.sock", settings, dispatch=False,
                           database_url=url) as b:
        claims: list[float] = []
        lock = threading.Lock()
        claim_next = a.store.claim_next

        def counted(*args, **kwargs):
            with lock:
                claims.append(time.monotonic())
            return claim_next(*args, **kwargs)

        monkeypatch.setattr(a.store, "claim_next", counted)

        # Idle: a dispatcher on a 1 s tick looks three times in 3 s; this one
        # (the starts of both replicas settled) not once more.
        assert not settle(lambda: len(claims) >= 2, timeout=3.0), \
            f"an idle dispatcher looked for work {len(claims)} times"
        before = len(claims)

        r = b.call("POST", "/api/v1/workspaces", b.alice, json={"name": "woken"})
        assert r.status_code == 202, r.text
        op_id = r.json()["id"]

        def claimed() -> bool:
            op = a.store.operation(op_id) or {}
            return op.get("status") != "queued"

        assert settle(claimed, timeout=20.0), "replica A never picked up B's create"
        op = a.store.operation(op_id)
        assert op["lease_owner"] == a.runner.replica_id or op["status"] != "running"
        # Picked up by the announcement's wake-up: one or two looks, not a tick's.
        assert len(claims) - before <= 2, claims
