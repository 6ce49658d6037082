"""One operation, run in a long-lived worker process (never on a thread of the
Flask process: the Automation API and the gRPC servers of inline programs are
not thread-safe, pulumi#7782). The worker runs the workspace program inline
(warm imports, and the plan is checked before any config reaches the stack)
and writes progress straight into the store (SQLite WAL is multi-process
safe; PostgreSQL is shared anyway) so events reach SSE clients while the run
goes on.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pulumi.automation import errors as auto_errors
from pulumi.automation import events

from components.runtime import KubernetesRuntime
from service.init_cause import kubernetes_init_failure
from service.jobs import CANCEL_SIGNAL, Job, Outcome
from service.limits import ensure_started_with_limits
from service.pool import ENGINE_TAG, READY
from service.runtime_objects import (
    ensure_holder_image,
    ensure_network,
    remove_labelled,
    remove_unrecorded,
    workload_running,
)
from service.store import Store
from service.workload_watch import WorkloadWatch
from stacks.automation import StackRunner, StackTaken, StorageAtRisk
from stacks.config import StackConfig
from stacks.settings import PulumiSettings, StackFiles, sweep_work_dirs
from stacks.state_repair import StackKeys, repair_stack_state

log = logging.getLogger("stackspace.worker")
PR_SET_PDEATHSIG = 1

_runner: StackRunner | None = None
_store: Store | None = None


def serve(conn: Any, tag: str, settings: PulumiSettings | None = None) -> None:
    """A worker process's main loop (service.pool): one job at a time."""
    os.environ[ENGINE_TAG] = tag  # inherited by the CLI and providers it starts
    init_process()
    if settings is not None:
        with contextlib.suppress(OSError):  # housekeeping: never keeps a worker from serving
            sweep_work_dirs(settings.pulumi_home)
        try:
            _runner_for(settings)  # warm: `pulumi version` once, before any job
        except Exception as e:  # noqa: BLE001 - jobs then fail with the reason; never stall
            log.warning("cannot start the Pulumi CLI", extra={"error_type": type(e).__name__})
    conn.send(READY)  # signals are handled from here on (see service.pool)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(run(job))


