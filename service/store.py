"""The store of users, tokens, workspaces, operations and their events: SQLite
(WAL) embedded, or PostgreSQL shared by replicas, through service.db.

The store is the authority for "what was asked" (the whole spec, its secrets
encrypted at rest, so any operation can rebuild the stack config after a
crash) and for the per-workspace order of operations; Pulumi's state and the
runtime are the authority for "what exists". Writes are short transactions,
and every transition that must not race (create + its operation + quota,
claim, cancel) is one conditional statement or one transaction; one that
reads then writes what it read takes the owner's lock (tx.lock), which on
SQLite is the database's one write lock anyway.
"""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet

from components.spec import SPEC_VERSION
from service import idempotency, lifecycle, listing_version, op_counts, tokens
from service.db import Database, Tx, connect, is_postgres_url
from service.notify import WORK, announce
from service.secret_files import read_or_create

if TYPE_CHECKING:
    from service.config import ServiceConfig

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
  name TEXT PRIMARY KEY,
  admin INTEGER NOT NULL DEFAULT 0,
  created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (  -- service.tokens
  hash TEXT PRIMARY KEY,
  "user" TEXT NOT NULL REFERENCES users(name),  -- quoted: a keyword in PostgreSQL
  created REAL NOT NULL,
  id TEXT,                       -- what lists and revocation name it by
  name TEXT,                     -- the owner's note
  expires REAL,                  -- unix s; NULL: never
  bootstrap INTEGER NOT NULL DEFAULT 0  -- an admin token the service made
);
CREATE TABLE IF NOT EXISTS workspaces (
  owner TEXT NOT NULL,
  name TEXT NOT NULL,
  stack TEXT NOT NULL UNIQUE,
  runtime TEXT NOT NULL,
  spec TEXT NOT NULL,            -- public spec JSON (no secrets)
  desired TEXT NOT NULL,         -- running | stopped | deleted
  state TEXT NOT NULL,           -- provisioning | running | ... | failed
  last_error TEXT,
  outputs TEXT NOT NULL DEFAULT '{}',
  last_activity REAL,            -- last terminal activity the exec proxy reported
  secrets TEXT,                  -- the spec's secret values, Fernet-encrypted
  runtime_config TEXT,           -- the runtime it was created on (JSON)
  needs_recovery INTEGER NOT NULL DEFAULT 0,
  retry_at REAL,                 -- when a failed delete is tried again
  delete_attempts INTEGER NOT NULL DEFAULT 0,
  secrets_digest TEXT,           -- keyed digest of the secret config in the stack
  stack_settings TEXT,           -- Pulumi.<stack>.yaml: config (secrets encrypted) + salt
  installation TEXT,             -- the installation id it was created under ('' / NULL: legacy)
  spec_version INTEGER NOT NULL DEFAULT 0,  -- the spec rules it was stored under
  created REAL NOT NULL,
  updated REAL NOT NULL,
  PRIMARY KEY (owner, name)
);
CREATE TABLE IF NOT EXISTS operations (
  id TEXT PRIMARY KEY,
  owner TEXT NOT NULL,
  workspace TEXT NOT NULL,
  kind TEXT NOT NULL,            -- create | start | stop | update | delete | refresh
  status TEXT NOT NULL,          -- queued | running | succeeded | failed | cancelled
  seq INTEGER NOT NULL,
  created REAL NOT NULL,
  started REAL,
  ended REAL,
  timings TEXT NOT NULL DEFAULT '{}',
  error TEXT,
  error_type TEXT,
  worker_pid INTEGER,
  idempotency_key TEXT,
  spec TEXT,                     -- create/update: the spec it applies (public JSON)
  secrets TEXT,                  -- ... and its secret values, Fernet-encrypted
  patch TEXT,                    -- update: the PATCH body, Fernet-encrypted (composed at run)
  prev_state TEXT,               -- the workspace before the request
  prev_desired TEXT,
  cancel_requested REAL,
  lease_owner TEXT,              -- the replica running it (service.runner)
  lease_until REAL               -- ... until when, unless it renews (unix s)
);
CREATE INDEX IF NOT EXISTS ops_by_ws ON operations(owner, workspace, seq);
CREATE UNIQUE INDEX IF NOT EXISTS ops_idem ON operations(owner, idempotency_key)
  WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS ops_by_status ON operations(status);
