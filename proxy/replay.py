"""Single use of tickets across proxy replicas: the ids of redeemed tickets in
the database the service uses (SPEC §9), one row each until the ticket expires.

Redeeming is one INSERT of the ticket id, which the primary key lets succeed
once across all replicas (insert-or-fail); a replayed ticket fails it, on
whichever proxy it is replayed. The embedded single proxy keeps the in-memory
:class:`proxy.tickets.ReplayGuard` and needs no database.

``database_url``: ``postgresql://...``, else the service's SQLite file (a path,
or ``sqlite:///path``). Through the store's own adapter (service.db: it
imports nothing else of the service, and neither the Pulumi SDK).
"""

from __future__ import annotations

import time

from proxy.tickets import TicketClaims, TicketError
from service.db import connect, is_postgres_url

SCHEMA = """
CREATE TABLE IF NOT EXISTS consumed_tickets (
  id TEXT PRIMARY KEY,
  expires_at REAL NOT NULL
);
"""
PURGE_EVERY = 60.0  # seconds between deletions of expired rows (per proxy)


class SharedReplayGuard:
    """Consumed ticket ids in a shared table. Blocking calls: the proxy runs
    them off its event loop (asyncio.to_thread)."""

    def __init__(self, database_url: str) -> None:
        target = database_url if is_postgres_url(database_url) \
            else database_url.removeprefix("sqlite://")
        self.db = connect(target)
        self.db.ensure_schema(SCHEMA, [])  # safe when several proxies start at once
        self._next_purge = 0.0

    def consume(self, claims: TicketClaims, now: float | None = None) -> None:
        """Record the ticket as used, or raise TicketError if any proxy did already."""
        now = time.time() if now is None else now
        if now >= self._next_purge:
            self._next_purge = now + PURGE_EVERY
            self.db.execute("DELETE FROM consumed_tickets WHERE expires_at <= ?", (now,))
        cur = self.db.execute("INSERT INTO consumed_tickets(id, expires_at) VALUES (?, ?)"
                              " ON CONFLICT (id) DO NOTHING",
                              (claims.ticket_id, claims.expires_at))
        if cur.rowcount != 1:
            raise TicketError("ticket already used")

    def close(self) -> None:
        self.db.close()
