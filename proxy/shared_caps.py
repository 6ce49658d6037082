"""Session caps across proxy replicas (SPEC §5: per-user session limits).

With one proxy the caps are counters in memory (:class:`proxy.server.SessionLimiter`).
Several proxies share the service's database (SPEC §9) and, through it, the
open sessions: one row per session, with the proxy renewing ``seen`` while the
session lasts. A proxy killed with its sessions open leaves rows that stop
counting once they are ``STALE_AFTER`` seconds old.

Taking a slot is one transaction under the user's and the workspace's locks
(PostgreSQL advisory locks; SQLite's single writer), so two proxies admitting
at the same instant cannot both take the last slot.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from proxy.tickets import TicketClaims
from service.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS proxy_sessions (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  username TEXT NOT NULL,
  workspace TEXT NOT NULL,
  seen REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS proxy_sessions_user ON proxy_sessions(kind, username);
CREATE INDEX IF NOT EXISTS proxy_sessions_workspace ON proxy_sessions(kind, workspace);
"""
RENEW_EVERY = 10.0  # seconds between renewals of this proxy's open sessions
STALE_AFTER = 3 * RENEW_EVERY  # a row not renewed for this long no longer counts


class SharedSessionLimiter:
    """Open sessions of one kind ("exec" or "forward") in a shared table.
    Blocking calls: the proxy runs them off its event loop."""

    def __init__(self, db: Database, kind: str, per_user: int, per_workspace: int,
                 what: str) -> None:
        db.ensure_schema(SCHEMA, [])
        self.db, self.kind, self.what = db, kind, what
        self.per_user, self.per_workspace = per_user, per_workspace

    def take(self, claims: TicketClaims, slot: str, now: float | None = None) -> str | None:
        """Record session ``slot`` as open, or say which cap refuses it."""
        now = time.time() if now is None else now
        live = now - STALE_AFTER
        with self.db.tx() as tx:
            tx.lock("proxy-sessions", self.kind, "user", claims.user)
            tx.lock("proxy-sessions", self.kind, "workspace", claims.workspace)
            users = tx.execute(
                "SELECT COUNT(*) FROM proxy_sessions WHERE kind=? AND username=? AND seen>?",
                (self.kind, claims.user, live)).fetchone()[0]
            if users >= self.per_user:
                return f"too many {self.what} for user (limit {self.per_user})"
            spaces = tx.execute(
                "SELECT COUNT(*) FROM proxy_sessions WHERE kind=? AND workspace=? AND seen>?",
                (self.kind, claims.workspace, live)).fetchone()[0]
            if spaces >= self.per_workspace:
                return f"too many {self.what} for workspace (limit {self.per_workspace})"
            tx.execute("DELETE FROM proxy_sessions WHERE kind=? AND username=? AND seen<=?",
                       (self.kind, claims.user, live))
            tx.execute("INSERT INTO proxy_sessions(id, kind, username, workspace, seen)"
                       " VALUES (?, ?, ?, ?, ?)",
                       (slot, self.kind, claims.user, claims.workspace, now))
        return None

    def give_back(self, slot: str) -> None:
        self.db.execute("DELETE FROM proxy_sessions WHERE id=?", (slot,))

    def renew(self, slots: Iterable[str], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.db.tx() as tx:
            for slot in slots:
                tx.execute("UPDATE proxy_sessions SET seen=? WHERE id=?", (now, slot))
