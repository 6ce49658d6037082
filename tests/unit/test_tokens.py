"""Tokens in the store (service.tokens) on real SQLite and PostgreSQL: the
admin token made once, rotation, expiry, revocation, and the migration of a
store made before tokens had ids (its admin tokens keep working, no new one
is printed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from service import op_counts, tokens
from service.durations import parse_duration
from service.store import Store
from tests.unit import test_store
from tests.unit.test_store import create

open_store = test_store.open_store  # the fixture: the test's store, on each backend

LEGACY = [  # what a store made before token ids and operation totals lacks
    "DROP INDEX tokens_by_id",
    "ALTER TABLE tokens DROP COLUMN id", "ALTER TABLE tokens DROP COLUMN name",
    "ALTER TABLE tokens DROP COLUMN expires", "ALTER TABLE tokens DROP COLUMN bootstrap",
    "DROP TABLE operation_totals",
]
LEGACY_TRIGGERS = {
    "sqlite": ["DROP TRIGGER ops_total_insert", "DROP TRIGGER ops_total_end",
               "DROP TRIGGER ops_total_unend"],
    "postgresql": ["DROP TRIGGER ops_total_insert ON operations",
                   "DROP TRIGGER ops_total_update ON operations",
                   "DROP FUNCTION stackspace_ops_total"],
}


def test_the_admin_token_is_made_once_and_rotation_replaces_it(open_store):
    store = open_store()
    first = tokens.ensure_admin(store, None)
    assert first and store.user_for_token(first).admin
    # Another start (another replica, or a restart): nothing new to print.
    assert tokens.ensure_admin(open_store(), None) is None
    assert store.user_for_token(first).admin
    # STACKSPACE_ADMIN_TOKEN is added as an admin token; nothing is printed.
    assert tokens.ensure_admin(store, "env-admin-token") is None
    assert store.user_for_token("env-admin-token").admin
    new = tokens.rotate_admin(store)
    assert store.user_for_token(new).admin
    assert store.user_for_token(first) is None and store.user_for_token("env-admin-token") is None
    assert tokens.ensure_admin(store, None) is None  # the rotated one is the admin token


def test_revoke_expiry_and_listing(open_store):
    store = open_store()
    alice = store.add_user("alice")
    value, info = tokens.mint(store, "alice", name="laptop", expires_at=time.time() + 60)
    listed = tokens.tokens(store, "alice")
    assert [t.id for t in listed][-1] == info.id and listed[-1].name == "laptop"
    assert tokens.tokens(store, "bob") == []
    assert not tokens.revoke(store, info.id, owner="bob")  # not bob's
    assert store.user_for_token(value).name == "alice"
    assert tokens.revoke(store, info.id, owner="alice")
    assert store.user_for_token(value) is None and store.user_for_token(alice)
    expired, old = tokens.mint(store, "alice", expires_at=time.time() - 1)
    assert store.user_for_token(expired) is None
    assert old.id in {t.id for t in tokens.tokens(store)}  # listed: its owner sees why
    assert tokens.prune_expired(store, time.time()) == 1
    assert old.id not in {t.id for t in tokens.tokens(store)}


def test_a_store_from_before_token_ids_is_migrated(open_store):
    store = open_store()
    op, _ = create(store, "alice", "one")
    store.cancel_queued(op["id"])
    with store.db.tx() as db:
        for sql in LEGACY_TRIGGERS[store.db.dialect] + LEGACY:
            db.execute(sql)
        for user, value in (("admin", "old-admin-1"), ("admin", "old-admin-2"),
                            ("alice", "old-alice")):
            db.execute("INSERT INTO users(name, admin, created) VALUES (?,?,?) ON CONFLICT"
                       " DO NOTHING", (user, int(user == "admin"), time.time()))
            db.execute('INSERT INTO tokens(hash, "user", created) VALUES (?,?,?)',
                       (tokens.hash_token(value), user, time.time()))
    store = open_store()
    assert {t.user for t in tokens.tokens(store)} == {"admin", "alice"}
    assert all(t.id for t in tokens.tokens(store))
    assert store.user_for_token("old-admin-2").admin and store.user_for_token("old-alice")
    assert tokens.ensure_admin(store, None) is None  # the old admin tokens are the admin's
    assert op_counts.by_status(store.db) == {"cancelled": 1}  # totals seeded from the rows
    tokens.rotate_admin(store)
    assert store.user_for_token("old-admin-1") is None
    assert store.user_for_token("old-alice")  # only admin tokens rotate


@pytest.mark.parametrize(("text", "seconds"), [
    ("3600", 3600), (90, 90), (1.5, 1.5), ("90s", 90), ("15m", 900), ("12h", 43200),
    ("30d", 2592000), ("2w", 1209600), (" 1.5h ", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text, "f") == seconds


@pytest.mark.parametrize("bad", ["", "0", "-1", "1y", "h", "1 h x", True, None, 0,
                                 float("nan"), float("inf"), "99999w", [1]])
def test_bad_durations_name_the_field(bad):
    with pytest.raises(ValueError, match="^retention: "):
        parse_duration(bad, "retention")


def test_store_path_is_unused_by_listing_without_key(tmp_path: Path):
    """`stackspace token` opens the store without its key: tokens need none."""
    store = Store(tmp_path / "s.db")
    store.add_user("alice")
    assert [t.user for t in tokens.tokens(store)] == ["alice"]
    assert not (tmp_path / "store.key").exists()


def test_a_token_an_older_replica_adds_is_listed_and_revoked_by_its_id(open_store):
    """During a rolling upgrade an older replica writes tokens without an id."""
    store = open_store()
    store.add_user("alice")
    store.db.execute('INSERT INTO tokens(hash, "user", created) VALUES (?,?,?)',
                     (tokens.hash_token("from-old-replica"), "alice", time.time()))
    (legacy,) = [t for t in tokens.tokens(store, "alice")
                 if t.id == tokens.hash_token("from-old-replica")[:16]]
    assert not tokens.revoke(store, legacy.id, owner="bob")
    assert tokens.revoke(store, legacy.id, owner="alice")
    assert store.user_for_token("from-old-replica") is None


def test_replicas_starting_at_once_make_one_admin_token_and_migrate_once(open_store):
    store = open_store()
    op, _ = create(store, "alice", "one")
    store.cancel_queued(op["id"])
    with store.db.tx() as db:
        for sql in LEGACY_TRIGGERS[store.db.dialect] + LEGACY:
            db.execute(sql)
    printed: list[str | None] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        barrier.wait()
        printed.append(tokens.ensure_admin(open_store(), None))  # opening migrates

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(printed) == 6 and len([p for p in printed if p]) == 1
    assert op_counts.by_status(store.db) == {"cancelled": 1}  # seeded once, not six times
