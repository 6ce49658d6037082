"""Retention: operations and their events older than a configurable age
(default 30 days) are deleted, and so are tokens that expired that long ago.

Kept whatever their age: every queued or running operation, and the newest
operation of each workspace that still exists (with its events: the API
shows it as `last_operation`). The runner's dispatcher calls `Pruner.tick`
on each pass; it prunes at start and then hourly, a bounded batch per pass
(so a large backlog never holds up dispatching: the next pass continues).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from service import replays, tokens

if TYPE_CHECKING:
    from service.store import Store

log = logging.getLogger("stackspace.retention")

DEFAULT_RETENTION = 30 * 86400.0
PRUNE_EVERY = 3600.0
BATCH = 500  # operations per transaction
BATCHES_PER_TICK = 10

# Ended operations past the cutoff that are not the newest of a live workspace.
_PRUNABLE = (
    "SELECT o.id FROM operations o WHERE o.status IN ('succeeded', 'failed', 'cancelled')"
    " AND COALESCE(o.ended, o.created) < ? AND (EXISTS (SELECT 1 FROM operations n"
    " WHERE n.owner = o.owner AND n.workspace = o.workspace AND n.seq > o.seq)"
    " OR NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.owner = o.owner"
    " AND w.name = o.workspace)) LIMIT ?")


def prune(store: Store, max_age: float, now: float | None = None, batch: int = BATCH) -> int:
    """Delete one batch of prunable operations and their events, in one
    transaction; returns how many operations went."""
    cutoff = (time.time() if now is None else now) - max_age
    with store.tx() as db:
        db.lock("retention")  # replicas prune one at a time (no deadlock on shared rows)
        ids = [r[0] for r in db.execute(_PRUNABLE, (cutoff, batch))]
        if ids:
            marks = ", ".join("?" * len(ids))
            db.execute(f"DELETE FROM events WHERE op IN ({marks})", ids)  # noqa: S608
            db.execute(f"DELETE FROM operations WHERE id IN ({marks})", ids)  # noqa: S608
    return len(ids)


class Pruner:
    """When to prune: at the first tick, then every `every` seconds; sooner
    while a backlog remains."""

    def __init__(self, store: Store, max_age: float, every: float = PRUNE_EVERY,
                 clock: Callable[[], float] = time.monotonic, batch: int = BATCH):
        self.store, self.max_age, self.every, self.clock = store, max_age, every, clock
        self.batch = batch
        self._next = clock()

    @property
    def due(self) -> float:
        """When the next prune falls due (the clock's time)."""
        return self._next

    def tick(self) -> int:
        """Prune if due; returns the number of operations deleted."""
        if self.clock() < self._next:
            return 0
        done, full = 0, False
        for _ in range(BATCHES_PER_TICK):
            n = prune(self.store, self.max_age, batch=self.batch)
            done += n
            full = n == self.batch
            if not full:
                break
        if not full:
            tokens.prune_expired(self.store, time.time() - self.max_age)
            replays.prune(self.store)  # Idempotency-Key answers older than a day
        self._next = self.clock() + (0 if full else self.every)
        if done:
            log.info("retention: deleted %d operations older than %.0f s", done, self.max_age)
        return done