def init_process() -> None:
    """Worker start-up: own session (a Ctrl-C at the service's terminal is not
    the engine's cancel), die with the service, default signal dispositions
    (a service started under nohup ignores SIGINT, and the Pulumi CLI would
    inherit that and never cancel gracefully), and warm imports."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.signal(CANCEL_SIGNAL, _on_cancel)
    import stacks.program  # noqa: F401 - pulumi, pulumi_docker, pulumi_kubernetes, once


_cancelled = threading.Event()


def _on_cancel(signum: int, frame: Any) -> None:
    _cancelled.set()
    _interrupt_engine()


def _interrupt_engine() -> None:
    """One SIGINT to each CLI this worker runs: the engine stops gracefully,
    recording what it made."""
    pid = os.getpid()
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGINT)


def _runner_for(settings: PulumiSettings) -> StackRunner:
    # One PulumiCommand/LocalWorkspace per worker process, reused across jobs.
    global _runner
    if _runner is None or _runner.settings != settings:
        _runner = StackRunner(settings)
    return _runner


def _store_for(path: str) -> Store:
    # One connection (and one schema check) per worker process, not per job.
    # `path`: the SQLite file or the PostgreSQL URL (Store tells them apart).
    global _store
    if _store is None or str(_store.path) != path:
        if _store is not None:
            _store.close()
        _store = Store(path)
    return _store


def event_summary(event: events.EngineEvent) -> dict[str, Any] | None:
    """A client-safe digest of an engine event (no property values: they may hold secrets)."""
    for phase, step in (("pre", event.resource_pre_event), ("done", event.res_outputs_event),
                        ("failed", event.res_op_failed_event)):
        if step is not None:
            m = step.metadata
            return {"type": "resource", "phase": phase, "op": str(m.op.value), "urn": m.urn,
                    "resource_type": m.type}
    if event.summary_event:
        changes = {str(getattr(k, "value", k)): v
                   for k, v in (event.summary_event.resource_changes or {}).items()}
        return {"type": "summary", "changes": changes,
                "seconds": event.summary_event.duration_seconds}
    if event.diagnostic_event and event.diagnostic_event.severity in ("error", "warning"):
        # Diagnostics are engine text; Pulumi masks secret values as [secret].
        return {"type": "diagnostic", "severity": event.diagnostic_event.severity,
                "message": event.diagnostic_event.message.strip()[:2000]}
    return None


def run(job: Job) -> Outcome:
    """Run `job` in a private work dir holding the stack's settings from the
    store; the Outcome carries them back, changed or not, whatever happened."""
    # First: a cancel or timeout may arrive while the work dir is made or the
    # store opens (a first PostgreSQL connection takes a while) and must not be
    # forgotten.
    _cancelled.clear()
    files = StackFiles(job.settings.pulumi_home, job.stack, job.stack_settings)
    try:
        outcome = _run(job, files)
    finally:
        files.close()
    return replace(outcome, stack_settings=files.text)


def _run(job: Job, files: StackFiles) -> Outcome:
    store = _store_for(job.store_path)
    store.update_operation(job.op_id, worker_pid=os.getpid())
    cfg = job.config
    watch: WorkloadWatch | None = None

    def on_event(event: events.EngineEvent) -> None:
        digest = event_summary(event)
        if digest is not None:
            store.add_event(job.op_id, digest)

    def observe() -> bool | None:
        return workload_running(cfg.runtime, cfg.owner, cfg.spec.name,
                                installation=cfg.installation)

    started = time.monotonic()
    timings: dict[str, float] = {}
    written = recovered = False
    digest = None
    try:
        runner = _runner_for(job.settings)
        runner.should_stop = _cancelled.is_set
        runner.use(files)
        # A new stack's salt goes to the store at once: if this run is killed
        # before it ends, the next one must still decrypt what the stack holds.
        runner.on_stack_created = lambda text: store.update_workspace(
            cfg.owner, cfg.spec.name, stack_settings=text)
        # The digest speaks of the secrets in the settings: without them, write them.
        known_digest = job.secrets_digest if files.initial else None
        rewound = False
        if files.initial is not None:  # a stack of ours: nothing may keep it stuck
            t = time.monotonic()
            rewound = _repair_state(job, store, runner.project)
            timings["repair"] = time.monotonic() - t
        if files.initial is None:
            # This store never made the stack: it is new, or it is another
            # installation's (same backend, owner and name). Never take that
            # one over, and never destroy it.
            t = time.monotonic()
            if job.kind == "create":
                # Claimed first (""): a run cut off from here on, even inside
                # `stack init`, left a stack of ours that recovery may adopt.
                store.update_workspace(cfg.owner, cfg.spec.name, stack_settings="")
                try:
                    runner.init_stack(job.stack)
                except StackTaken:
                    store.update_workspace(cfg.owner, cfg.spec.name, stack_settings=None)
                    raise
            elif runner.exists(job.stack):
                if job.kind != "delete":
                    raise StackTaken(job.stack)
                store.add_event(job.op_id, {"type": "diagnostic", "severity": "warning",
                                            "message": f"stack {job.stack} belongs to another "
                                                       "installation: left untouched"})
                return Outcome(job.op_id, True, None, None, {}, {"total": time.monotonic()
                                                                  - started})
            timings["init"] = time.monotonic() - t
        if job.recover or job.kind == "refresh" or rewound:
            t = time.monotonic()
            recorded = runner.recover(job.stack, on_event)
            orphans = remove_unrecorded(cfg.runtime, cfg.owner, cfg.spec.name, recorded,
                                        installation=cfg.installation)
            timings["recover"] = time.monotonic() - t
            recovered = True
            if orphans:
                store.add_event(job.op_id, {"type": "diagnostic", "severity": "info",
                                            "message": f"recovery removed {orphans} container(s)"
                                                       " an interrupted run never recorded"})
        outputs: dict[str, Any] = {}
        if job.kind == "delete":
            if not recovered:  # a container in use would keep destroy from the volume
                remove_unrecorded(cfg.runtime, cfg.owner, cfg.spec.name,
                                  runner.recorded_ids(job.stack), installation=cfg.installation)
            result = runner.delete(job.stack, on_event)
            t = time.monotonic()
            left = remove_labelled(cfg.runtime, cfg.owner, cfg.spec.name,
                                   installation=cfg.installation)
            timings["sweep"] = time.monotonic() - t
            if left:
                store.add_event(job.op_id, {"type": "diagnostic", "severity": "warning",
                                            "message": f"removed {left} unrecorded object(s)"})
            timings.update(result.timings)
        observed = observe() if job.kind == "refresh" else None
        if (job.kind == "refresh" and cfg.running and observed is False
                and ensure_started_with_limits(cfg.runtime, cfg.owner, cfg.spec.name,
                                               installation=cfg.installation,
                                               never_started_only=True)):
            # A run cut off between the container's create and its start hook.
            observed = observe()
        # A recovery that finds the workload running where it should run makes
        # the stack agree too (outputs a cut-off create never recorded, an
        # object to adopt): the same guarded apply as any run.
        converge = job.kind == "refresh" and cfg.running and observed
        if job.kind not in ("delete", "refresh") or converge:
            refresh = _workload_lost(job, observe)
            if refresh:
                store.add_event(job.op_id, {
                    "type": "diagnostic", "severity": "warning",
                    "message": "the workspace's container or pod is not running: "
                               "refreshing the stack to make it again"})
            ensure_network(cfg.runtime)
            if cfg.running:
                ensure_holder_image(cfg.runtime)
            watch = _watch_pods(cfg)
            try:
                result = runner.apply(cfg, job.stack, on_event, guard=True,
                                      secrets_digest=known_digest, refresh=refresh)
            finally:
                if watch is not None:
                    watch.stop()
            written = result.config_written
            digest = result.secrets_digest
            if result.retried_init:
                store.add_event(job.op_id, {"type": "diagnostic", "severity": "info",
                                            "message": "the last init failed: ran it again"})
            if result.guard:
                store.add_event(job.op_id, {"type": "diagnostic", "severity": "info",
                                            "message": f"storage guard: checked by {result.guard}"})
            timings.update(result.timings)
            outputs = dict(result.outputs)
            if converge:
                observed = observe()
        if cfg.running and (job.kind not in ("delete", "refresh") or observed):
            # Whatever made or replaced the container, it ends running with its
            # pids limit (a recovery only when it finds the workload running).
            t = time.monotonic()
            ensure_started_with_limits(cfg.runtime, cfg.owner, cfg.spec.name,
                                       installation=cfg.installation)
            timings["limits"] = time.monotonic() - t
        timings["total"] = time.monotonic() - started
        return Outcome(job.op_id, True, None, None, outputs, timings, observed, written,
                       recovered, digest)
    except StackTaken as e:
        timings["total"] = time.monotonic() - started
        return Outcome(job.op_id, False, f"refused: {e}; nothing was changed", "stack-taken",
                       {}, timings, None, False, recovered)
    except StorageAtRisk as e:
        timings["total"] = time.monotonic() - started
        # The engine's own refusal comes after the up saved the run's config.
        written = getattr(e, "config_written", False)
        said = "storage untouched, the stack config written" if written else "nothing was changed"
        return Outcome(job.op_id, False, f"refused: {e}; {said}", "storage-at-risk",
                       {}, timings, None, written, recovered)
    except Exception as e:  # noqa: BLE001 - every failure becomes the operation's error
        log.warning("operation failed", extra={"op": job.op_id, "kind": job.kind,
                                               "error_type": type(e).__name__})
        log.debug("operation traceback: %s", traceback.format_exc())
        timings["total"] = time.monotonic() - started
        written = written or getattr(e, "config_written", False)
        error, error_type = describe_error(e), type(e).__name__
        cause = kubernetes_init_failure(cfg.runtime, str(e)) if job.kind != "delete" else None
        if cause:  # the engine names a failed init pod: say why, as on Docker
            error, error_type = cause, "InitFailed"
        elif watch is not None and watch.reason:  # we interrupted it: a pod cannot start
            error, error_type = f"the workspace cannot start: {watch.reason}", "WorkloadStuck"
        return Outcome(job.op_id, False, error, error_type, {}, timings,
                       observe(), written, False)


def _repair_state(job: Job, store: Store, project: str) -> bool:
    """Repair what a cut-off write left in the stack's backend files before the
    CLI reads them (stacks.state_repair); each repair is an event of the
    operation. A checkpoint with no readable copy is reset to empty: the run
    then recovers from the runtime's labelled objects (delete removes them,
    any other run adopts the storage). True if the state was rewound, so
    the run must recover."""
    steps = repair_stack_state(job.settings.backend_url, StackKeys(project, job.stack),
                               reset_if_lost=True)
    for step in steps:
        store.add_event(job.op_id, {"type": "diagnostic", "severity": "warning",
                                    "message": f"state repaired: {step.describe()}"})
    if steps:
        log.warning("stack state repaired", extra={"op": job.op_id, "stack": job.stack,
                                                   "repairs": len(steps)})
    return any(step.rewinds_state for step in steps)


def _watch_pods(cfg: StackConfig) -> WorkloadWatch | None:
    """On Kubernetes: a watch of the pods this run makes that interrupts the
    engine when one cannot start (service.workload_watch)."""
    if not isinstance(cfg.runtime, KubernetesRuntime) or cfg.deleting:
        return None
    watch = WorkloadWatch(cfg.runtime, cfg.owner, cfg.spec.name, cfg.installation,
                          on_stuck=lambda _reason: _interrupt_engine())
    watch.start()
    return watch


def _workload_lost(job: Job, observe: Callable[[], bool | None]) -> bool:
    """A start or update of a workspace whose recorded workload is not running:
    a Docker container that exited while its engine was down, or that someone
    stopped or removed by hand; a Deployment deleted by hand. An up alone would
    find nothing to do, since the engine trusts its state: the run refreshes
    first, which drops what is gone, and the same up makes it again. Asked
    only when the stack records a workload (not on a start from stopped)."""
    return (job.workload_recorded and job.config.running
            and job.kind in ("start", "update") and observe() is False)


# Exceptions our program raises on purpose; their messages are written for users.
USER_ERRORS = ("InitFailed: ", "SpecError: ", "StorageAtRisk: ", "IncompleteConfig: ")


def describe_error(error: Exception) -> str:
    """A short, secret-free error text: the engine's diagnostics, not raw CLI
    output. Our own exceptions and the runtime clients' (an unknown host key,
    an unreachable engine) are written for users: their text as it is."""
    text = str(error)
    if not isinstance(error, auto_errors.CommandError):
        return (text.strip() or type(error).__name__)[:1500]
    for line in text.splitlines():
        for marker in USER_ERRORS:
            if marker in line:
                return line.split(marker, 1)[1].strip()[:1500]
    # CommandError carries the CLI's output; keep its error lines only.
    lines = [ln.strip() for ln in text.splitlines()
             if "error:" in ln.lower() and "stdout:" not in ln.lower()
             and "unhandled exception" not in ln.lower()]
    return "; ".join(dict.fromkeys(lines))[:1500] or type(error).__name__