CREATE TABLE IF NOT EXISTS events (
  op TEXT NOT NULL,
  seq INTEGER NOT NULL,
  at REAL NOT NULL,
  body TEXT NOT NULL,
  PRIMARY KEY (op, seq)
);
CREATE TABLE IF NOT EXISTS meta (  -- facts about the store itself (its installation id)
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
"""

ACTIVE = ("queued", "running")
# How an ending operation settles its workspace, given the desired state and
# whether later requests are queued, both read in the ending transaction.
Decide = Callable[[str, bool], lifecycle.Settled]
# Columns added after a table was first shipped: (table, column, declaration).
ADDED_COLUMNS = [
    ("operations", "error_type", "TEXT"),
    ("operations", "worker_pid", "INTEGER"),
    ("workspaces", "last_activity", "REAL"),
    # The secret part of the spec (credential, secret files), Fernet-encrypted.
    ("workspaces", "secrets", "TEXT"),
    ("workspaces", "runtime_config", "TEXT"),
    # An interrupted run may have left pending operations or unrecorded objects.
    ("workspaces", "needs_recovery", "INTEGER NOT NULL DEFAULT 0"),
    ("workspaces", "retry_at", "REAL"),
    ("workspaces", "delete_attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("workspaces", "secrets_digest", "TEXT"),
    # The stack's settings file, kept here so any replica can run the stack.
    ("workspaces", "stack_settings", "TEXT"),
    # create/update: the spec this operation applies (public JSON + encrypted secrets).
    ("operations", "spec", "TEXT"),
    ("operations", "secrets", "TEXT"),
    ("operations", "prev_state", "TEXT"),
    ("operations", "prev_desired", "TEXT"),
    ("operations", "cancel_requested", "REAL"),
    # N replicas: who runs a running operation, and until when (leases).
    ("operations", "lease_owner", "TEXT"),
    ("operations", "lease_until", "REAL"),
    # The installation id the workspace was created under, for good: its runtime
    # objects' names and labels derive from it. NULL (made before ids existed,
    # or by an older replica during a rolling upgrade) reads as "".
    ("workspaces", "installation", "TEXT"),
    # The spec rules a row was stored under (components.spec.SPEC_VERSION); rows
    # from before versions existed read as 0. Stored rows are never validated again.
    ("workspaces", "spec_version", "INTEGER NOT NULL DEFAULT 0"),
    # update: the PATCH body itself, applied to the spec the operation before it
    # produced when the update starts (queued PATCHes compose).
    ("operations", "patch", "TEXT"),
    # Tokens listed, named, expiring and revoked by id (service.tokens).
    ("tokens", "id", "TEXT"),
    ("tokens", "name", "TEXT"),
    ("tokens", "expires", "REAL"),
    ("tokens", "bootstrap", "INTEGER NOT NULL DEFAULT 0"),
    # A keyed digest of the request body an Idempotency-Key came with (service.idempotency).
    ("operations", "request_digest", "TEXT"),
]
META_INSTALLATION = "installation"

# Workspaces with a queued operation and none running, oldest request first
# (service.store.Store.claim_next). PostgreSQL locks the rows it returns and
# skips those another claimer holds.
_CLAIMABLE = (
    "SELECT w.owner, w.name FROM workspaces w WHERE EXISTS (SELECT 1 FROM operations o"
    " WHERE o.owner=w.owner AND o.workspace=w.name AND o.status='queued') AND NOT EXISTS"
    " (SELECT 1 FROM operations o WHERE o.owner=w.owner AND o.workspace=w.name AND"
    " o.status='running') ORDER BY (SELECT MIN(o.created) FROM operations o WHERE"
    " o.owner=w.owner AND o.workspace=w.name AND o.status='queued') LIMIT ?")
CLAIMABLE = {"sqlite": _CLAIMABLE, "postgresql": _CLAIMABLE + " FOR UPDATE OF w SKIP LOCKED"}


# The newest operation of each workspace; {} is empty or a constant WHERE clause.
_NEWEST_OPS = ("SELECT o.* FROM operations o JOIN (SELECT owner, workspace, MAX(seq) AS seq"
               " FROM operations {} GROUP BY owner, workspace) newest"
               " ON o.owner = newest.owner AND o.workspace = newest.workspace"
               " AND o.seq = newest.seq")


@dataclass(frozen=True)
class User:
    name: str
    admin: bool


class Conflict(Exception):
    """A uniqueness rule was broken (workspace exists, operation in flight)."""


class QuotaExceeded(Exception):
    """The owner already has as many workspaces as the quota allows."""


class DatabaseURL(str):
    """A PostgreSQL store's `path`: its URL. Callers that key on a store's
    path (the runner's instance id, the worker's Job) treat both alike."""

    def resolve(self) -> DatabaseURL:
        return self


class Store:
    def __init__(self, target: Path | str, key_file: Path | None = None):
        """`target`: a postgresql:// URL, or the SQLite file's path."""
        self.path: Path | DatabaseURL = (DatabaseURL(target) if is_postgres_url(target)
                                         else Path(target))
        # The key of the encrypted columns, read when first needed (a worker
        # never needs it): from the shared secrets dir (open_store), else
        # beside the SQLite file, as an embedded install has it.
        self.key_file = key_file or (None if isinstance(self.path, DatabaseURL)
                                     else self.path.parent / "store.key")
        self.db: Database = connect(self.path)
        self.db.ensure_schema(SCHEMA, ADDED_COLUMNS)
        tokens.migrate(self.db)
        op_counts.install(self.db)
        listing_version.install(self.db)
        self.installation_id: str = self._installation_id()
        if key_file is not None:
            self._box  # noqa: B018 - the service: a missing, unmakeable key fails at start

    def tx(self) -> contextlib.AbstractContextManager[Tx]:
        return self.db.tx()

    def _installation_id(self) -> str:
        """This installation's id, generated once and kept in the store, so every
        replica sharing it agrees (the first to arrive writes it, under a lock).
        A store that already holds workspaces when the id is first asked for
        was made by an older version: it gets "" (today's names and labels), so
        its workspaces see no change at all; see components/base.py."""
        get = "SELECT value FROM meta WHERE key=?"
        row = self.db.execute(get, (META_INSTALLATION,)).fetchone()
        if row is not None:
            return str(row[0])
        with self.tx() as db:
            db.lock("meta", META_INSTALLATION)
            row = db.execute(get, (META_INSTALLATION,)).fetchone()
            if row is not None:
                return str(row[0])
            legacy = db.execute("SELECT 1 FROM workspaces LIMIT 1").fetchone() is not None
            value = "" if legacy else secrets.token_hex(4)
            db.execute("INSERT INTO meta(key, value) VALUES (?,?)", (META_INSTALLATION, value))
        return value

    closed = False  # set by close(): background threads of the service end with it

    def close(self) -> None:
        self.closed = True
        self.db.close()

    @functools.cached_property
    def _box(self) -> Fernet:
        if self.key_file is None:
            raise RuntimeError("store.key: this store was opened without its key file")
        return Fernet(read_or_create(self.key_file, Fernet.generate_key))

    # --- users and tokens ---------------------------------------------------
    def add_user(self, name: str, admin: bool = False, token: str | None = None) -> str:
        """Create (or keep) a user and give it a new token; returns the token."""
        return tokens.mint(self, name, admin=admin, value=token)[0]

    def user_for_token(self, token: str) -> User | None:
        """The user of a live token: None for an unknown, revoked or expired one."""
        row = self.db.execute(
            'SELECT u.name, u.admin FROM tokens t JOIN users u ON u.name = t."user" '
            "WHERE t.hash = ? AND (t.expires IS NULL OR t.expires > ?)",
            (tokens.hash_token(token), time.time())).fetchone()
        return User(row["name"], bool(row["admin"])) if row else None

    # --- workspaces ---------------------------------------------------------
    def create_workspace(self, owner: str, name: str, stack: str, runtime: dict[str, Any],
                         spec: dict[str, Any], secrets: dict[str, str], *, quota: int,
                         idempotency_key: str | None = None,
                         request_digest: str | None = None) -> tuple[dict[str, Any], bool]:
        """Insert a workspace and its create operation in one transaction, with
        the quota checked inside it (concurrent creates cannot overrun it).
        Returns (operation, created); a repeated idempotency key returns the
        operation it first created (KeyReused if the body differs)."""
        now = time.time()
        with self.tx() as db:
            db.lock("owner", owner)
            if idempotency_key and (row := _by_key(db, owner, idempotency_key, request_digest)):
                return _op(row), False
            if db.execute("SELECT 1 FROM workspaces WHERE owner=? AND name=?",
                          (owner, name)).fetchone():
                raise Conflict(f"workspace {name!r} already exists")
            count = db.execute("SELECT COUNT(*) FROM workspaces WHERE owner=?",
                               (owner,)).fetchone()[0]
            if count >= quota:
                raise QuotaExceeded(f"at most {quota} workspaces per user")
            db.execute(
                "INSERT INTO workspaces(owner, name, stack, runtime, spec, secrets, runtime_config,"
                " installation, spec_version, desired, state, created, updated)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (owner, name, stack, runtime["name"], json.dumps(spec), self._seal(secrets),
                 json.dumps(runtime), self.installation_id, SPEC_VERSION, "running",
                 "provisioning", now, now))
            op = _insert_op(db, owner, name, "create", idempotency_key,
                            request_digest=request_digest, prev_state="provisioning",
                            prev_desired="running",
                            spec=json.dumps(spec), secrets=self._seal(secrets))
            announce(db, self.db.dialect, WORK)  # every replica's dispatcher looks now
        return op, True

    def request_operation(self, owner: str, name: str, kind: str, *, queue: bool,
                          idempotency_key: str | None = None,
                          spec: dict[str, Any] | None = None,
                          secrets: dict[str, str] | None = None,
                          patch: dict[str, Any] | None = None,
                          request_digest: str | None = None) -> tuple[dict[str, Any], bool]:
        """Persist a queued operation and the desired state it asks for, in one
        transaction. Without `queue`, refuses (Conflict) while another operation
        on the workspace is queued or running; a workspace being deleted refuses
        everything but delete (lifecycle.Refused). Returns (operation, created)."""
        with self.tx() as db:
            db.lock("owner", owner)
            if idempotency_key and (row := _by_key(db, owner, idempotency_key, request_digest)):
                return _op(row), False
            ws = db.execute("SELECT state, desired FROM workspaces WHERE owner=? AND name=?",
                            (owner, name)).fetchone()
            if ws is None:
                raise KeyError(name)
            desired = lifecycle.admit(kind, ws["desired"])
            # The service's own recovery runs (refresh) never make a user wait
            # with a 409: the request queues behind them.
            active = db.execute(
                "SELECT id FROM operations WHERE owner=? AND workspace=? AND status IN "
                "('queued','running') AND kind != 'refresh'", (owner, name)).fetchone()
            if active and not queue:
                raise Conflict(f"operation {active['id']} is still in progress")
            op = _insert_op(db, owner, name, kind, idempotency_key,
                            request_digest=request_digest, prev_state=ws["state"],
                            prev_desired=ws["desired"],
                            spec=json.dumps(spec) if spec is not None else None,
                            secrets=self._seal(secrets) if secrets is not None else None,
                            patch=self._box.encrypt(json.dumps(patch).encode()).decode()
                            if patch is not None else None)
            db.execute("UPDATE workspaces SET desired=?, updated=? WHERE owner=? AND name=?",
                       (desired, time.time(), owner, name))
            announce(db, self.db.dialect, WORK)
        return op, True

    def workspace_secrets(self, owner: str, name: str) -> dict[str, str]:
        row = self.db.execute("SELECT secrets FROM workspaces WHERE owner=? AND name=?",
                              (owner, name)).fetchone()
        return self._open(row["secrets"]) if row else {}

    def operation_secrets(self, op: dict[str, Any]) -> dict[str, str] | None:
        row = self.db.execute("SELECT secrets FROM operations WHERE id=?", (op["id"],)).fetchone()
        return self._open(row["secrets"]) if row and row["secrets"] else None

    def projected_spec(self, owner: str, name: str) -> tuple[dict[str, Any], dict[str, str]]:
        """The spec the workspace will have once its queued and running creates
        and updates have run (public part, secrets): what a new PATCH is
        validated against. (Its run applies the PATCH to the spec it finds then.)"""
        row = self.db.execute(
            "SELECT spec, secrets FROM operations WHERE owner=? AND workspace=? AND status IN"
            " ('queued','running') AND kind IN ('create','update') AND spec IS NOT NULL"
            " ORDER BY seq DESC LIMIT 1", (owner, name)).fetchone()
        if row is None:
            row = self.db.execute("SELECT spec, secrets FROM workspaces WHERE owner=? AND"
                                  " name=?", (owner, name)).fetchone()
        if row is None:
            raise KeyError(name)
        return json.loads(row["spec"]), self._open(row["secrets"])

    def operation_patch(self, op: dict[str, Any]) -> dict[str, Any] | None:
        row = self.db.execute("SELECT patch FROM operations WHERE id=?", (op["id"],)).fetchone()
        return json.loads(self._box.decrypt(row["patch"].encode())) \
            if row and row["patch"] else None

    def set_operation_spec(self, op_id: str, spec: dict[str, Any],
                           secrets: dict[str, str]) -> None:
        """Record the whole spec an update runs with, once its PATCH is applied
        to the spec it found: the operation's end makes exactly this the
        workspace's (finish_operation's `apply_spec`)."""
        with self.tx() as db:
            db.execute("UPDATE operations SET spec=?, secrets=? WHERE id=?",
                       (json.dumps(spec), self._seal(secrets), op_id))

    def request_digest(self, body: Any) -> str:
        """A digest of a request body, keyed with the store's key (service.idempotency)."""
        self._box  # noqa: B018 - the same key, and the same refusal without it
        return idempotency.body_digest(read_or_create(self.key_file, Fernet.generate_key), body)

    def seal_json(self, value: Any) -> str:
        """`value` as JSON, Fernet-encrypted with the store's key."""
        return self._box.encrypt(json.dumps(value, sort_keys=True).encode()).decode()

    def open_json(self, sealed: str) -> Any:
        return json.loads(self._box.decrypt(sealed.encode()))

    def _seal(self, secrets: dict[str, str]) -> str:
        return self.seal_json(secrets)

    def _open(self, token: str | None) -> dict[str, str]:
        return self.open_json(token) if token else {}

    def workspace(self, owner: str, name: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM workspaces WHERE owner=? AND name=?",
                              (owner, name)).fetchone()
        return _ws(row) if row else None

    def workspaces(self, owner: str | None = None) -> list[dict[str, Any]]:
        if owner is None:
            rows = self.db.execute("SELECT * FROM workspaces ORDER BY owner, name")
        else:
            rows = self.db.execute("SELECT * FROM workspaces WHERE owner=? ORDER BY name",
                                   (owner,))
        return [_ws(r) for r in rows]

    def page_rows(self, columns: str, owner: str | None, after: tuple[str, str] | None,
                  limit: int, name: str | None = None) -> list[Any]:
        """Up to `limit` workspaces (of `owner`) after the key `after` in
        (owner, name) order (service.pagination), each with its newest
        operation: one query, whatever the size of the page or of the table.
        Each row holds the `columns` of the workspace `w` and of its operation
        `o` (NULLs without one), as stored (service.views renders them).
        With `name`: only that workspace."""
        where, params = ["1=1"], []
        if owner is not None:
            where.append("w.owner=?")
            params.append(owner)
        if name is not None:
            where.append("w.name=?")
            params.append(name)
        if after is not None:
            where.append("(w.owner > ? OR (w.owner = ? AND w.name > ?))")
            params += [after[0], after[0], after[1]]
        return self.db.execute(
            f"SELECT {columns} FROM workspaces w LEFT JOIN operations o"  # noqa: S608 - fixed parts
            " ON o.owner = w.owner AND o.workspace = w.name AND o.seq = (SELECT MAX(m.seq)"
            " FROM operations m WHERE m.owner = w.owner AND m.workspace = w.name)"
            f" WHERE {' AND '.join(where)} ORDER BY w.owner, w.name LIMIT ?",
            (*params, limit)).fetchall()

    def listing_version(self) -> int | None:
        """A number that changes with anything a workspace view shows; None
        where there is none (service.listing_version)."""
        return listing_version.read(self.db)

    def last_operations(self, owner: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        """The newest operation of every workspace (of `owner`), in one query:
        a listing must not cost one query per workspace."""
        if owner is None:
            rows = self.db.execute(_NEWEST_OPS.format(""))
        else:
            rows = self.db.execute(_NEWEST_OPS.format("WHERE owner=?"), (owner,))
        return {(r["owner"], r["workspace"]): _op(r) for r in rows}

    def count_workspaces(self, owner: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM workspaces WHERE owner=?",
                               (owner,)).fetchone()[0]

    def update_workspace(self, owner: str, name: str, **fields: Any) -> None:
        if "spec" in fields:
            fields["spec"] = json.dumps(fields["spec"])
        if "outputs" in fields:
            fields["outputs"] = json.dumps(fields["outputs"])
        fields["updated"] = time.time()
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as db:
            db.execute(f"UPDATE workspaces SET {cols} WHERE owner=? AND name=?",  # noqa: S608
                       (*fields.values(), owner, name))

    def touch_workspace(self, owner: str, name: str, at: float) -> None:
        """Record terminal activity (kept apart from `updated`, which tracks state)."""
        with self.tx() as db:
            db.execute(f"UPDATE workspaces SET last_activity={self.db.greatest}("  # noqa: S608
                       "COALESCE(last_activity, 0), ?) WHERE owner=? AND name=?",
                       (at, owner, name))

    def idle_workspaces(self, idle_for: float, now: float | None = None
                        ) -> list[tuple[str, str]]:
        """Running workspaces with no state change and no terminal activity for `idle_for` s."""
        cutoff = (now or time.time()) - idle_for
        latest = f"{self.db.greatest}(COALESCE(last_activity, 0), updated)"
        sql = ("SELECT owner, name FROM workspaces WHERE state='running' AND"  # noqa: S608
               f" desired='running' AND {latest} < ?")
        return [(r[0], r[1]) for r in self.db.execute(sql, (cutoff,))]

    def delete_workspace(self, owner: str, name: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM workspaces WHERE owner=? AND name=?", (owner, name))

    # --- operations ---------------------------------------------------------
    def operation_by_key(self, owner: str, idempotency_key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM operations WHERE owner=? AND idempotency_key=?",
                              (owner, idempotency_key)).fetchone()
        return _op(row) if row else None

    def operation(self, op_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM operations WHERE id=?", (op_id,)).fetchone()
        return _op(row) if row else None

    def last_operation(self, owner: str, workspace: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM operations WHERE owner=? AND workspace=? "
                              "ORDER BY seq DESC LIMIT 1", (owner, workspace)).fetchone()
        return _op(row) if row else None

    def running_operations(self) -> list[dict[str, Any]]:
        return [_op(r) for r in self.db.execute(
            "SELECT * FROM operations WHERE status='running'")]

    # --- leases: N runner replicas on one store (service.runner) -------------
    def claim_next(self, owner: str, lease_seconds: float, limit: int) -> list[dict[str, Any]]:
        """Claim for replica `owner`, in one transaction, up to `limit` operations:
        the oldest queued one of each workspace that has none running, oldest
        requests first; each becomes running, leased to `owner` for
        `lease_seconds`. A claimer holds the rows of the workspaces it claims
        for (PostgreSQL: FOR UPDATE SKIP LOCKED, so replicas claiming at once
        take different workspaces and never wait for each other; SQLite: BEGIN
        IMMEDIATE serialises claimers), and reads each one's queue again under
        that lock, so two replicas never start two operations of one
        workspace; a cancel of a queued operation either wins first or finds
        it running."""
        if limit <= 0 or self.db.execute(_CLAIMABLE, (1,)).fetchone() is None:
            return []  # a read first: no write transaction while nothing is claimable
        now = time.time()
        claimed = []
        with self.tx() as db:
            idle = db.execute(CLAIMABLE[self.db.dialect], (limit,)).fetchall()
            for ws in idle:
                head = db.execute(
                    "SELECT id, status FROM operations WHERE owner=? AND workspace=? AND"
                    " status IN ('queued','running') ORDER BY seq LIMIT 1",
                    (ws[0], ws[1])).fetchone()
                if head is None or head["status"] != "queued":
                    continue  # claimed by another replica since the first read
                row = db.execute(
                    "UPDATE operations SET status='running', started=?, lease_owner=?,"
                    " lease_until=? WHERE id=? AND status='queued' RETURNING *",
                    (now, owner, now + lease_seconds, head["id"])).fetchone()
                if row is not None:
                    claimed.append(_op(row))
        return claimed

    def renew_leases(self, owner: str, op_ids: list[str], lease_seconds: float) -> list[str]:
        """Extend `owner`'s leases on its running operations; returns the ids
        renewed (an id missing from the answer was taken over or has ended)."""
        if not op_ids:
            return []
        marks = ", ".join("?" * len(op_ids))
        with self.tx() as db:
            rows = db.execute(
                f"UPDATE operations SET lease_until=? WHERE id IN ({marks})"  # noqa: S608
                " AND status='running' AND lease_owner=? RETURNING id",
                (time.time() + lease_seconds, *op_ids, owner)).fetchall()
        return [r[0] for r in rows]

    def expired_operations(self, now: float | None = None) -> list[dict[str, Any]]:
        """Running operations whose lease has run out (or that never had one:
        started before leases existed)."""
        return [_op(r) for r in self.db.execute(
            "SELECT * FROM operations WHERE status='running' AND (lease_until IS NULL OR"
            " lease_until < ?) ORDER BY started", (time.time() if now is None else now,))]

    def take_over(self, op_id: str, old_owner: str | None, new_owner: str, *,
                  lease_seconds: float = 30.0, expired_only: bool = True) -> bool:
        """Move a running operation's lease from `old_owner` to `new_owner`, only
        if nobody moved or renewed it meanwhile (one conditional UPDATE: of two
        replicas taking over at once, one wins). `expired_only=False` is for an
        owner known dead on this very host (service.replica)."""
        now = time.time()
        with self.tx() as db:
            cur = db.execute(
                "UPDATE operations SET lease_owner=?, lease_until=? WHERE id=? AND"
                " status='running' AND COALESCE(lease_owner, '') = COALESCE(?, '') AND"
                " (? = 0 OR lease_until IS NULL OR lease_until < ?)",
                (new_owner, now + lease_seconds, op_id, old_owner, int(expired_only), now))
            return cur.rowcount == 1

    def cancel_queued(self, op_id: str) -> bool:
        """queued -> cancelled, only if no dispatcher claimed it first."""
        with self.tx() as db:
            cur = db.execute("UPDATE operations SET status='cancelled', ended=? WHERE id=? AND"
                             " status='queued'", (time.time(), op_id))
            return cur.rowcount == 1

    def request_cancel(self, op_id: str) -> bool:
        """Mark a running operation as asked to cancel (once)."""
        with self.tx() as db:
            cur = db.execute("UPDATE operations SET cancel_requested=? WHERE id=? AND"
                             " status='running' AND cancel_requested IS NULL",
                             (time.time(), op_id))
            announce(db, self.db.dialect, WORK)  # the replica running it interrupts it
            return cur.rowcount == 1

    def finish_operation(self, op: dict[str, Any], status: str,
                         settled: lifecycle.Settled | Decide, *, error: str | None = None,
                         error_type: str | None = None,
                         timings: dict[str, float] | None = None,
                         outputs: dict[str, Any] | None = None,
                         recovered: bool = False, secrets_digest: str | None = None,
                         keep_last_error: bool | Callable[[lifecycle.Settled], bool] = False,
                         keep_state: bool = False, apply_spec: bool = False,
                         lease_owner: str | None = None,
                         stack_settings: str | None = None) -> lifecycle.Settled | None:
        """End an operation and settle its workspace, in one transaction under
        the owner's lock: the settled state is decided there (`settled` may be a
        function of the workspace's desired state and of whether later requests
        are queued, read in that same transaction), so a request that arrives
        while a run ends is never overwritten. With `apply_spec`, the spec the
        operation ran with becomes the workspace's in the same transaction.
        With the stack settings the run left, so the secrets digest never
        describes settings the store does not hold. With `lease_owner`, only
        while that replica still holds the running operation's lease: a replica
        that lost it (taken over) changes nothing and gets None. Returns where
        the workspace settled."""
        now = time.time()
        owner, name = op["owner"], op["workspace"]
        with self.tx() as db:
            db.lock("owner", owner)  # settles against the requests made meanwhile
            cur = db.execute("UPDATE operations SET status=?, ended=?, error=?, error_type=?,"
                             " timings=?, lease_until=NULL WHERE id=? AND (CAST(? AS TEXT) IS"
                             " NULL OR (status='running' AND lease_owner=?))",
                             (status, now, error, error_type, json.dumps(timings or {}),
                              op["id"], lease_owner, lease_owner))
            if cur.rowcount == 0 and lease_owner:
                return None
            announce(db, self.db.dialect, WORK)  # the workspace's next operation may start
            if not isinstance(settled, lifecycle.Settled):
                ws = db.execute("SELECT desired FROM workspaces WHERE owner=? AND name=?",
                                (owner, name)).fetchone()
                later = db.execute("SELECT 1 FROM operations WHERE owner=? AND workspace=? AND"
                                   " status='queued' AND seq>?",
                                   (owner, name, op["seq"])).fetchone()
                settled = settled(ws["desired"] if ws else "deleted", later is not None)
            if settled.state is None:
                db.execute("DELETE FROM workspaces WHERE owner=? AND name=?", (owner, name))
                return settled
            fields: dict[str, Any] = {"desired": settled.desired, "updated": now}
            if apply_spec:
                ran = db.execute("SELECT spec, secrets FROM operations WHERE id=?",
                                 (op["id"],)).fetchone()
                if ran is not None and ran["spec"] is not None:
                    fields["spec"] = ran["spec"]
                    fields["spec_version"] = SPEC_VERSION
                    if ran["secrets"] is not None:
                        fields["secrets"] = ran["secrets"]
            if not keep_state:
                fields["state"] = settled.state
            if callable(keep_last_error):
                keep_last_error = keep_last_error(settled)
            if not keep_last_error:
                fields["last_error"] = error
            if outputs is not None:
                fields["outputs"] = json.dumps(outputs)
            if recovered:
                fields["needs_recovery"] = 0
            if stack_settings is not None:
                fields["stack_settings"] = stack_settings
            if secrets_digest:
                fields["secrets_digest"] = secrets_digest
            if error_type == lifecycle.INTERRUPTED:
                fields["needs_recovery"] = 1
            if settled.retry_delete:
                attempts = db.execute("SELECT delete_attempts FROM workspaces WHERE owner=? AND"
                                      " name=?", (owner, name)).fetchone()
                n = (attempts[0] if attempts else 0) + 1
                fields["delete_attempts"] = n
                fields["retry_at"] = now + lifecycle.delete_retry_delay(n)
            cols = ", ".join(f"{k}=?" for k in fields)
            db.execute(f"UPDATE workspaces SET {cols} WHERE owner=? AND name=?",  # noqa: S608
                       (*fields.values(), owner, name))
        return settled

    def due_delete_retries(self, now: float | None = None) -> list[tuple[str, str]]:
        """Workspaces whose delete failed and is due again, with nothing in flight."""
        return [(r[0], r[1]) for r in self.db.execute(
            "SELECT w.owner, w.name FROM workspaces w WHERE w.desired='deleted' AND"
            " w.retry_at IS NOT NULL AND w.retry_at <= ? AND NOT EXISTS (SELECT 1 FROM"
            " operations o WHERE o.owner=w.owner AND o.workspace=w.name AND o.status IN"
            " ('queued','running'))", (now or time.time(),))]

    def dispatch_deadlines(self, idle_for: float | None) -> tuple[float | None, float | None]:
        """When (unix s) the next delete retry falls due, and when the next
        running workspace becomes idle for `idle_for` s (None: no such one, or
        no idle stop): the dispatcher sleeps until then, not on a fixed tick."""
        latest = f"{self.db.greatest}(COALESCE(last_activity, 0), updated)"
        row = self.db.execute(
            "SELECT (SELECT MIN(retry_at) FROM workspaces WHERE desired='deleted'),"  # noqa: S608
            f" (SELECT MIN({latest}) FROM workspaces WHERE state='running'"
            " AND desired='running')").fetchone()
        idle = row[1] + idle_for if idle_for and row[1] is not None else None
        return row[0], idle

    def update_operation(self, op_id: str, **fields: Any) -> None:
        if "timings" in fields:
            fields["timings"] = json.dumps(fields["timings"])
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as db:
            db.execute(f"UPDATE operations SET {cols} WHERE id=?",  # noqa: S608
                       (*fields.values(), op_id))

    def add_event(self, op_id: str, body: dict[str, Any]) -> None:
        with self.tx() as db:
            db.lock("events", op_id)  # the worker and the runner both write events
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE op=?",
                             (op_id,)).fetchone()[0]
            db.execute("INSERT INTO events(op, seq, at, body) VALUES (?,?,?,?)",
                       (op_id, seq, time.time(), json.dumps(body)))
            announce(db, self.db.dialect, op_id)  # its SSE streams wake (service.notify)

    def events(self, op_id: str, after: int = 0) -> list[tuple[int, dict[str, Any]]]:
        """(seq, event) pairs; each event carries `at`, when it was recorded (unix s)."""
        return [(r["seq"], {**json.loads(r["body"]), "at": r["at"]}) for r in self.db.execute(
            "SELECT seq, at, body FROM events WHERE op=? AND seq>? ORDER BY seq", (op_id, after))]


def open_store(cfg: ServiceConfig) -> Store:
    """The store a service configuration names, with its key from secrets_dir."""
    return Store(cfg.database_url or cfg.store_path, key_file=cfg.store_key_file)


def _by_key(db: Tx, owner: str, key: str, digest: str | None = None) -> Any:
    row = db.execute("SELECT * FROM operations WHERE owner=? AND idempotency_key=?",
                     (owner, key)).fetchone()
    if row is not None:
        idempotency.check(row["request_digest"], digest)
    return row


def _insert_op(db: Tx, owner: str, workspace: str, kind: str,
               idempotency_key: str | None, **fields: Any) -> dict[str, Any]:
    seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM operations WHERE owner=? AND"
                     " workspace=?", (owner, workspace)).fetchone()[0]
    row = {"id": uuid.uuid4().hex, "owner": owner, "workspace": workspace, "kind": kind,
           "status": "queued", "seq": seq, "created": time.time(),
           "idempotency_key": idempotency_key, **fields}
    cols = ", ".join(row)
    db.execute(f"INSERT INTO operations({cols}) VALUES ({', '.join('?' * len(row))})",  # noqa: S608
               tuple(row.values()))
    return _op(db.execute("SELECT * FROM operations WHERE id=?", (row["id"],)).fetchone())


def _ws(row: Any) -> dict[str, Any]:
    out = dict(row)
    out.pop("secrets", None)  # only workspace_secrets() hands them out, decrypted
    out["spec"] = json.loads(out["spec"])
    out["runtime_config"] = json.loads(out["runtime_config"] or "null")
    out["outputs"] = json.loads(out["outputs"])
    out["installation"] = out.get("installation") or ""
    return out


def _op(row: Any) -> dict[str, Any]:
    out = dict(row)
    out.pop("secrets", None)
    out["timings"] = json.loads(out["timings"])
    return out
