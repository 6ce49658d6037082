"""Operation events pushed to the SSE streams of this process, not polled per
stream (SPEC §4).

Events are written by the runner's worker processes, by this process, and on
PostgreSQL by other replicas too. One watcher thread per process learns of
new ones and wakes the streams waiting:
- PostgreSQL: LISTEN on CHANNEL; the store NOTIFYs with the operation id in
  the transaction that adds an event (Store.add_event), on any replica.
- SQLite: `PRAGMA data_version` of the watcher's own connection changes
  whenever any other connection (any process) commits; it is read every
  SQLITE_POLL seconds, one cheap query for the whole process, and every
  stream then looks again.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger("stackspace.notify")

CHANNEL = "stackspace_events"
SQLITE_POLL = 0.1


class EventFeed:
    IDLE_EXIT = 30.0  # seconds without a waiting stream before the watcher stops

    def __init__(self, target: Path | str, stopping: threading.Event):
        self._target = target
        self._stopping = stopping
        self._cond = threading.Condition()
        self._all = 0  # bumped when any operation may have new events
        self._ops: dict[str, int] = {}  # bumped per operation (PostgreSQL)
        self._waiting = 0
        self._last_wait = time.monotonic()
        self._thread: threading.Thread | None = None

    def version(self, op_id: str) -> tuple[int, int]:
        with self._cond:
            return self._all, self._ops.get(op_id, 0)

    def wait(self, op_id: str, seen: tuple[int, int], timeout: float) -> None:
        """Until `op_id` may have new events since `seen` (version()), the
        server stops, or `timeout`."""
        with self._cond:
            if self._thread is None:  # the watcher runs while streams wait
                self._thread = threading.Thread(target=self._watch, name="event-feed",
                                                daemon=True)
                self._thread.start()
            self._waiting += 1
            try:
                self._cond.wait_for(lambda: (self._all, self._ops.get(op_id, 0)) != seen
                                    or self._stopping.is_set(), timeout)
            finally:
                self._waiting -= 1
                self._last_wait = time.monotonic()

    def _bump(self, op_id: str | None) -> None:
        with self._cond:
            if op_id is None:
                self._all += 1
            else:
                self._ops[op_id] = self._ops.get(op_id, 0) + 1
            self._cond.notify_all()

    def _done(self) -> bool:
        """Whether the watcher should stop now (then it is gone for wait())."""
        with self._cond:
            idle = not self._waiting and time.monotonic() - self._last_wait > self.IDLE_EXIT
            if idle or self._stopping.is_set():
                self._thread = None
                self._ops.clear()
                self._all += 1  # and wake whoever waits
                self._cond.notify_all()
                return True
            return False

    def _watch(self) -> None:
        while True:
            try:
                if isinstance(self._target, Path):
                    self._watch_sqlite(self._target)
                else:
                    self._watch_postgres(str(self._target))
                return
            except Exception:  # noqa: BLE001 - the store is away: try again, wake everyone
                log.warning("event feed lost its store connection; reconnecting", exc_info=True)
                self._bump(None)
                if self._stopping.wait(1.0) or self._done():
                    return

    def _watch_sqlite(self, path: Path) -> None:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            seen = conn.execute("PRAGMA data_version").fetchone()[0]
            self._bump(None)  # events written before that are read now
            while not self._stopping.wait(SQLITE_POLL) and not self._done():
                now = conn.execute("PRAGMA data_version").fetchone()[0]
                if now != seen:
                    seen = now
                    self._bump(None)
        finally:
            conn.close()
        self._done()

    def _watch_postgres(self, url: str) -> None:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._bump(None)  # events written while not listening are read now
            while not self._done():
                for note in conn.notifies(timeout=0.5):
                    self._bump(note.payload or None)


def notify_sql(dialect: str) -> str | None:
    """The statement that announces a new event of an operation (its one
    parameter), inside the transaction that adds it; None where the watcher
    needs no announcement (SQLite)."""
    return "SELECT pg_notify('" + CHANNEL + "', ?)" if dialect == "postgresql" else None

