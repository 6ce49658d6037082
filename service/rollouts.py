"""Fleet rollouts (SPEC §10): the service's own code applied to every outdated
workspace through its operation queue, in batches, kept in the store.

A rollout and its items are rows; a driver thread moves them on. Each item's
update is requested with an idempotency key naming the rollout, the workspace
and the attempt, so a driver that died after requesting it (a service
restart, another replica) gets the same operation back: nothing is applied
twice. The update is the ordinary `update` with the workspace's own spec: user
operations queue around it as usual, and the storage guard refuses a plan
that would replace or delete storage (the item is then `refused`, the
workspace untouched).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

from service import lifecycle
from service.notify import ROLLOUTS, WORK, announce, feed_for
from service.rollout_plan import (
    CANCELLED,
    MAX_ATTEMPTS,
    PENDING,
    QUEUED,
    RUNNING,
    Options,
    batch_size,
    counts,
    in_use,
    item_outcome,
    next_batch,
    review_digest,
    review_mismatch,
    rollout_state,
    skip_reason,
)
from service.store import Conflict
from stacks import code_version

log = logging.getLogger("stackspace.rollouts")

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
  id TEXT PRIMARY KEY,
  status TEXT NOT NULL,          -- running | finished | stopped | cancelled
  options TEXT NOT NULL,         -- JSON (service.rollout_plan.Options)
  code_version TEXT NOT NULL,    -- the code it applies (the service's own)
  created REAL NOT NULL,
  updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_items (
  rollout TEXT NOT NULL,
  seq INTEGER NOT NULL,          -- the rollout's order
  owner TEXT NOT NULL,
  name TEXT NOT NULL,
  status TEXT NOT NULL,          -- pending | queued | succeeded | failed | refused | ...
  op TEXT,                       -- its update operation
  attempt INTEGER NOT NULL DEFAULT 1,
  review TEXT,                   -- JSON: the review it must still match (--plans)
  detail TEXT,
  PRIMARY KEY (rollout, seq)
);
"""
# The driver moves on when an operation ends (service.notify WORK); it also
# looks this often by itself (a workspace in use may have become free).
LOOK_EVERY = 30.0


