"""Wake-ups from the store, pushed to whoever waits in this process, never
polled per waiter: the one home of the service's wake-up mechanism.

Waiters wait on a topic:
- an operation's id: its SSE stream (service.api), for new events;
- WORK: the runner's dispatcher, for work queued, a cancel asked for, or an
  operation ended (service.runner);
- ROLLOUTS: the rollout SSE streams, for a rollout or an item changed.

Writes come from the runner's worker processes, from this process, and on
PostgreSQL from other replicas too. One watcher thread per store and process
(`feed_for`) learns of them and wakes the waiters:
- PostgreSQL: LISTEN on CHANNEL; a transaction that writes announces its topic
  (`announce`: NOTIFY, delivered at its commit), on any replica.
- SQLite: `PRAGMA data_version` of the watcher's own connection changes
  whenever any other connection (any process) commits; it is read every
  SQLITE_POLL seconds, one cheap query for the whole process, and every
  waiter then looks again (SQLite cannot say what changed).
This process's own writes can also wake its waiters at once (`poke`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("stackspace.notify")

CHANNEL = "stackspace_events"
SQLITE_POLL = 0.1
WORK = "work"  # not an operation id (those are hex)
ROLLOUTS = "rollouts"


class EventFeed:
    IDLE_EXIT = 30.0  # seconds without a waiter before the watcher stops

    def __init__(self, target: Path | str, stopping: threading.Event,
                 closed: Callable[[], bool] = lambda: False):
        self._target = target
        self._stopping = stopping
        self._closed = closed
        self._cond = threading.Condition()
        self._all = 0  # bumped when any topic may have news
        self._topics: dict[str, int] = {}  # bumped per topic
        self._waiting = 0
        self._last_wait = time.monotonic()
        self._thread: threading.Thread | None = None
        self._stops: set[int] = set()  # ids of the events wake_on watches

    def version(self, topic: str) -> tuple[int, int]:
        with self._cond:
            return self._all, self._topics.get(topic, 0)

    def wait(self, topic: str, seen: tuple[int, int], timeout: float,
             stop: threading.Event | None = None) -> None:
        """Until `topic` may have news since `seen` (version()), the feed or
        `stop` (see wake_on) stops, or `timeout`."""
        with self._cond:
            if self._thread is None:  # the watcher runs while someone waits
                self._thread = threading.Thread(target=self._watch, name="event-feed",
                                                daemon=True)
                self._thread.start()
            self._waiting += 1
            try:
                self._cond.wait_for(lambda: (self._all, self._topics.get(topic, 0)) != seen
                                    or self._stopping.is_set()
                                    or (stop is not None and stop.is_set()), timeout)
            finally:
                self._waiting -= 1
                self._last_wait = time.monotonic()

    def poke(self, topic: str | None = None) -> None:
        """Wake this process's waiters on `topic` (None: all) now."""
        self._bump(topic)

    def wake_on(self, stop: threading.Event) -> None:
        """End every wait given `stop` as soon as it is set (once per event)."""
        with self._cond:
            if id(stop) in self._stops:
                return
            self._stops.add(id(stop))

        def watch() -> None:
            stop.wait()
            self._bump(None)

        threading.Thread(target=watch, name="event-feed-stop", daemon=True).start()

    def _bump(self, topic: str | None) -> None:
        with self._cond:
            if topic is None:
                self._all += 1
            else:
                self._topics[topic] = self._topics.get(topic, 0) + 1
            self._cond.notify_all()

    def _done(self) -> bool:
        """Whether the watcher should stop now (then it is gone for wait())."""
        with self._cond:
            idle = not self._waiting and time.monotonic() - self._last_wait > self.IDLE_EXIT
            if idle or self._stopping.is_set() or self._closed():
                self._thread = None
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


_feeds: weakref.WeakKeyDictionary[Any, EventFeed] = weakref.WeakKeyDictionary()
_feeds_lock = threading.Lock()


def feed_for(store: Any) -> EventFeed:
    """The one feed of `store` in this process (the API's streams and the
    runner's dispatcher share its watcher); it stops when the store closes."""
    with _feeds_lock:
        feed = _feeds.get(store)
        if feed is None:
            ref = weakref.ref(store)
            feed = _feeds[store] = EventFeed(store.path, threading.Event(),
                                             lambda: getattr(ref(), "closed", True))
        return feed


def notify_sql(dialect: str) -> str | None:
    """The statement that announces a topic (its one parameter: an operation
    id, WORK or ROLLOUTS) inside the transaction that writes, delivered at its
    commit; None where the watcher needs no announcement (SQLite)."""
    return "SELECT pg_notify('" + CHANNEL + "', ?)" if dialect == "postgresql" else None


def announce(db: Any, dialect: str, topic: str) -> None:
    """Announce `topic` in the transaction `db` (a service.db Tx) of a store
    of `dialect`."""
    if sql := notify_sql(dialect):
        db.execute(sql, (topic,))
