"""The store's transitions that must not race: create + its operation + quota,
claim, cancel, leases of several replicas; and secrets encrypted at rest.
Real SQLite and a real PostgreSQL server (each test runs on both), real
threads."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service import lifecycle
from service.store import Conflict, QuotaExceeded, Store
from tests.conftest import raw_store_contents

RUNTIME = {"name": "local", "type": "docker", "host": "unix:///var/run/docker.sock"}


@pytest.fixture
def open_store(store_target: Path | str, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens the test's store; each call is another client (own connections),
    like another API thread or another replica."""
    opened: list[Store] = []

    def make() -> Store:
        opened.append(Store(store_target, key_file=tmp_path / "store.key"))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


def create(store: Store, owner: str, name: str, quota: int = 10, **kw):
    return store.create_workspace(owner, name, f"ws-{owner}-{name}", RUNTIME, {"name": name},
                                  {"credential": "s3cr3t-token"}, quota=quota, **kw)


def test_create_writes_the_workspace_and_its_operation_together(open_store):
    store = open_store()
    op, created = create(store, "alice", "one")
    assert created and op["kind"] == "create" and op["status"] == "queued"
    ws = store.workspace("alice", "one")
    assert ws["state"] == "provisioning" and ws["desired"] == "running"
    assert "secrets" not in ws and "secrets" not in op
    with pytest.raises(Conflict):
        create(store, "alice", "one")
    # Nothing half-written by the refused duplicate.
    assert [o["id"] for o in _ops(store)] == [op["id"]]


def test_quota_holds_under_concurrent_creates(open_store):
    store = open_store()
    admitted, refused = [], []
    barrier = threading.Barrier(12)

    def attempt(i: int) -> None:
        local = open_store()  # one connection per thread, like the API
        barrier.wait()
        try:
            create(local, "bob", f"w{i}", quota=3)
            admitted.append(i)
        except QuotaExceeded:
            refused.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 3 and len(refused) == 9
    assert len(store.workspaces("bob")) == 3
    assert len(_ops(store)) == 3  # every workspace has exactly its create operation


def test_idempotency_key_returns_the_first_operation(open_store):
    store = open_store()
    first, created = create(store, "alice", "one", idempotency_key="k1")
    again, created_again = create(store, "alice", "one", idempotency_key="k1")
    assert created and not created_again and again["id"] == first["id"]


def test_only_one_claim_wins_and_cancel_cannot_undo_a_claim(open_store):
    store = open_store()
    op, _ = create(store, "alice", "one")
    results: list[str] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        local = open_store()
        barrier.wait()
        results.append("claimed" if local.claim_next("r1", 30, 1) else "lost")

    def cancel() -> None:
        local = open_store()
        barrier.wait()
        results.append("cancelled" if local.cancel_queued(op["id"]) else "late")

    threads = [threading.Thread(target=claim) for _ in range(4)]
    threads += [threading.Thread(target=cancel) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r in ("claimed", "cancelled")]
    assert len(winners) == 1
    status = store.operation(op["id"])["status"]
    assert status == ("running" if winners == ["claimed"] else "cancelled")


def test_claim_keeps_order_and_one_at_a_time(open_store):
    store = open_store()
    create_op, _ = create(store, "alice", "one")
    stop, _ = store.request_operation("alice", "one", "stop", queue=True)
    claimed = store.claim_next("r1", 30, 10)
    assert [o["id"] for o in claimed] == [create_op["id"]]  # the create comes first
    assert claimed[0]["lease_owner"] == "r1" and claimed[0]["status"] == "running"
    assert store.claim_next("r2", 30, 10) == []  # the create still runs
    store.finish_operation(create_op, "succeeded", lifecycle.Settled("running", "running"),
                           lease_owner="r1")
    assert [o["id"] for o in store.claim_next("r2", 30, 10)] == [stop["id"]]