class Rollouts:
    def __init__(self, store: Any, runner: Any) -> None:
        self.store = store
        self.runner = runner
        store.db.ensure_schema(SCHEMA, [])
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- rows -------------------------------------------------------------------
    def create(self, options: Options, reviews: dict[str, dict[str, str]] | None = None
               ) -> dict[str, Any]:
        """A rollout of every outdated workspace, in the store's order. With
        `reviews`, each gets its update only while it matches its review;
        one without a review is skipped."""
        current = code_version.current()
        rid, now = uuid.uuid4().hex, time.time()
        items = [w for w in self.store.workspaces()
                 if w["desired"] != "deleted"
                 and code_version.outdated(w["outputs"].get(code_version.OUTPUT), current)]
        with self.store.tx() as db:
            db.execute("INSERT INTO rollouts(id, status, options, code_version, created, updated)"
                       " VALUES (?,?,?,?,?,?)",
                       (rid, RUNNING, json.dumps(options.to_dict()), current, now, now))
            for seq, w in enumerate(items):
                ref = f"{w['owner']}/{w['name']}"
                review = None if reviews is None else reviews.get(ref)
                status, detail = PENDING, None
                if reviews is not None and review is None:
                    status, detail = "skipped", "not in the reviewed plans"
                db.execute("INSERT INTO rollout_items(rollout, seq, owner, name, status, review,"
                           " detail) VALUES (?,?,?,?,?,?,?)",
                           (rid, seq, w["owner"], w["name"], status,
                            json.dumps(review) if review else None, detail))
            announce(db, self.store.db.dialect, ROLLOUTS)  # its SSE streams read again
        self.wake()
        return self.get(rid) or {}

    def get(self, rid: str) -> dict[str, Any] | None:
        row = self.store.db.execute("SELECT * FROM rollouts WHERE id=?", (rid,)).fetchone()
        if row is None:
            return None
        items = self._items(rid)
        return {"id": row["id"], "status": row["status"],
                "options": json.loads(row["options"]), "code_version": row["code_version"],
                "created": row["created"], "updated": row["updated"],
                "counts": counts(i["status"] for i in items),
                "items": [{"workspace": f"{i['owner']}/{i['name']}", "status": i["status"],
                           "operation": i["op"], "detail": i["detail"]} for i in items]}

    def cancel(self, rid: str) -> bool:
        """Stop a running rollout: no new update starts; those running end."""
        with self.store.tx() as db:
            db.lock("rollout", rid)
            done = db.execute("UPDATE rollouts SET status=?, updated=? WHERE id=? AND status=?",
                              (CANCELLED, time.time(), rid, RUNNING)).rowcount
            if done:
                db.execute("UPDATE rollout_items SET status='cancelled', detail=?"
                           " WHERE rollout=? AND status=?",
                           ("the rollout was cancelled", rid, PENDING))
                announce(db, self.store.db.dialect, ROLLOUTS)
        return bool(done)

    def _items(self, rid: str) -> list[dict[str, Any]]:
        rows = self.store.db.execute("SELECT * FROM rollout_items WHERE rollout=? ORDER BY seq",
                                     (rid,)).fetchall()
        return [dict(r) for r in rows]

    def _set_item(self, rid: str, seq: int, **fields: Any) -> None:
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.store.tx() as db:
            db.execute(f"UPDATE rollout_items SET {cols} WHERE rollout=? AND seq=?",  # noqa: S608
                       (*fields.values(), rid, seq))
            announce(db, self.store.db.dialect, ROLLOUTS)

    def running(self) -> list[str]:
        rows = self.store.db.execute("SELECT id FROM rollouts WHERE status=? ORDER BY created",
                                     (RUNNING,)).fetchall()
        return [r["id"] for r in rows]

    # --- the driver -------------------------------------------------------------
    def wake(self) -> None:
        """Drive every running rollout (one thread; it ends when none is left)."""
        feed_for(self.store).poke(WORK)  # a driver waiting looks now
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._drive, name="rollouts",
                                                daemon=True)
                self._thread.start()

    def _drive(self) -> None:
        feed = feed_for(self.store)
        while not self.store.closed:  # the service stopped: a restart resumes the rollout
            seen = feed.version(WORK)  # before the step: an end during it wakes the wait
            pause = LOOK_EVERY
            try:
                ids = self.running()
                for rid in ids:
                    self.step(rid)
            except Exception:  # noqa: BLE001 - a store hiccup: try again next tick
                log.exception("rollout step failed")
                ids, pause = ["retry"], 1.0
            if not ids:
                return
            feed.wait(WORK, seen, pause)

    def step(self, rid: str) -> str:
        """Move one rollout on: read its updates' ends, then start the next
        batch once the last one has ended. Returns its status."""
        row = self.store.db.execute("SELECT * FROM rollouts WHERE id=?", (rid,)).fetchone()
        if row is None or row["status"] != RUNNING:
            return row["status"] if row else CANCELLED
        options = Options(**json.loads(row["options"]))
        items = self._items(rid)
        for item in items:
            if item["status"] == QUEUED and item["op"]:
                op = self.store.operation(item["op"]) or {"status": "failed",
                                                          "error": "operation lost"}
                status, detail = item_outcome(op)
                if status == PENDING and item["attempt"] >= MAX_ATTEMPTS:
                    status, detail = "failed", f"interrupted {item['attempt']} times"
                if status != QUEUED:
                    fields: dict[str, Any] = {"status": status, "detail": detail}
                    if status == PENDING:
                        fields.update(attempt=item["attempt"] + 1, op=None)
                    self._set_item(rid, item["seq"], **fields)
                    item.update(fields)
        state = rollout_state((i["status"] for i in items), options.max_failures)
        if state != RUNNING:
            return self._end(rid, state)
        if any(i["status"] == QUEUED for i in items):
            return RUNNING  # the batch has not ended yet
        pending = [i for i in items if i["status"] == PENDING]
        now = time.time()
        workspaces = {(i["owner"], i["name"]): self.store.workspace(i["owner"], i["name"])
                      for i in pending}
        current = code_version.current()
        ready: list[dict[str, Any]] = []
        for item in pending:
            ws = workspaces[(item["owner"], item["name"])]
            recorded = (ws or {}).get("outputs", {}).get(code_version.OUTPUT)
            reason = skip_reason(ws, code_version.outdated(recorded, current), options)
            stale = None
            # Checked before the first request only: a retry after a crash is the
            # same reviewed update, which may have written the config already.
            if reason is None and ws is not None and item["review"] and item["attempt"] == 1:
                stale = review_mismatch(json.loads(item["review"]),
                                        code_version.current_digest(),
                                        review_digest(ws["spec"], ws.get("stack_settings")))
            if reason is not None:
                self._set_item(rid, item["seq"], status="skipped", detail=reason)
            elif stale is not None:
                self._set_item(rid, item["seq"], status="stale", detail=stale)
            else:
                ready.append(item)
        busy = {f"{i['owner']}/{i['name']}" for i in ready
                if self._in_use(workspaces[(i["owner"], i["name"])], now, options)}
        refs = next_batch((f"{i['owner']}/{i['name']}" for i in ready),
                          batch_size(options.batch, len(items)), busy)
        by_ref = {f"{i['owner']}/{i['name']}": i for i in ready}
        for ref in refs:
            self._request(rid, by_ref[ref])
        for ref in busy:
            self._set_item(rid, by_ref[ref]["seq"], detail="in use: waits for its users")
        if not ready:
            return self._end(rid, rollout_state(
                (i["status"] for i in self._items(rid)), options.max_failures))
        return RUNNING

    def _in_use(self, ws: dict[str, Any] | None, now: float, options: Options) -> bool:
        """Recent terminal activity, or a kept session still running (the
        runner's check, as idle auto-stop asks it)."""
        if ws is None or options.skip_active_minutes <= 0:
            return False
        if in_use(ws.get("last_activity"), now, options.skip_active_minutes):
            return True
        sessions = self.runner.in_use
        return sessions is not None and sessions(ws["owner"], ws["name"])

    def _request(self, rid: str, item: dict[str, Any]) -> None:
        owner, name = item["owner"], item["name"]
        key = f"rollout {rid} {owner}/{name} {item['attempt']}"
        try:
            op, created = self.store.request_operation(owner, name, "update", queue=True,
                                                       idempotency_key=key)
        except (KeyError, lifecycle.Refused, Conflict) as e:
            self._set_item(rid, item["seq"], status="skipped", detail=str(e) or "deleted")
            return
        self._set_item(rid, item["seq"], status=QUEUED, op=op["id"], detail=None)
        if created:
            self.runner.submit(op)

    def _end(self, rid: str, state: str) -> str:
        with self.store.tx() as db:
            db.execute("UPDATE rollouts SET status=?, updated=? WHERE id=? AND status=?",
                       (state, time.time(), rid, RUNNING))
            if state != RUNNING:
                db.execute("UPDATE rollout_items SET status='skipped', detail=?"
                           " WHERE rollout=? AND status=?",
                           (f"the rollout {state}", rid, PENDING))
            announce(db, self.store.db.dialect, ROLLOUTS)
        return state
