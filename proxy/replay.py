"""Single use of tickets across proxy replicas: the ids of redeemed tickets in
the database the service uses (SPEC §9), one row each until the ticket expires.

Redeeming is one INSERT of the ticket id, which the primary key lets succeed
once across all replicas (insert-or-fail); a replayed ticket fails it, on
whichever proxy it is replayed. The embedded single proxy keeps the in-memory
:class:`proxy.tickets.ReplayGuard` and needs no database.

``database_url``: ``postgresql://...`` (psycopg 3), else an SQLite file
(``sqlite:///path`` or a plain path: the service's stackspace.db).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

from proxy.tickets import TicketClaims, TicketError

TABLE = ("CREATE TABLE IF NOT EXISTS consumed_tickets (id TEXT PRIMARY KEY,"
         " expires_at DOUBLE PRECISION NOT NULL)")
PURGE_EVERY = 60.0  # seconds between deletions of expired rows (per proxy)


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


class SharedReplayGuard:
    """Consumed ticket ids in a shared table. Blocking calls: the proxy runs
    them off its event loop (asyncio.to_thread); each thread has its own
    connection."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self._local = threading.local()
        self._next_purge = 0.0
        with self._tx() as db:
            if is_postgres(self.url):  # two proxies starting at once both create it
                db.execute("SELECT pg_advisory_xact_lock(hashtext('consumed_tickets'))")
            db.execute(TABLE)

    def _connect(self) -> Any:
        if is_postgres(self.url):
            import psycopg  # only deployments with PostgreSQL need it loaded

            return psycopg.connect(self.url, autocommit=False)
        path = self.url.removeprefix("sqlite://") if self.url.startswith("sqlite://") \
            else self.url
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def _tx(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return _Transaction(conn, sqlite=not is_postgres(self.url))

    def consume(self, claims: TicketClaims, now: float | None = None) -> None:
        """Record the ticket as used, or raise TicketError if any proxy did already."""
        now = time.time() if now is None else now
        mark = "%s" if is_postgres(self.url) else "?"
        with self._tx() as db:
            if now >= self._next_purge:
                self._next_purge = now + PURGE_EVERY
                db.execute(f"DELETE FROM consumed_tickets WHERE expires_at <= {mark}",  # noqa: S608
                           (now,))
            cur = db.execute(f"INSERT INTO consumed_tickets(id, expires_at) VALUES ({mark},"  # noqa: S608
                             f" {mark}) ON CONFLICT (id) DO NOTHING",
                             (claims.ticket_id, claims.expires_at))
            if cur.rowcount != 1:
                raise TicketError("ticket already used")


class _Transaction:
    """One short write transaction (SQLite: BEGIN IMMEDIATE; psycopg: its own)."""

    def __init__(self, conn: Any, sqlite: bool) -> None:
        self.conn, self.sqlite = conn, sqlite

    def __enter__(self) -> Any:
        if self.sqlite:
            self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT") if self.sqlite else self.conn.commit()
        else:
            self.conn.execute("ROLLBACK") if self.sqlite else self.conn.rollback()
