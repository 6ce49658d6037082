"""Session caps shared by proxy replicas through the service's database
(proxy.shared_caps), on SQLite and PostgreSQL: two limiters on one database
stand for two proxies."""

from __future__ import annotations

import pytest

from proxy.shared_caps import STALE_AFTER, SharedSessionLimiter
from proxy.tickets import TicketClaims
from service.db import connect

NOW = 1_700_000_000.0


@pytest.fixture
def proxies(store_target):
    made = []

    def make(kind: str = "exec", per_user: int = 2, per_workspace: int = 2):
        db = connect(store_target)
        made.append(db)
        return SharedSessionLimiter(db, kind, per_user, per_workspace,
                                    "forwards" if kind == "forward" else "sessions")
    yield make
    for db in made:
        db.close()


def claims(user: str = "alice", workspace: str = "alice/one") -> TicketClaims:
    return TicketClaims(user=user, workspace=workspace, target={}, command=["true"],
                        tty=False, env={}, ticket_id="t", expires_at=NOW + 60)


def test_the_user_cap_counts_sessions_on_every_proxy(proxies):
    a, b = proxies(), proxies()
    assert a.take(claims(workspace="alice/one"), "s1", now=NOW) is None
    assert b.take(claims(workspace="alice/two"), "s2", now=NOW) is None
    for proxy in (a, b):
        assert proxy.take(claims(workspace="alice/three"), "s3", now=NOW) == \
            "too many sessions for user (limit 2)"
    assert b.take(claims("bob", "bob/one"), "s4", now=NOW) is None  # others are not counted
    a.give_back("s1")  # a session ends on one proxy: the slot is free on the other
    assert b.take(claims(workspace="alice/three"), "s5", now=NOW) is None


def test_the_workspace_cap_counts_every_user(proxies):
    a, b = proxies(per_user=5, per_workspace=1), proxies(per_user=5, per_workspace=1)
    assert a.take(claims("alice", "alice/one"), "s1", now=NOW) is None
    assert b.take(claims("root", "alice/one"), "s2", now=NOW) == \
        "too many sessions for workspace (limit 1)"


def test_a_dead_proxys_sessions_stop_counting_unless_renewed(proxies):
    a, b = proxies(per_user=1), proxies(per_user=1)
    assert a.take(claims(), "s1", now=NOW) is None
    a.renew(["s1"], now=NOW + STALE_AFTER - 1)  # proxy a is alive: its session counts
    assert b.take(claims(), "s2", now=NOW + STALE_AFTER + 1) is not None
    # Proxy a is killed: no more renewals, and its row ages out.
    assert b.take(claims(), "s2", now=NOW + 2 * STALE_AFTER) is None
    assert b.take(claims(), "s3", now=NOW + 2 * STALE_AFTER) is not None


def test_terminals_and_forwards_have_caps_of_their_own(proxies):
    sessions, forwards = proxies("exec", per_user=1), proxies("forward", per_user=1)
    assert sessions.take(claims(), "s1", now=NOW) is None
    assert forwards.take(claims(), "f1", now=NOW) is None
    assert forwards.take(claims(), "f2", now=NOW) == "too many forwards for user (limit 1)"
