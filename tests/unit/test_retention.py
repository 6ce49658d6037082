"""Retention (service.retention) and the cost of a metrics scrape, on real
SQLite and PostgreSQL: old ended operations and their events go, each live
workspace's last operation and all work in flight stay; ended operations
stay counted; a scrape reads the same whatever the history."""

from __future__ import annotations

import time

from service import op_counts
from service.metrics import Metrics
from service.retention import Pruner, prune
from service.store import Store
from tests.unit import test_store
from tests.unit.test_metrics import scrape, value
from tests.unit.test_store import create

open_store = test_store.open_store  # the fixture: the test's store, on each backend

DAY = 86400.0


def _end(store: Store, op: dict, status: str, days_ago: float) -> None:
    """End an operation as if it ended `days_ago` (created a little before)."""
    at = time.time() - days_ago * DAY
    store.update_operation(op["id"], status=status, created=at - 60, ended=at)
    store.add_event(op["id"], {"type": "end", "status": status})


def _ids(store: Store) -> set[str]:
    return {r[0] for r in store.db.execute("SELECT id FROM operations")}


def test_old_history_goes_and_each_workspace_keeps_its_last_operation(open_store):
    store = open_store()
    # "a": two old ended operations: the older goes, the last stays (with its events).
    a1, _ = create(store, "alice", "a")
    _end(store, a1, "succeeded", 40)
    a2, _ = store.request_operation("alice", "a", "stop", queue=False)
    _end(store, a2, "failed", 35)
    # "b": an old ended operation behind an old one still queued: only the ended one goes.
    b1, _ = create(store, "alice", "b")
    _end(store, b1, "succeeded", 40)
    b2, _ = store.request_operation("alice", "b", "stop", queue=False)
    store.update_operation(b2["id"], created=time.time() - 40 * DAY)
    # "c": recent history stays whole.
    c1, _ = create(store, "alice", "c")
    _end(store, c1, "succeeded", 2)
    c2, _ = store.request_operation("alice", "c", "stop", queue=False)
    _end(store, c2, "succeeded", 1)
    # "d": deleted long ago: all its operations go.
    d1, _ = create(store, "bob", "d")
    _end(store, d1, "succeeded", 50)
    d2, _ = store.request_operation("bob", "d", "delete", queue=False)
    _end(store, d2, "succeeded", 45)
    store.delete_workspace("bob", "d")
    # "e": running for a long time: stays.
    e1, _ = create(store, "bob", "e")
    store.update_operation(e1["id"], status="running", created=time.time() - 40 * DAY,
                           started=time.time() - 40 * DAY)
    totals = op_counts.by_status(store.db)

    assert prune(store, 30 * DAY, batch=2) == 2  # in batches
    assert prune(store, 30 * DAY) == 2
    assert prune(store, 30 * DAY) == 0
    assert _ids(store) == {a2["id"], b2["id"], c1["id"], c2["id"], e1["id"]}
    assert store.last_operation("alice", "a")["id"] == a2["id"]
    assert [e["type"] for _, e in store.events(a2["id"])] == ["end"]
    for gone in (a1, b1, d1, d2):
        assert store.events(gone["id"]) == [] and store.operation(gone["id"]) is None
    assert op_counts.by_status(store.db) == totals  # the totals do not forget
    # The workspace's order goes on after its pruned operations.
    a3, _ = store.request_operation("alice", "a", "start", queue=False)
    assert a3["seq"] == a2["seq"] + 1


def test_the_pruner_runs_at_start_then_hourly_and_sooner_with_a_backlog(open_store):
    store = open_store()
    now = [1000.0]
    pruner = Pruner(store, 30 * DAY, clock=lambda: now[0], batch=1)

    def old_history(names: list[str]) -> None:
        for name in names:
            op, _ = create(store, "alice", name, quota=100)
            _end(store, op, "succeeded", 40)
            later, _ = store.request_operation("alice", name, "stop", queue=False)
            _end(store, later, "succeeded", 40)

    old_history([f"w{i}" for i in range(12)])
    # A batch of one, ten batches per tick: a backlog of twelve takes two ticks,
    # the second one at once (not an hour later).
    assert pruner.tick() == 10
    assert pruner.tick() == 2
    old_history(["late"])
    assert pruner.tick() == 0  # not due before an hour has passed
    now[0] += 3600
    assert pruner.tick() == 1
    assert len(_ids(store)) == 13  # each workspace's last operation


def test_a_metrics_scrape_reads_the_same_whatever_the_history(open_store):
    store = open_store()
    metrics = Metrics(store)
    w, _ = create(store, "alice", "w")  # one operation in flight
    _history(store, 20)
    small = _scrape_cost(store, metrics)
    _history(store, 3000)
    large = _scrape_cost(store, metrics)
    s = scrape(metrics)
    assert value(s, "stackspace_operations", status="succeeded") == 3020
    assert value(s, "stackspace_operations", status="queued") == 1
    assert large["queries"] == small["queries"]
    assert large["read"] <= small["read"] + 20, (small, large)


def _history(store: Store, n: int) -> None:
    """`n` ended operations of a deleted workspace, in one statement."""
    start = len(_ids(store))
    store.db.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
        " INSERT INTO operations(id, owner, workspace, kind, status, seq, created, ended)"
        " SELECT 'h' || CAST(i + ? AS TEXT), 'bob', 'gone', 'start', 'succeeded', i + ?,"
        " 1.0, 2.0 FROM n", (n, start, start))
    if store.db.dialect == "postgresql":
        store.db.execute("ANALYZE operations")  # what autovacuum does after a bulk load


def _scrape_cost(store: Store, metrics: Metrics) -> dict[str, int]:
    """Statements a scrape runs, and what they read: SQLite virtual machine
    steps; PostgreSQL rows and index entries read from `operations`, from
    the server's statistics for one transaction that replays them."""
    ran: list[tuple[str, tuple]] = []
    execute = store.db.execute

    def recording(sql: str, params=()):  # noqa: ANN001, ANN202
        ran.append((sql, tuple(params)))
        return execute(sql, params)

    store.db.execute = recording  # type: ignore[method-assign]
    try:
        if store.db.dialect == "sqlite":
            steps = [0]

            def step() -> int:
                steps[0] += 1
                return 0

            store.db.conn.set_progress_handler(step, 1)
            try:
                metrics.exposition(None)
            finally:
                store.db.conn.set_progress_handler(None, 1)
            return {"queries": len(ran), "read": steps[0]}
        metrics.exposition(None)
    finally:
        del store.db.execute
    return {"queries": len(ran), "read": _pg_rows_read(str(store.path), ran)}


def _pg_rows_read(url: str, statements: list[tuple[str, tuple]]) -> int:
    import psycopg

    from service.db import _pg_sql

    # Rows read by sequential scans of the table, entries returned by its indexes.
    stats = ("SELECT SUM(pg_stat_get_xact_tuples_returned(oid)) FROM pg_class WHERE oid ="
             " 'operations'::regclass OR oid IN (SELECT indexrelid FROM pg_index WHERE"
             " indrelid = 'operations'::regclass)")
    with psycopg.connect(url) as conn, conn.transaction():
        before = conn.execute(stats).fetchone()[0]
        for sql, params in statements:
            conn.execute(_pg_sql(sql) if params else sql, params or None).fetchall()
        return int(conn.execute(stats).fetchone()[0] - before)
