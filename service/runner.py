"""The operation runner: persisted operations, one at a time per workspace in
order, on a pool of warm worker processes.

Every request is written to the store before anything runs. The dispatcher
claims the oldest queued operation of each idle workspace in one store
transaction (so a cancel or another replica's dispatcher cannot race it),
builds the run's whole config from the store (spec, decrypted secrets,
runtime, and the running/deleting flags of service.lifecycle), and hands it to
a worker. When it ends, lifecycle.settle decides the workspace's state,
written with the operation's end in one transaction.

Replicas: any number of runners may share one store. A claimed operation is
leased to this replica (`replica_id`) for `lease_seconds` and renewed every
third of that while it runs. A replica that dies stops renewing; once the
lease has expired another replica takes the operation over and ends it
through the crash recovery below. Why the dead replica's engine is no longer
writing by then: its engine processes die with it (service.pool's guardian),
and a replica that cannot renew a lease kills that run itself before the
lease runs out (`_heartbeat`); a run whose lease was taken over is killed and
its end is not recorded (the conditional `finish_operation`).

Faults: a run cut off (service crash, dead worker, cancel past its grace)
marks the workspace for recovery, which the next run on it does first
(stale lock, pending creates adopted or dropped, refresh); after a restart
every interrupted workspace gets a recovery run at once, so the API shows
what really exists. Delete is retried with backoff until it succeeds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from components.runtime import Runtime, parse_runtime
from components.spec import SpecError, WorkspaceSpec
from service import jobs, lifecycle
from service.config import default_replica_id
from service.metrics import metrics_for
from service.notify import WORK, feed_for
from service.pool import WorkerDied, WorkerPool, kill_tagged
from service.replica import dead_here, engine_tag_prefix, left_by_dead_replica
from service.retention import Pruner
from service.runtime_objects import workload_running
from service.store import Conflict, Store
from service.wakeups import RETRY_SOON, from_wall, run_due, sleep_for
from stacks.config import StackConfig
from stacks.settings import PulumiSettings, prepare_backend

log = logging.getLogger("stackspace.runner")

# After the one graceful SIGINT of a cancel or timeout, how long the engine
# gets to stop cleanly before its worker is killed.
CANCEL_GRACE = 30.0
# How long a replica's claim on a running operation lasts unless renewed.
LEASE_SECONDS = 30.0


@dataclass
class _Active:
    op: dict[str, Any]
    started: float  # monotonic
    lease_until: float  # monotonic time our lease surely lasts until
    interrupted: float | None = None  # monotonic time the worker was asked to stop
    timed_out: bool = False
    fenced: bool = False  # killed because its lease is (about to be) lost


class OperationRunner:
    def __init__(self, store: Store, settings: PulumiSettings, pool_size: int | None = None,
                 timeout: float = 1800.0, idle_stop_after: float | None = None,
                 runtimes: list[Runtime] | None = None, cancel_grace: float = CANCEL_GRACE,
                 replica_id: str | None = None, lease_seconds: float = LEASE_SECONDS,
                 retention: float | None = None):
        self.store = store
        # Old operations and events are pruned by the dispatcher (None: never).
        self._pruner = Pruner(store, retention) if retention else None
        self.settings = settings
        self.timeout = timeout
        self.idle_stop_after = idle_stop_after
        # (owner, name) -> a kept session still runs there (service.session_activity).
        self.in_use: Callable[[str, str], bool] | None = None
        self.cancel_grace = cancel_grace
        self.runtimes = {r.name: r for r in runtimes or []}
        self.pool_size = pool_size or max(2, os.cpu_count() or 2)
        self.replica_id = replica_id or default_replica_id()
        self.lease_seconds = lease_seconds
        # Engine processes carry "<instance>:<pid>-<run>:..." (service.pool,
        # service.replica): the instance is this store, the pid and run this
        # start of this replica.
        self.instance = hashlib.sha256(str(store.path.resolve()).encode()).hexdigest()[:12]
        self.run_id = uuid.uuid4().hex[:12]
        self.tag_prefix = engine_tag_prefix(self.instance, self.run_id)
        self._pool: WorkerPool | None = None
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        # Woken by the store (service.notify): work queued here or on another
        # replica, a cancel asked for, an operation ended.
        self._feed = feed_for(store)
        self._stop = threading.Event()
        self._beat_stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        self._beat = threading.Thread(target=self._heartbeat, name="lease-heartbeat",
                                      daemon=True)
        self._next_takeover = 0.0

    # --- life of the runner ---------------------------------------------------
    def start(self) -> None:
        prepare_backend(self.settings)
        self.recover()
        self._pool = WorkerPool(self.pool_size, self.tag_prefix, "service.worker:serve",
                                args=(self.settings,))
        self._thread.start()
        self._beat.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown()
        # Leases are renewed until the engines are gone: none expires while ours runs.
        self._beat_stop.set()
        if self._beat.is_alive():
            self._beat.join(timeout=5)

    def submit(self, op: dict[str, Any], submission: Any = None) -> None:
        """A new operation is in the store: look at the queue now. (Everything a
        run needs is read from the store, so nothing rides along in memory.)"""
        self._wake()

    def cancel(self, op_id: str) -> bool:
        """Cancel a queued operation, or interrupt a running one: one SIGINT
        (the engine's graceful cancel), then a kill after the grace period."""
        op = self.store.operation(op_id)
        if op is None:
            return False
        if op["status"] == "queued" and self.store.cancel_queued(op_id):
            def decide(desired: str, superseded: bool) -> lifecycle.Settled:
                return lifecycle.settle(
                    op["kind"], ok=False, error_type="not-started", desired=desired,
                    prev_state=op.get("prev_state") or "failed",
                    prev_desired=op.get("prev_desired") or "running", observed_running=None,
                    superseded=superseded)
            # Nothing ran: the state is left exactly as it is now (another
            # operation may be changing it this very moment), except for a
            # create, the first operation: its workspace never existed (failed).
            self.store.finish_operation(op, "cancelled", decide,
                                        error="cancelled before it started",
                                        error_type="not-started",
                                        keep_state=op["kind"] != "create")
            self.store.add_event(op_id, {"type": "end", "status": "cancelled"})
            self._wake()
            return True
        if self.store.request_cancel(op_id):
            self._wake()
            return True
        op = self.store.operation(op_id)
        return bool(op and op["status"] == "running")

    # --- dispatcher -------------------------------------------------------------
    def _wake(self) -> None:
        """Look at the queue now (this process's own news; other replicas'
        come through the store's notifications)."""
        self._feed.poke(WORK)

    def _loop(self) -> None:
        """One pass when woken (service.notify) or when the soonest timed check
        falls due (service.wakeups); never on a fixed tick."""
        while not self._stop.is_set():
            seen = self._feed.version(WORK)  # before the pass: news during it wakes the wait
            try:
                pause = self._pass()
            except Exception:  # noqa: BLE001 - keep dispatching whatever happens
                log.exception("dispatcher error")
                pause = 1.0  # the store is away: look again soon
            if not self._stop.is_set():
                self._feed.wait(WORK, seen, pause)

    def _pass(self) -> float:
        """Everything due now; returns how long the dispatcher may then sleep."""
        now = time.monotonic()
        if now >= self._next_takeover:
            self._next_takeover = now + self.lease_seconds / 3
            self._take_over_expired()
        self._retry_deletes()
        self._dispatch()
        runs_due = self._watch_running()
        self._stop_idle()
        if self._pruner is not None:
            self._pruner.tick()
        retry_at, idle_at = self.store.dispatch_deadlines(self.idle_stop_after)
        now, wall = time.monotonic(), time.time()
        return sleep_for(now, [self._next_takeover, *runs_due,
                               from_wall(retry_at, wall, now), from_wall(idle_at, wall, now),
                               self._pruner.due if self._pruner is not None else None],
                         cap=self.lease_seconds)

    def _dispatch(self) -> None:
        assert self._pool is not None
        with self._lock:
            free = self.pool_size - len(self._active)
        asked = time.monotonic()  # the lease the store records lasts at least this long
        for op in self.store.claim_next(self.replica_id, self.lease_seconds, free):
            owner, name = op["owner"], op["workspace"]
            with self._lock:
                self._active[op["id"]] = _Active(op, time.monotonic(),
                                                 asked + self.lease_seconds)
            ws = self.store.workspace(owner, name)
            if ws is None:  # cannot happen (delete is the last operation); be safe
                with self._lock:
                    self._active.pop(op["id"], None)
                self.store.update_operation(op["id"], status="cancelled", ended=time.time())
                continue
            try:
                job = self._job(op, ws)
            except Exception as e:  # noqa: BLE001 - a run that cannot start changes nothing
                with self._lock:
                    self._active.pop(op["id"], None)
                self._end(op, ws, jobs.Outcome(op["id"], False, f"cannot start: {e}",
                                               "not-started", {}, {}))
                continue
            busy = lifecycle.busy_state(op["kind"], ws["desired"], ws["state"])
            self.store.update_workspace(owner, name, state=busy)
            self._pool.submit(job, lambda answer, op=op, ws=ws: self._done(op, ws, answer))

    def _job(self, op: dict[str, Any], ws: dict[str, Any]) -> jobs.Job:
        """The run's whole config, rebuilt from the store every time."""
        runtime = self._runtime(ws)
        if runtime is None:
            raise RuntimeError(f"runtime {ws['runtime']!r} is not configured")
        public, secrets = ws["spec"], None
        if op["kind"] == "update" and (patch := self.store.operation_patch(op)) is not None:
            # Queued PATCHes compose: this one applies to the spec the ones
            # before it produced (recorded on the operation: its end applies it).
            base = WorkspaceSpec.from_public(ws["spec"], self.store.workspace_secrets(
                ws["owner"], ws["name"]))
            try:
                merged = base.merged(patch, repository_editable=not ws["outputs"].get(
                    "initialized"))
            except SpecError as e:
                raise RuntimeError(f"the update no longer applies to the workspace's spec: {e}"
                                   ) from e
            public, secrets = merged.public_dict(), merged.secret_values()
            self.store.set_operation_spec(op["id"], public, secrets)
        elif op["kind"] in ("create", "update") and op.get("spec"):
            public = json.loads(op["spec"])
            secrets = self.store.operation_secrets(op)
        if secrets is None:
            secrets = self.store.workspace_secrets(ws["owner"], ws["name"])
        spec = WorkspaceSpec.from_public(public, secrets)
        flags = lifecycle.run_flags(op["kind"], ws["desired"])
        cfg = StackConfig(owner=ws["owner"], spec=spec, runtime=runtime,
                          installation=ws.get("installation") or "",
                          running=flags.running, deleting=flags.deleting)
        return jobs.Job(op_id=op["id"], kind=op["kind"], stack=ws["stack"],
                        store_path=str(self.store.path), settings=self.settings, config=cfg,
                        recover=bool(ws.get("needs_recovery")),
                        secrets_digest=ws.get("secrets_digest"),
                        stack_settings=ws.get("stack_settings"),
                        workload_recorded=_names_workload(ws.get("outputs") or {}))

    def _done(self, op: dict[str, Any], ws: dict[str, Any], answer: Any) -> None:
        # A run killed for its lease (`_fence`) is recorded only if the lease
        # is still ours (`_end`): if another replica took over, the end is theirs.
        with self._lock:
            active = self._active.get(op["id"])
        if isinstance(answer, WorkerDied):
            answer = jobs.Outcome(op["id"], False,
                                  "interrupted: the worker running it stopped; retry it",
                                  lifecycle.INTERRUPTED, {}, {}, self._observe(ws))
        elif active and active.interrupted is not None and not answer.ok:
            why = f"timed out after {self.timeout:.0f}s" if active.timed_out else "cancelled"
            answer = jobs.Outcome(op["id"], False,
                                  f"{why}; the engine stopped at its next safe point",
                                  lifecycle.CANCELLED,
                                  {}, answer.timings, answer.observed_running,
                                  answer.config_written, answer.recovered,
                                  stack_settings=answer.stack_settings)
        try:
            self._end(op, ws, answer)
        finally:
            # Renewed until it is recorded: our own takeover pass must not
            # see it expire in between.
            with self._lock:
                self._active.pop(op["id"], None)
        self._wake()

    def _end(self, op: dict[str, Any], ws: dict[str, Any], outcome: jobs.Outcome) -> None:
        def decide(desired: str, superseded: bool) -> lifecycle.Settled:
            # Read in the ending transaction: a request made while the run
            # ended is part of what it settles against, never overwritten.
            return lifecycle.settle(
                op["kind"], ok=outcome.ok, error_type=outcome.error_type, desired=desired,
                prev_state=ws["state"], prev_desired=op.get("prev_desired") or ws["desired"],
                observed_running=outcome.observed_running, superseded=superseded,
                ran_as=ws["desired"])

        def keep_last_error(settled: lifecycle.Settled) -> bool:
            # A recovery that did not bring the workspace where it should be
            # keeps saying why (the interruption).
            return op["kind"] == "refresh" and not (settled.state == "running"
                                                    == settled.desired)

        cancelled = outcome.error_type in (lifecycle.CANCELLED, "not-started") and \
            bool((self.store.operation(op["id"]) or {}).get("cancel_requested"))
        status = "succeeded" if outcome.ok else ("cancelled" if cancelled else "failed")
        recorded = self.store.finish_operation(
            op, status, decide, error=outcome.error, error_type=outcome.error_type,
            timings=outcome.timings,
            # A recovery that did not converge keeps the outputs.
            outputs=outcome.outputs if outcome.ok and (
                outcome.outputs or op["kind"] != "refresh") else None,
            recovered=outcome.recovered, secrets_digest=outcome.secrets_digest,
            stack_settings=outcome.stack_settings, keep_last_error=keep_last_error,
            # The spec reached the stack: it is the workspace's now.
            apply_spec=outcome.config_written and op["kind"] == "update",
            lease_owner=self.replica_id)
        if recorded is None:  # another replica took it over: its end is theirs to record
            log.warning("operation taken over by another replica", extra={"op": op["id"]})
            return
        self.store.add_event(op["id"], {"type": "end", "status": status,
                                        **({"error": outcome.error} if outcome.error else {})})
        metrics_for(self.store).observe_operation(op["kind"], ws["runtime"], status,
                                                  time.time() - op["created"], outcome.timings)
        if outcome.error_type == lifecycle.INTERRUPTED:
            self._request_recovery(op["owner"], op["workspace"])

    def _runtime(self, ws: dict[str, Any]) -> Runtime | None:
        runtime = self.runtimes.get(ws["runtime"])
        if runtime is None and ws.get("runtime_config"):
            runtime = parse_runtime(ws["runtime_config"])
        return runtime

    def _observe(self, ws: dict[str, Any]) -> bool | None:
        """Whether the workspace's workload runs, asked of its runtime directly
        (so the API tells the truth even before the recovery run)."""
        runtime = self._runtime(ws)
        return workload_running(runtime, ws["owner"], ws["name"],
                                installation=ws.get("installation") or "") if runtime else None

    def _request_recovery(self, owner: str, name: str) -> None:
        """Queue a recovery run (refresh; or the pending delete) unless another
        operation is queued anyway: every run recovers first when needed."""
        ws = self.store.workspace(owner, name)
        if ws is None:
            return
        kind = "delete" if ws["desired"] == "deleted" else "refresh"
        with contextlib.suppress(Conflict, lifecycle.Refused):
            self.store.request_operation(owner, name, kind, queue=False)
        self._wake()

    def _watch_running(self) -> list[float]:
        """Cancels and timeouts: one SIGINT, then a kill once the grace is over.
        Returns when the runs next need a look (monotonic s)."""
        assert self._pool is not None
        now = time.monotonic()
        with self._lock:
            active = list(self._active.values())
        return [self._check_run(run, now) for run in active]

    def _check_run(self, run: _Active, now: float) -> float:
        assert self._pool is not None
        op_id = run.op["id"]
        if run.interrupted is None:
            timed_out = now - run.started >= self.timeout
            op = self.store.operation(op_id) or {}
            if not (timed_out or op.get("cancel_requested")):
                return run_due(run.started, None, self.timeout, self.cancel_grace)
            pid = self._pool.pid_of(op_id)
            if pid is None:
                return now + RETRY_SOON  # not on a worker yet: ask again shortly
            message = "operation timed out" if timed_out else "cancel requested"
            log.warning(message, extra={"op": op_id})
            self.store.add_event(op_id, {"type": "diagnostic", "severity": "error"
                                         if timed_out else "info", "message": message})
            run.interrupted, run.timed_out = now, timed_out
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, jobs.CANCEL_SIGNAL)
        elif now - run.interrupted >= self.cancel_grace:
            log.warning("engine did not stop in time: killing it", extra={"op": op_id})
            self.store.add_event(op_id, {"type": "diagnostic", "severity": "error",
                                         "message": "the engine did not stop within "
                                                    f"{self.cancel_grace:.0f}s; killed"})
            self._pool.kill(op_id)
        return run_due(run.started, run.interrupted, self.timeout, self.cancel_grace)

    def _retry_deletes(self) -> None:
        for owner, name in self.store.due_delete_retries():
            try:
                self.store.request_operation(owner, name, "delete", queue=False)
                log.info("retrying delete", extra={"owner": owner, "workspace": name})
            except (Conflict, lifecycle.Refused):
                continue

    def _stop_idle(self) -> None:
        """Stop running workspaces nobody has used for `idle_stop_after` seconds
        (terminal activity comes from the exec proxy). Storage stays."""
        if not self.idle_stop_after:
            return
        for owner, name in self.store.idle_workspaces(self.idle_stop_after):
            if self.in_use is not None and self.in_use(owner, name):
                # A kept session still runs (exec --detach): in use, look again later.
                self.store.touch_workspace(owner, name, time.time())
                continue
            try:
                op, _ = self.store.request_operation(owner, name, "stop", queue=False)
            except (Conflict, lifecycle.Refused):
                continue  # something else is in flight; look again later
            self.store.add_event(op["id"], {"type": "diagnostic", "severity": "info",
                                            "message": "idle: no terminal activity for "
                                                       f"{self.idle_stop_after:.0f}s"})
            log.info("idle auto-stop", extra={"owner": owner, "workspace": name})
            self._wake()

    # --- leases and crash recovery -------------------------------------------
    def _heartbeat(self) -> None:
        """Renew the leases of this replica's runs every third of a lease. A run
        whose lease is lost (taken over) or about to run out unrenewed (the
        store unreachable) is killed here, before anyone else may take it over."""
        interval = self.lease_seconds / 3
        while not self._beat_stop.wait(interval):
            with self._lock:
                runs = [r for r in self._active.values() if not r.fenced]
            if not runs:
                continue
            asked = time.monotonic()
            try:
                renewed = set(self.store.renew_leases(self.replica_id,
                                                      [r.op["id"] for r in runs],
                                                      self.lease_seconds))
            except Exception:  # noqa: BLE001 - the store is away: fence in time instead
                log.exception("cannot renew leases")
                renewed = None
            for run in runs:
                if renewed is not None and run.op["id"] in renewed:
                    run.lease_until = asked + self.lease_seconds
                elif renewed is not None or time.monotonic() > run.lease_until - interval:
                    self._fence(run)

    def _fence(self, run: _Active) -> None:
        """Stop a run whose lease is lost: kill its worker and engine now."""
        with self._lock:
            if self._active.get(run.op["id"]) is not run or run.fenced:
                return
            run.fenced = True
        op_id = run.op["id"]
        with contextlib.suppress(Exception):  # the store may be the reason: kill anyway
            if (self.store.operation(op_id) or {}).get("status") != "running":
                run.fenced = False  # it has just been recorded as ended
                return
        log.warning("lease lost: killing the run", extra={"op": op_id})
        if self._pool is not None:
            self._pool.kill(op_id)

    def _take_over_expired(self, startup: bool = False) -> None:
        """End the operations of dead replicas as interrupted and queue their
        recovery: those whose lease has expired, and those of replicas known
        dead on this host (at start: also this replica id's own earlier life)."""
        with self._lock:
            mine = set(self._active)
        candidates = {op["id"]: op for op in self.store.expired_operations()}
        for op in self.store.running_operations():
            owner = op.get("lease_owner")
            if dead_here(owner, self.replica_id) or (startup and owner == self.replica_id):
                candidates.setdefault(op["id"], op)
        for op_id, op in candidates.items():
            if op_id in mine:
                continue
            owner = op.get("lease_owner")
            known_dead = startup and owner == self.replica_id or dead_here(owner,
                                                                          self.replica_id)
            if not self.store.take_over(op_id, owner, self.replica_id,
                                        lease_seconds=self.lease_seconds,
                                        expired_only=not known_dead):
                continue  # renewed, or another replica was first
            log.warning("taking over an interrupted operation",
                        extra={"op": op_id, "from": owner})
            ws = self.store.workspace(op["owner"], op["workspace"])
            if ws is None:
                self.store.update_operation(op_id, status="failed", ended=time.time())
                continue
            self._end(op, ws, jobs.Outcome(
                op_id, False, "interrupted: the service stopped during the run; retry it",
                lifecycle.INTERRUPTED, {}, {}, self._observe(ws)))

    def recover(self) -> None:
        """At start: stop what dead replicas of this store left running on this
        host (found by their engine tag, never by a saved pid; never a live
        replica's), then end as interrupted every operation of a dead replica
        and queue a recovery run for each workspace, so the API soon shows what
        really exists and every operation can be retried. Operations of live
        replicas, and of replicas elsewhere until their lease expires, are left
        alone (the dispatcher takes those over once their lease expires)."""
        own = f"{self.tag_prefix}:"
        killed = kill_tagged(lambda tag: left_by_dead_replica(tag, self.instance)
                             and not tag.startswith(own))
        if killed:
            log.warning("killed engine processes of an earlier run", extra={"count": killed})
        self._take_over_expired(startup=True)


def _names_workload(outputs: dict[str, Any]) -> bool:
    """The stack's last outputs name a workload: a container (Docker) or a
    Deployment (Kubernetes)."""
    return bool(outputs.get("container") or outputs.get("deployment"))