def test_replicas_claiming_at_once_never_run_two_operations_of_one_workspace(open_store):
    store = open_store()
    for i in range(6):
        create(store, "alice", f"w{i}")
        store.request_operation("alice", f"w{i}", "stop", queue=True)
    claims: dict[str, list[dict]] = {}
    barrier = threading.Barrier(4)

    def replica(name: str) -> None:
        local = open_store()
        barrier.wait()
        claims[name] = [o for _ in range(5) for o in local.claim_next(name, 30, 2)]

    threads = [threading.Thread(target=replica, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = [o for ops in claims.values() for o in ops]
    # Each workspace's create was claimed exactly once, by one replica, and
    # none of the stops queued behind them.
    assert sorted(o["workspace"] for o in got) == [f"w{i}" for i in range(6)]
    assert {o["kind"] for o in got} == {"create"}
    for name, ops in claims.items():
        assert all(store.operation(o["id"])["lease_owner"] == name for o in ops)


def test_leases_renew_expire_and_are_taken_over_once(open_store):
    store = open_store()
    op, _ = create(store, "alice", "one")
    [claimed] = store.claim_next("r1", 30, 1)
    assert store.renew_leases("r1", [op["id"]], 30) == [op["id"]]
    assert store.renew_leases("r2", [op["id"]], 30) == []  # not r2's
    assert store.expired_operations() == []
    # A live lease is not taken over...
    assert not store.take_over(op["id"], "r1", "r2")
    # ...an expired one is, by exactly one of the replicas that try at once.
    later = claimed["lease_until"] + 1
    assert [o["id"] for o in store.expired_operations(now=later)] == [op["id"]]
    store.update_operation(op["id"], lease_until=0)
    barrier = threading.Barrier(4)
    won: list[str] = []

    def take(name: str) -> None:
        local = open_store()
        barrier.wait()
        if local.take_over(op["id"], "r1", name):
            won.append(name)

    threads = [threading.Thread(target=take, args=(f"r{i}",)) for i in range(2, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and store.operation(op["id"])["lease_owner"] == won[0]
    # The replica that lost it can neither renew it nor record its end.
    assert store.renew_leases("r1", [op["id"]], 30) == []
    assert not store.finish_operation(op, "succeeded", lifecycle.Settled("running", "running"),
                                      lease_owner="r1")
    assert store.operation(op["id"])["status"] == "running"
    assert store.workspace("alice", "one")["state"] == "provisioning"
    assert store.finish_operation(op, "failed", lifecycle.Settled("failed", "running"),
                                  error="interrupted", lease_owner=won[0])
    assert store.operation(op["id"])["status"] == "failed"


def test_requests_set_desired_and_deletion_is_final(open_store):
    store = open_store()
    op, _ = create(store, "alice", "one")
    with pytest.raises(Conflict):
        store.request_operation("alice", "one", "stop", queue=False)
    store.request_operation("alice", "one", "stop", queue=True)
    assert store.workspace("alice", "one")["desired"] == "stopped"
    store.request_operation("alice", "one", "delete", queue=True)
    assert store.workspace("alice", "one")["desired"] == "deleted"
    with pytest.raises(lifecycle.Refused):
        store.request_operation("alice", "one", "start", queue=True)


def test_secrets_are_encrypted_at_rest_and_given_back(open_store, tmp_path: Path):
    store = open_store()
    create(store, "alice", "one")
    store.request_operation("alice", "one", "update", queue=True, spec={"name": "one"},
                            secrets={"credential": "n3w-s3cr3t"})
    raw = raw_store_contents(store)
    assert b"ws-alice-one" in raw  # it holds the rows
    assert b"s3cr3t-token" not in raw and b"n3w-s3cr3t" not in raw
    assert store.workspace_secrets("alice", "one") == {"credential": "s3cr3t-token"}
    assert (tmp_path / "store.key").stat().st_mode & 0o777 == 0o600


def test_failed_delete_is_due_for_retry(open_store):
    store = open_store()
    op, _ = create(store, "alice", "one")
    store.claim_next("r1", 30, 1)
    store.finish_operation(op, "succeeded", lifecycle.Settled("running", "running"))
    delete, _ = store.request_operation("alice", "one", "delete", queue=False)
    store.claim_next("r1", 30, 1)
    assert store.due_delete_retries(now=1e12) == []  # still running
    store.finish_operation(delete, "failed", lifecycle.Settled("deleting", "deleted", True))
    assert store.due_delete_retries(now=0) == []  # not yet due
    assert store.due_delete_retries(now=1e12) == [("alice", "one")]


def _ops(store: Store) -> list[dict]:
    return [dict(r) for r in store.db.execute("SELECT id, kind FROM operations")]



def _race(n: int, work) -> list:
    """Run work(i) on n threads released together; their results (or errors)."""
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as e:  # noqa: BLE001 - the test looks at every outcome
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_replicas_starting_together_create_the_schema_once(store_target, tmp_path: Path):
    stores = _race(6, lambda i: Store(store_target, key_file=tmp_path / "store.key"))
    assert all(isinstance(s, Store) for s in stores), stores
    create(stores[0], "alice", "one")
    assert [w["name"] for w in stores[5].workspaces("alice")] == ["one"]
    for store in stores:
        store.close()


def test_same_idempotency_key_at_once_creates_one_workspace(open_store):
    results = _race(8, lambda i: create(open_store(), "alice", "one", idempotency_key="k"))
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(created for _, created in results) == 1
    assert len({op["id"] for op, _ in results}) == 1
    assert len(_ops(open_store())) == 1


def test_queued_requests_at_once_keep_one_order(open_store):
    store = open_store()
    first, _ = create(store, "alice", "one")
    kinds = ["stop", "start"] * 4
    ops = _race(8, lambda i: open_store().request_operation("alice", "one", kinds[i],
                                                            queue=True)[0])
    assert not [o for o in ops if isinstance(o, Exception)], ops
    seqs = sorted(o["seq"] for o in ops)
    assert seqs == list(range(2, 10))  # every request has its own place after the create
    # They run one at a time, in that order.
    order = [first, *sorted(ops, key=lambda o: o["seq"])]
    for op in order:
        assert [o["id"] for o in store.claim_next("r1", 30, 10)] == [op["id"]]
        assert store.claim_next("r2", 30, 10) == []
        store.finish_operation(op, "succeeded", lifecycle.Settled("running", "running"))


def test_events_written_at_once_are_all_kept_in_order(open_store):
    op, _ = create(open_store(), "alice", "one")
    _race(8, lambda i: [open_store().add_event(op["id"], {"writer": i, "n": n})
                        for n in range(5)])
    events = open_store().events(op["id"])
    assert [seq for seq, _ in events] == list(range(1, 41))
    for writer in range(8):
        assert [e["n"] for _, e in events if e["writer"] == writer] == list(range(5))


def test_postgres_connections_dropped_by_the_server_are_replaced(new_database, tmp_path: Path):
    """A database restart or failover ends every session: the next request still works."""
    import psycopg

    url = new_database("store_dropped")
    store = Store(url, key_file=tmp_path / "store.key")
    create(store, "alice", "one")
    with psycopg.connect(url, autocommit=True) as admin:
        ended = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                              " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                              ).fetchone()[0]
    assert ended >= 1
    assert store.workspace("alice", "one")["state"] == "provisioning"
    create(store, "alice", "two")
    assert len(store.workspaces("alice")) == 2
    store.close()


def test_last_operations_gives_each_workspace_its_newest_operation(open_store):
    store = open_store()
    create(store, "alice", "one")
    create(store, "alice", "two")
    create(store, "bob", "three")
    stop, _ = store.request_operation("alice", "one", "stop", queue=True)
    newest = store.last_operations()
    assert sorted(newest) == [("alice", "one"), ("alice", "two"), ("bob", "three")]
    assert newest[("alice", "one")]["id"] == stop["id"]
    for (owner, name), op in newest.items():
        assert op == store.last_operation(owner, name)
    assert sorted(store.last_operations("alice")) == [("alice", "one"), ("alice", "two")]


def test_unreachable_postgres_names_the_setting_and_hides_the_password(postgres_url: str):
    from service.db import DatabaseUnavailable

    with pytest.raises(DatabaseUnavailable, match="database_url: cannot connect") as err:
        Store("postgresql://nobody:s3cretpw@127.0.0.1:25432/stackspace")  # no such role
    assert "s3cretpw" not in str(err.value) and err.value.__cause__ is None
    assert 'role "nobody"' in str(err.value)  # the server's reason reaches the operator


def test_a_replica_keeps_reading_while_a_newer_one_adds_a_column(open_store):
    """Rolling upgrade: one replica adds a column while another serves reads."""
    old, new = open_store(), open_store()
    op, _ = create(old, "alice", "one")
    for _ in range(30):  # often enough for a driver to cache the statement's plan
        assert old.operation(op["id"])["id"] == op["id"]
    new.db.execute("ALTER TABLE operations ADD COLUMN upgrade_note TEXT")
    assert old.operation(op["id"])["upgrade_note"] is None


# --- the installation id (names and labels of runtime objects derive from it) --

def test_installation_id_is_made_once_and_kept_across_reopens(open_store):
    first = open_store()
    assert re.fullmatch(r"[0-9a-f]{8}", first.installation_id), first.installation_id
    create(first, "alice", "one")
    # Another client of the same store (a restart, another replica) reads the same
    # id, even now that the store holds workspaces.
    assert open_store().installation_id == first.installation_id
    assert first.workspace("alice", "one")["installation"] == first.installation_id


def test_replicas_opening_a_new_store_at_once_agree_on_one_id(store_target, tmp_path: Path):
    stores = _race(6, lambda i: Store(store_target, key_file=tmp_path / "store.key"))
    assert all(isinstance(s, Store) for s in stores), stores
    assert len({s.installation_id for s in stores}) == 1
    assert stores[0].installation_id
    for store in stores:
        store.close()


def test_two_stores_have_different_ids(tmp_path: Path):
    a = Store(tmp_path / "a" / "stackspace.db")
    b = Store(tmp_path / "b" / "stackspace.db")
    assert a.installation_id != b.installation_id
    a.close()
    b.close()


def test_a_store_made_before_ids_existed_keeps_the_legacy_empty_id(store_target,
                                                                    tmp_path: Path):
    """Upgrade: a store with main's schema (no meta table, no installation
    column) holding a workspace gets "", so that workspace's names, labels and
    stack config stay exactly what they were."""
    made = Store(store_target, key_file=tmp_path / "store.key")
    made.db.execute("DROP TABLE meta")
    made.db.execute("ALTER TABLE workspaces DROP COLUMN installation")
    # The older version's own insert (no installation column).
    made.db.execute(
        "INSERT INTO workspaces(owner, name, stack, runtime, spec, runtime_config, desired,"
        " state, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?)",
        ("alice", "old", "ws-alice-old", "local", '{"name": "old"}', json.dumps(RUNTIME),
         "running", "running", 1.0, 1.0))
    made.close()

    upgraded = Store(store_target, key_file=tmp_path / "store.key")
    assert upgraded.installation_id == ""
    assert upgraded.workspace("alice", "old")["installation"] == ""
    create(upgraded, "alice", "new")
    assert upgraded.workspace("alice", "new")["installation"] == ""
    # Kept: deleting every workspace later does not hand out a new id.
    upgraded.delete_workspace("alice", "old")
    upgraded.delete_workspace("alice", "new")
    again = Store(store_target, key_file=tmp_path / "store.key")
    assert again.installation_id == ""
    upgraded.close()
    again.close()


def test_a_workspace_keeps_the_id_it_was_created_under(open_store):
    """An older replica inserting during a rolling upgrade leaves NULL: that
    workspace stays legacy even though the store has an id."""
    store = open_store()
    store.db.execute(
        "INSERT INTO workspaces(owner, name, stack, runtime, spec, runtime_config, desired,"
        " state, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?)",
        ("alice", "rolling", "ws-alice-rolling", "local", '{"name": "rolling"}',
         json.dumps(RUNTIME), "running", "running", 1.0, 1.0))
    assert store.installation_id
    assert store.workspace("alice", "rolling")["installation"] == ""


def _runner_decide(op: dict, ws_at_claim: dict, ok: bool, error_type: str | None):
    """How service.runner settles a run's end: the desired state and what is
    queued are the ending transaction's, the rest is what the run started from."""
    def decide(desired: str, superseded: bool) -> lifecycle.Settled:
        return lifecycle.settle(op["kind"], ok=ok, error_type=error_type, desired=desired,
                                prev_state=ws_at_claim["state"],
                                prev_desired=op["prev_desired"], observed_running=ok,
                                superseded=superseded, ran_as=ws_at_claim["desired"])
    return decide


def test_a_request_made_while_a_run_ends_is_never_overwritten(open_store):
    store = open_store()
    op, _ = create(store, "alice", "one")
    [claimed] = store.claim_next("r1", 30, 1)
    ws_at_claim = store.workspace("alice", "one")
    # Another API thread: a stop arrives after the run read the workspace.
    stop, _ = open_store().request_operation("alice", "one", "stop", queue=True)
    settled = store.finish_operation(claimed, "succeeded",
                                     _runner_decide(claimed, ws_at_claim, True, None),
                                     lease_owner="r1")
    assert settled == lifecycle.Settled("running", "stopped")
    ws = store.workspace("alice", "one")
    assert (ws["state"], ws["desired"]) == ("running", "stopped")
    assert [o["id"] for o in store.claim_next("r1", 30, 1)] == [stop["id"]]


def test_requests_between_a_runs_read_and_its_end_are_kept(open_store):
    """A Hypothesis model: requests arrive at any point between a run's claim
    (where it reads the workspace) and its end; while any is queued, the
    workspace wants what the last one asked for, and delete stays final."""
    from hypothesis import settings
    from hypothesis import strategies as st
    from hypothesis.stateful import (
        RuleBasedStateMachine,
        invariant,
        precondition,
        rule,
        run_state_machine_as_test,
    )

    store = open_store()
    names = iter(range(10**6))

    class Model(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.name = f"m{next(names)}"
            create(store, "alice", self.name)
            self.desired, self.gone, self.running = "running", False, None

        @precondition(lambda self: not self.gone)
        @rule(kind=st.sampled_from(["start", "stop", "update", "delete"]))
        def request(self, kind: str) -> None:
            try:
                store.request_operation("alice", self.name, kind, queue=True)
            except lifecycle.Refused:
                assert self.desired == "deleted" and kind != "delete"
                return
            self.desired = lifecycle.admit(kind, self.desired)

        @precondition(lambda self: not self.gone and self.running is None)
        @rule()
        def claim(self) -> None:
            for op in store.claim_next("r1", 30, 10):
                if op["workspace"] == self.name:
                    self.running = (op, store.workspace("alice", self.name))

        @precondition(lambda self: self.running is not None)
        @rule(result=st.sampled_from(["ok", "failed", "refused", "interrupted"]))
        def end(self, result: str) -> None:
            op, ws_at_claim = self.running
            self.running = None
            error = {"ok": None, "failed": "InitFailed", "refused": "storage-at-risk",
                     "interrupted": lifecycle.INTERRUPTED}[result]
            settled = store.finish_operation(
                op, "succeeded" if result == "ok" else "failed",
                _runner_decide(op, ws_at_claim, result == "ok", error), lease_owner="r1")
            if settled.state is None:
                self.gone = True
            elif result == "refused" and not store.db.execute(
                    "SELECT 1 FROM operations WHERE owner=? AND workspace=? AND"
                    " status='queued' AND seq>?", ("alice", self.name, op["seq"])).fetchone():
                self.desired = settled.desired  # a refusal with nothing behind it reverts

        @precondition(lambda self: self.gone)
        @rule()
        def nothing_comes_back(self) -> None:
            assert store.workspace("alice", self.name) is None

        def teardown(self) -> None:  # the next example claims from an empty queue
            with store.tx() as db:
                db.execute("DELETE FROM operations WHERE workspace=?", (self.name,))
                db.execute("DELETE FROM workspaces WHERE name=?", (self.name,))

        @invariant()
        def the_last_request_stands(self) -> None:
            ws = store.workspace("alice", self.name)
            if self.gone:
                assert ws is None
                return
            assert ws["desired"] == self.desired

    run_state_machine_as_test(Model, settings=settings(max_examples=40, stateful_step_count=25,
                                                       deadline=None))


def test_threads_that_share_hold_no_connection_of_their_own(tmp_path: Path):
    """Long requests' threads (a thousand event streams) borrow one of a few
    shared SQLite connections per statement or transaction: their reads and
    writes are as usual, and the process holds SHARED connections, not one
    per thread (each costs about 150 KB)."""
    from service.db import SqliteDatabase

    store = Store(tmp_path / "s.db", key_file=tmp_path / "store.key")
    op, _ = create(store, "alice", "one")
    threads, started, done = 48, threading.Barrier(48 + 1), threading.Event()
    errors: list[BaseException] = []

    def stream(i: int) -> None:
        try:
            store.db.share_this_thread()
            store.add_event(op["id"], {"writer": i})  # a transaction
            assert store.workspace("alice", "one")["name"] == "one"  # a statement
            with store.tx() as db:  # a statement inside a transaction sees its writes
                db.execute("UPDATE workspaces SET last_error=? WHERE name='one'", (f"w{i}",))
                assert store.workspace("alice", "one")["last_error"] == f"w{i}"
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        started.wait()
        done.wait()

    running = [threading.Thread(target=stream, args=(i,)) for i in range(threads)]
    for t in running:
        t.start()
    started.wait()
    try:
        assert errors == []
        db_file = (tmp_path / "s.db").resolve()
        fds = [p for p in Path("/proc/self/fd").iterdir() if p.resolve() == db_file]
        # this thread's own connection, and the shared ones
        assert len(fds) <= 1 + SqliteDatabase.SHARED, len(fds)
        assert sorted(e["writer"] for _, e in store.events(op["id"])) == list(range(threads))
    finally:
        done.set()
        for t in running:
            t.join()
        store.close()
