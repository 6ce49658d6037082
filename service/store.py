"""SQLite store (WAL) for users, tokens, workspaces, operations and their events.

The store is the authority for "what was asked" and for the per-workspace
order of operations; Pulumi's state is the authority for "what exists".
Each thread gets its own connection; writes are short transactions.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
  name TEXT PRIMARY KEY,
  admin INTEGER NOT NULL DEFAULT 0,
  created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
  hash TEXT PRIMARY KEY,
  user TEXT NOT NULL REFERENCES users(name),
  created REAL NOT NULL
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
  idempotency_key TEXT
);
CREATE INDEX IF NOT EXISTS ops_by_ws ON operations(owner, workspace, seq);
CREATE UNIQUE INDEX IF NOT EXISTS ops_idem ON operations(owner, idempotency_key)
  WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
  op TEXT NOT NULL,
  seq INTEGER NOT NULL,
  at REAL NOT NULL,
  body TEXT NOT NULL,
  PRIMARY KEY (op, seq)
);
"""

ACTIVE = ("queued", "running")
# Columns added after a table was first shipped: (table, column, declaration).
ADDED_COLUMNS = [
    ("operations", "error_type", "TEXT"),
    ("operations", "worker_pid", "INTEGER"),
    ("workspaces", "last_activity", "REAL"),
]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class User:
    name: str
    admin: bool


class Conflict(Exception):
    """A uniqueness rule was broken (workspace exists, operation in flight)."""


class Store:
    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db.executescript(SCHEMA)  # executescript manages its own transaction
        for table, column, decl in ADDED_COLUMNS:
            have = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # --- users and tokens ---------------------------------------------------
    def add_user(self, name: str, admin: bool = False, token: str | None = None) -> str:
        """Create (or keep) a user and give it a new token; returns the token."""
        token = token or f"ssp_{secrets.token_urlsafe(32)}"
        with self.tx() as db:
            db.execute("INSERT INTO users(name, admin, created) VALUES (?,?,?) "
                       "ON CONFLICT(name) DO UPDATE SET admin=excluded.admin",
                       (name, int(admin), time.time()))
            db.execute("INSERT OR IGNORE INTO tokens(hash, user, created) VALUES (?,?,?)",
                       (hash_token(token), name, time.time()))
        return token

    def user_for_token(self, token: str) -> User | None:
        row = self.db.execute(
            "SELECT u.name, u.admin FROM tokens t JOIN users u ON u.name = t.user "
            "WHERE t.hash = ?", (hash_token(token),)).fetchone()
        return User(row["name"], bool(row["admin"])) if row else None

    # --- workspaces ---------------------------------------------------------
    def insert_workspace(self, owner: str, name: str, stack: str, runtime: str,
                         spec: dict[str, Any]) -> None:
        now = time.time()
        try:
            with self.tx() as db:
                db.execute(
                    "INSERT INTO workspaces(owner, name, stack, runtime, spec, desired, state,"
                    " created, updated) VALUES (?,?,?,?,?,?,?,?,?)",
                    (owner, name, stack, runtime, json.dumps(spec), "running", "provisioning",
                     now, now))
        except sqlite3.IntegrityError as e:
            raise Conflict(f"workspace {name!r} already exists") from e

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
            db.execute("UPDATE workspaces SET last_activity=MAX(COALESCE(last_activity, 0), ?)"
                       " WHERE owner=? AND name=?", (at, owner, name))

    def idle_workspaces(self, idle_for: float, now: float | None = None
                        ) -> list[tuple[str, str]]:
        """Running workspaces with no state change and no terminal activity for `idle_for` s."""
        cutoff = (now or time.time()) - idle_for
        return [(r[0], r[1]) for r in self.db.execute(
            "SELECT owner, name FROM workspaces WHERE state='running' AND desired='running'"
            " AND MAX(COALESCE(last_activity, 0), updated) < ?", (cutoff,))]

    def delete_workspace(self, owner: str, name: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM workspaces WHERE owner=? AND name=?", (owner, name))

    # --- operations ---------------------------------------------------------
    def add_operation(self, owner: str, workspace: str, kind: str, *, queue: bool,
                      idempotency_key: str | None = None) -> tuple[dict[str, Any], bool]:
        """Persist a queued operation. Returns (operation, created).

        Without `queue`, refuses (Conflict) while another operation on the
        workspace is queued or running. A repeated idempotency key returns the
        operation it first created.
        """
        with self.tx() as db:
            if idempotency_key:
                row = db.execute("SELECT * FROM operations WHERE owner=? AND "
                                 "idempotency_key=?", (owner, idempotency_key)).fetchone()
                if row:
                    return _op(row), False
            active = db.execute(
                "SELECT id FROM operations WHERE owner=? AND workspace=? AND status IN "
                "('queued','running')", (owner, workspace)).fetchone()
            if active and not queue:
                raise Conflict(f"operation {active['id']} is still in progress")
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM operations WHERE owner=? "
                             "AND workspace=?", (owner, workspace)).fetchone()[0]
            op_id = uuid.uuid4().hex
            db.execute(
                "INSERT INTO operations(id, owner, workspace, kind, status, seq, created,"
                " idempotency_key) VALUES (?,?,?,?,?,?,?,?)",
                (op_id, owner, workspace, kind, "queued", seq, time.time(), idempotency_key))
            row = db.execute("SELECT * FROM operations WHERE id=?", (op_id,)).fetchone()
        return _op(row), True

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

    def next_queued(self, owner: str, workspace: str) -> dict[str, Any] | None:
        """The oldest queued operation of a workspace, if none is running."""
        rows = self.db.execute(
            "SELECT * FROM operations WHERE owner=? AND workspace=? AND status IN "
            "('queued','running') ORDER BY seq", (owner, workspace)).fetchall()
        if not rows or rows[0]["status"] == "running":
            return None
        return _op(rows[0])

    def queued_workspaces(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self.db.execute(
            "SELECT DISTINCT owner, workspace FROM operations WHERE status='queued'")]

    def running_operations(self) -> list[dict[str, Any]]:
        return [_op(r) for r in self.db.execute(
            "SELECT * FROM operations WHERE status='running'")]

    def update_operation(self, op_id: str, **fields: Any) -> None:
        if "timings" in fields:
            fields["timings"] = json.dumps(fields["timings"])
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as db:
            db.execute(f"UPDATE operations SET {cols} WHERE id=?",  # noqa: S608
                       (*fields.values(), op_id))

    def add_event(self, op_id: str, body: dict[str, Any]) -> None:
        with self.tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE op=?",
                             (op_id,)).fetchone()[0]
            db.execute("INSERT INTO events(op, seq, at, body) VALUES (?,?,?,?)",
                       (op_id, seq, time.time(), json.dumps(body)))

    def events(self, op_id: str, after: int = 0) -> list[tuple[int, dict[str, Any]]]:
        return [(r["seq"], json.loads(r["body"])) for r in self.db.execute(
            "SELECT seq, body FROM events WHERE op=? AND seq>? ORDER BY seq", (op_id, after))]


def _ws(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["spec"] = json.loads(out["spec"])
    out["outputs"] = json.loads(out["outputs"])
    return out


def _op(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["timings"] = json.loads(out["timings"])
    return out
