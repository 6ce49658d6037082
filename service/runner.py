"""The operation runner: persisted operations, one at a time per workspace in
order, a bounded pool of worker processes across workspaces.

Operations are written to the store before anything runs (`Store.add_operation`);
a dispatcher thread claims the oldest queued operation of each idle workspace
and hands it to a spawned worker process. After a crash, `recover()` marks what
was running as interrupted, clears the stack lock and refreshes the stack, so
the workspace shows its true state and the user can retry.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service import worker
from service.store import Conflict, Store
from stacks.automation import PulumiSettings, StackRunner
from stacks.config import ConfigValues

log = logging.getLogger("stackspace.runner")

# What a successful operation leaves the workspace in, and what it shows meanwhile.
FINAL_STATE = {"create": "running", "start": "running", "stop": "stopped",
               "update": "running", "refresh": None, "delete": None}
BUSY_STATE = {"create": "provisioning", "start": "starting", "stop": "stopping",
              "update": "provisioning", "refresh": None, "delete": "deleting"}


@dataclass
class Submission:
    values: ConfigValues | None = None
    secret_files: dict[str, str] | None = None


class OperationRunner:
    def __init__(self, store: Store, settings: PulumiSettings, pool_size: int | None = None,
                 timeout: float = 1800.0, idle_stop_after: float | None = None):
        self.store = store
        self.idle_stop_after = idle_stop_after
        self.settings = settings
        self.timeout = timeout
        self.pool_size = pool_size or max(2, os.cpu_count() or 2)
        self._pool = ProcessPoolExecutor(max_workers=self.pool_size,
                                         mp_context=multiprocessing.get_context("spawn"),
                                         initializer=worker.init_process)
        self._pending: dict[str, Submission] = {}
        # A create's full config (secrets included), kept in memory until some
        # operation has converged the stack: a create interrupted before its
        # config was written can then be retried with `start`.
        self._initial: dict[tuple[str, str], ConfigValues] = {}
        self._running: dict[str, float] = {}  # op id -> monotonic start
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)

    def start(self) -> None:
        self.recover()
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def submit(self, op: dict[str, Any], submission: Submission | None = None) -> None:
        """Attach the run's inputs (kept in memory only: they may hold secrets)."""
        with self._lock:
            self._pending[op["id"]] = submission or Submission()
            if op["kind"] == "create" and submission and submission.values:
                self._initial[(op["owner"], op["workspace"])] = submission.values
        self._wake.set()

    def cancel(self, op_id: str) -> bool:
        """Cancel a queued operation, or interrupt a running one (graceful SIGINT)."""
        op = self.store.operation(op_id)
        if op is None or op["status"] not in ("queued", "running"):
            return False
        if op["status"] == "queued":
            self.store.update_operation(op_id, status="cancelled", ended=time.time())
            # Nothing ran: the workspace keeps its state, except a create that
            # never happened, which is left failed for the user to retry or delete.
            self._finish_state(op, ok=False, error="cancelled before it started",
                               unchanged=op["kind"] != "create")
            self._wake.set()
            return True
        pid = op.get("worker_pid")
        if pid:
            _interrupt_children(pid)
        return True

    # --- dispatcher -----------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            try:
                self._dispatch()
                self._enforce_timeouts()
                self._stop_idle()
            except Exception:  # noqa: BLE001 - keep dispatching whatever happens
                log.exception("dispatcher error")

    def _dispatch(self) -> None:
        for owner, name in self.store.queued_workspaces():
            if len(self._running) >= self.pool_size:
                return
            op = self.store.next_queued(owner, name)
            if op is None or op["id"] in self._running:
                continue
            with self._lock:
                sub = self._pending.pop(op["id"], None)
                initial = self._initial.get((owner, name))
            if initial and op["kind"] in ("start", "update"):
                sub = sub or Submission()
                sub = Submission(values={**initial, **(sub.values or {})},
                                 secret_files=sub.secret_files)
            if sub is None and op["kind"] in ("create", "update"):
                # Inputs were lost (the service restarted before the run began).
                self.store.update_operation(op["id"], status="failed", ended=time.time(),
                                            error="interrupted before it started; retry")
                self._finish_state(op, ok=False, error="interrupted before it started")
                continue
            ws = self.store.workspace(owner, name)
            if ws is None:
                self.store.update_operation(op["id"], status="cancelled", ended=time.time())
                continue
            self.store.update_operation(op["id"], status="running", started=time.time())
            # Kept so a refused plan (nothing changed) can put the state back.
            op["prev_state"] = ws["state"]
            if BUSY_STATE[op["kind"]]:
                self.store.update_workspace(owner, name, state=BUSY_STATE[op["kind"]])
            job = worker.Job(op_id=op["id"], kind=op["kind"], stack=ws["stack"],
                             store_path=str(self.store.path), settings=self.settings,
                             values=sub.values if sub else None,
                             secret_files=sub.secret_files if sub else None)
            future = self._pool.submit(worker.run, job)
            self._running[op["id"]] = time.monotonic()
            future.add_done_callback(lambda f, op=op: self._done(op, f))

    def _stop_idle(self) -> None:
        """Stop running workspaces nobody has used for `idle_stop_after` seconds
        (terminal activity comes from the exec proxy). Storage stays."""
        if not self.idle_stop_after:
            return
        for owner, name in self.store.idle_workspaces(self.idle_stop_after):
            try:
                op, _ = self.store.add_operation(owner, name, "stop", queue=False)
            except Conflict:
                continue  # something else is in flight; look again later
            self.store.update_workspace(owner, name, desired="stopped")
            self.store.add_event(op["id"], {"type": "diagnostic", "severity": "info",
                                            "message": "idle: no terminal activity for "
                                                       f"{self.idle_stop_after:.0f}s"})
            log.info("idle auto-stop", extra={"owner": owner, "workspace": name})
            self.submit(op)

    def _enforce_timeouts(self) -> None:
        for op_id, started in list(self._running.items()):
            if time.monotonic() - started > self.timeout:
                op = self.store.operation(op_id)
                if op and op.get("worker_pid"):
                    log.warning("operation timed out", extra={"op": op_id})
                    self.store.add_event(op_id, {"type": "diagnostic", "severity": "error",
                                                 "message": "operation timed out"})
                    _interrupt_children(op["worker_pid"])

    def _done(self, op: dict[str, Any], future: Future) -> None:
        self._running.pop(op["id"], None)
        try:
            outcome: worker.Outcome = future.result()
        except Exception as e:  # noqa: BLE001 - a dead worker fails the operation
            outcome = worker.Outcome(op["id"], False, f"worker failed: {type(e).__name__}",
                                     type(e).__name__, {}, {})
        status = "succeeded" if outcome.ok else "failed"
        self.store.update_operation(op["id"], status=status, ended=time.time(),
                                    timings=outcome.timings, error=outcome.error,
                                    error_type=outcome.error_type)
        self.store.add_event(op["id"], {"type": "end", "status": status,
                                        **({"error": outcome.error} if outcome.error else {})})
        self._finish_state(op, ok=outcome.ok, error=outcome.error, outputs=outcome.outputs,
                           unchanged=outcome.error_type == "storage-at-risk")
        self._wake.set()

    def _finish_state(self, op: dict[str, Any], ok: bool, error: str | None = None,
                      outputs: dict[str, Any] | None = None, unchanged: bool = False) -> None:
        owner, name, kind = op["owner"], op["workspace"], op["kind"]
        ws = self.store.workspace(owner, name)
        if ws is None:
            return
        if ok and kind == "delete":
            self.store.delete_workspace(owner, name)
            return
        if ok:
            with self._lock:
                self._initial.pop((owner, name), None)
            fields: dict[str, Any] = {"last_error": None}
            if FINAL_STATE[kind]:
                fields["state"] = FINAL_STATE[kind]
            if outputs is not None:
                fields["outputs"] = outputs
            self.store.update_workspace(owner, name, **fields)
        elif unchanged:
            # Nothing changed (plan refused, or cancelled before it ran): the
            # workspace keeps its state, and what it wants.
            prev = op.get("prev_state") or ws["state"]
            desired = "stopped" if prev == "stopped" else "running"
            self.store.update_workspace(owner, name, state=prev, desired=desired,
                                        last_error=error)
        else:
            self.store.update_workspace(owner, name, state="failed", last_error=error)

    # --- crash recovery -----------------------------------------------------
    def recover(self) -> None:
        """Mark operations a dead service left running as interrupted, clear the
        stack lock, refresh the stack and record the workspace's true state."""
        interrupted = self.store.running_operations()
        if not interrupted:
            return
        runner = StackRunner(self.settings)
        for op in interrupted:
            if op.get("worker_pid"):
                # A Pulumi CLI the dead service left behind must not run on
                # while we clear its lock: kill its whole process group.
                _kill_group(op["worker_pid"])
            self.store.update_operation(op["id"], status="failed", ended=time.time(),
                                        error="interrupted: the service stopped during the run;"
                                              " retry the operation",
                                        error_type="interrupted")
            self.store.add_event(op["id"], {"type": "end", "status": "failed",
                                            "error": "interrupted"})
            ws = self.store.workspace(op["owner"], op["workspace"])
            if ws is None:
                continue
            state = "failed"
            try:
                if runner.exists(ws["stack"]):
                    runner.cancel(ws["stack"])
                    runner.refresh(ws["stack"])
                    state = "running" if _has_workload(runner, ws["stack"]) else "stopped"
                else:
                    state = "failed"
            except Exception as e:  # noqa: BLE001 - recovery must go on for other stacks
                log.warning("recovery failed", extra={"stack": ws["stack"],
                                                      "error_type": type(e).__name__})
            self.store.update_workspace(op["owner"], op["workspace"], state=state,
                                        last_error="interrupted: the service stopped during "
                                                   f"a {op['kind']} operation; retry it")


def _has_workload(runner: StackRunner, stack_name: str) -> bool:
    """Whether the stack's state holds a running pod/container after refresh."""
    state = runner.stack(stack_name, create=False).export_stack().deployment
    workload = ("kubernetes:core/v1:Pod", "docker:index/container:Container")
    return any(r.get("type") in workload and "-init-" not in r.get("id", "")
               and not r.get("urn", "").endswith("::init")
               for r in state.get("resources", []))


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
        for _ in range(50):
            os.killpg(pgid, 0)
            time.sleep(0.1)


def _interrupt_children(pid: int) -> None:
    """SIGINT the worker's children (the Pulumi CLI): the CLI's graceful cancel."""
    children_file = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        children = [int(c) for c in children_file.read_text().split()]
    except OSError:
        return
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGINT)
