"""Idempotency-Key for the POSTs that answer at once (SPEC §4: "Idempotency-Key
on POST makes retries safe"): minting a token, starting a rollout.

Operations carry their own key (service.store); these requests make no
operation, so their first answer is kept instead, per user, route and key:
a retry with the same key and body gets that answer again (a minted token's
value too: the answer is kept Fernet-encrypted with the store's key) and
makes nothing new; the same key with another body is 422
(service.idempotency); a retry while the first request still runs is 409.
The first request claims the key before it acts (an insert that only one
replica wins), so two replicas never both act on one key. Kept answers go
after KEEP_SECONDS (service.retention)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from service import idempotency
from service.problems import Problem
from service.store import Store

KEEP_SECONDS = 24 * 3600.0
SCHEMA = """
CREATE TABLE IF NOT EXISTS replays (
  owner TEXT NOT NULL,
  route TEXT NOT NULL,           -- method and path, e.g. "POST /api/v1/tokens"
  key TEXT NOT NULL,             -- the client's Idempotency-Key
  digest TEXT,                   -- the request body's keyed digest
  status INTEGER NOT NULL,       -- the answer's HTTP status; 0 while the first runs
  body TEXT,                     -- the answer, Fernet-encrypted
  created REAL NOT NULL,
  PRIMARY KEY (owner, route, key)
);
"""

Answer = tuple[int, dict[str, Any]]


class Replays:
    def __init__(self, store: Store):
        self.store = store
        store.db.ensure_schema(SCHEMA, [])

    def answer(self, owner: str, route: str, key: str | None, body: Any,
               act: Callable[[], Answer]) -> Answer:
        """`act()`'s answer, or without acting the one the first request with
        this key got. `act` raising (a refusal) frees the key for a retry."""
        if not key:
            return act()
        digest = self.store.request_digest(body)
        claimed = self.store.db.execute(
            "INSERT INTO replays(owner, route, key, digest, status, created)"
            " VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT DO NOTHING",
            (owner, route, key, digest, time.time())).rowcount
        where = (owner, route, key)
        if not claimed:
            row = self.store.db.execute("SELECT digest, status, body FROM replays WHERE"
                                        " owner=? AND route=? AND key=?", where).fetchone()
            if row is None:  # pruned in between: the key is free again
                return self.answer(owner, route, key, body, act)
            idempotency.check(row["digest"], digest)
            if row["status"] == 0:
                raise Problem("conflict", "a request with this Idempotency-Key is still running")
            return row["status"], self.store.open_json(row["body"])
        try:
            status, data = act()
        except BaseException:
            self.store.db.execute("DELETE FROM replays WHERE owner=? AND route=? AND key=?",
                                  where)
            raise
        self.store.db.execute("UPDATE replays SET status=?, body=? WHERE owner=? AND route=?"
                              " AND key=?", (status, self.store.seal_json(data), *where))
        return status, data


def prune(store: Store, now: float | None = None) -> int:
    """Forget answers kept longer than KEEP_SECONDS."""
    cutoff = (time.time() if now is None else now) - KEEP_SECONDS
    store.db.ensure_schema(SCHEMA, [])  # the service may not have made it yet
    return store.db.execute("DELETE FROM replays WHERE created < ?", (cutoff,)).rowcount

