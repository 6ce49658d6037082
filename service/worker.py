"""One operation, run in a worker process (never on a thread of the Flask process:
the Automation API and the gRPC servers of inline programs are not thread-safe,
pulumi#7782). The worker writes progress straight into the store (SQLite WAL is
multi-process safe) so events reach SSE clients while the run goes on.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulumi.automation import events

from service.store import Store
from stacks.automation import PulumiSettings, StackRunner, StorageAtRisk
from stacks.config import KEY_RUNNING, KEY_SECRETS, ConfigValues

log = logging.getLogger("stackspace.worker")
PR_SET_PDEATHSIG = 1

_runner: StackRunner | None = None
_store: Store | None = None


@dataclass(frozen=True)
class Job:
    op_id: str
    kind: str  # create | start | stop | update | delete | refresh
    stack: str
    store_path: str
    settings: PulumiSettings
    # Config keys to write before the run (create/update); start/stop write `running`.
    values: ConfigValues | None = None
    # update: secret files of the new spec; merged with the stack's credential.
    secret_files: dict[str, str] | None = None


@dataclass(frozen=True)
class Outcome:
    op_id: str
    ok: bool
    error: str | None
    error_type: str | None
    outputs: dict[str, Any]
    timings: dict[str, float]


def init_process() -> None:
    """Worker start-up: own process group (so recovery can kill the worker and
    the Pulumi CLI it runs together), and die with the service."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _runner_for(settings: PulumiSettings) -> StackRunner:
    # One PulumiCommand/LocalWorkspace per worker process, reused across jobs.
    global _runner
    if _runner is None or _runner.settings != settings:
        _runner = StackRunner(settings)
    return _runner


def _store_for(path: str) -> Store:
    # One connection (and one schema check) per worker process, not per job.
    global _store
    if _store is None or str(_store.path) != path:
        _store = Store(Path(path))
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
    store = _store_for(job.store_path)
    runner = _runner_for(job.settings)
    store.update_operation(job.op_id, worker_pid=os.getpid())

    def on_event(event: events.EngineEvent) -> None:
        digest = event_summary(event)
        if digest is not None:
            store.add_event(job.op_id, digest)

    started = time.monotonic()
    try:
        if job.kind == "delete":
            result = runner.delete(job.stack, on_event)
        elif job.kind == "refresh":
            runner.cancel(job.stack)
            runner.refresh(job.stack, on_event)
            result = None
        else:
            values: ConfigValues = dict(job.values or {})
            if job.kind in ("start", "stop"):
                values[KEY_RUNNING] = ("true" if job.kind == "start" else "false", False)
            if job.kind == "update" and job.secret_files is not None:
                current = runner.read_secrets(job.stack)
                merged = {k: v for k, v in current.items() if not k.startswith("file:")}
                merged.update(job.secret_files)
                values[KEY_SECRETS] = (json.dumps(merged, sort_keys=True), True)
            result = runner.apply(values, job.stack, on_event, guard=job.kind != "create")
        timings = dict(result.timings) if result else {}
        timings["total"] = time.monotonic() - started
        return Outcome(job.op_id, True, None, None, dict(result.outputs) if result else {},
                       timings)
    except StorageAtRisk as e:
        return Outcome(job.op_id, False, f"refused: {e}; nothing was changed", "storage-at-risk",
                       {}, {"total": time.monotonic() - started})
    except Exception as e:  # noqa: BLE001 - every failure becomes the operation's error
        log.warning("operation failed", extra={"op": job.op_id, "kind": job.kind,
                                               "error_type": type(e).__name__})
        log.debug("operation traceback: %s", traceback.format_exc())
        return Outcome(job.op_id, False, describe_error(e), type(e).__name__, {},
                       {"total": time.monotonic() - started})


# Exceptions our program raises on purpose; their messages are written for users.
USER_ERRORS = ("InitFailed: ", "SpecError: ", "StorageAtRisk: ", "IncompleteConfig: ")


def describe_error(error: Exception) -> str:
    """A short, secret-free error text: the engine's diagnostics, not raw CLI output."""
    text = str(error)
    for line in text.splitlines():
        for marker in USER_ERRORS:
            if marker in line:
                return line.split(marker, 1)[1].strip()[:1500]
    # CommandError carries the CLI's output; keep its error lines only.
    lines = [ln.strip() for ln in text.splitlines()
             if "error:" in ln.lower() and "stdout:" not in ln.lower()
             and "unhandled exception" not in ln.lower()]
    return "; ".join(dict.fromkeys(lines))[:1500] or type(error).__name__
