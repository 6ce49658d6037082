"""The workspace lifecycle as pure functions (SPEC §2, §3): which operations a
workspace admits, what each one asks of the stack, what the workspace shows
while it runs and where it settles afterwards.

No I/O here: the store, the runner and the worker call these, so the rules
live in one place and are tested exhaustively (tests/unit/test_lifecycle.py).
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("create", "start", "stop", "update", "delete", "refresh")
STATES = ("provisioning", "running", "stopping", "stopped", "starting", "deleting", "failed")
DESIRED = ("running", "stopped", "deleted")
# Operation kinds a user asks for through the API (refresh is the service's own).
USER_KINDS = ("create", "start", "stop", "update", "delete")

# Why an operation failed without changing anything: the workspace keeps its
# state and what it wanted before the request.
UNCHANGED = frozenset({"storage-at-risk", "stack-taken", "not-started"})
# The run was cut off (service crash, dead worker, hard cancel): what exists is
# found out by recovery, not assumed.
INTERRUPTED = "interrupted"
# The engine stopped on the user's cancel (or a timeout): it recorded what it
# did, so the workspace settles on what exists.
CANCELLED = "cancelled"

# Delete is retried until it succeeds (an unreachable host comes back):
# seconds to wait before attempt n (1-based), capped.
DELETE_RETRY_BASE = 2.0
DELETE_RETRY_CAP = 30.0


class Refused(Exception):
    """The workspace cannot take this operation now (answered 409)."""


@dataclass(frozen=True)
class RunFlags:
    """The `running` and `deleting` config every run writes explicitly."""

    running: bool
    deleting: bool


def admit(kind: str, desired: str) -> str:
    """The desired state after a request for `kind`; raises Refused if the
    workspace cannot take it. Delete is final: once asked for, only delete runs."""
    if kind not in KINDS:
        raise ValueError(f"unknown operation kind {kind!r}")
    if desired == "deleted" and kind != "delete":
        raise Refused("the workspace is being deleted")
    return {"create": "running", "start": "running", "stop": "stopped",
            "delete": "deleted"}.get(kind, desired)


def run_flags(kind: str, desired: str) -> RunFlags:
    """What the run asks of the stack. An update keeps a stopped workspace stopped."""
    if kind == "delete":
        return RunFlags(running=False, deleting=True)
    if kind in ("create", "start"):
        return RunFlags(running=True, deleting=False)
    if kind == "stop":
        return RunFlags(running=False, deleting=False)
    return RunFlags(running=desired == "running", deleting=False)


def busy_state(kind: str, desired: str, state: str) -> str:
    """What the workspace shows while an operation of `kind` runs."""
    if kind == "refresh":
        return state
    if kind == "update":
        return "provisioning" if desired == "running" else state
    return {"create": "provisioning", "start": "starting", "stop": "stopping",
            "delete": "deleting"}[kind]


@dataclass(frozen=True)
class Settled:
    """Where a workspace settles after an operation ended."""

    state: str | None  # None: the workspace is gone (delete succeeded)
    desired: str
    retry_delete: bool = False


def settle(kind: str, *, ok: bool, error_type: str | None, desired: str,
           prev_state: str, prev_desired: str, observed_running: bool | None,
           superseded: bool = False, ran_as: str | None = None) -> Settled:
    """The state after an operation of `kind` ended.

    `observed_running` is what the runtime shows after the run (None: could
    not be observed); `superseded`: later requests are queued (what they asked
    for stands even when this one changed nothing); `ran_as`: the desired state
    the run was built from (a request during the run changes `desired`, not
    what the run did). Success reaches the state
    the run asked for; a refusal or a run that never started changes nothing;
    an interrupted or cancelled
    run settles on what exists; a failed delete stays `deleting` and is
    retried; any other failure is `failed` (the user retries).
    """
    if ok:
        if kind == "delete":
            return Settled(None, "deleted")
        if kind == "refresh":
            return Settled(_observed(observed_running), desired)
        ran = run_flags(kind, ran_as or desired)
        return Settled("running" if ran.running else "stopped", desired)
    if kind == "delete":
        return Settled("deleting", "deleted", retry_delete=True)
    if error_type in UNCHANGED:
        if kind == "create":  # nothing was ever made: start or delete from here
            return Settled("failed", desired)
        keep = desired if superseded or desired == "deleted" else prev_desired
        return Settled(prev_state, keep)
    if error_type in (INTERRUPTED, CANCELLED) or kind == "refresh":
        return Settled(_observed(observed_running), desired)
    return Settled("failed", desired)


def _observed(running: bool | None) -> str:
    if running is None:
        return "failed"
    return "running" if running else "stopped"


def delete_retry_delay(attempt: int) -> float:
    """Seconds before the next automatic delete attempt (attempt >= 1)."""
    return min(DELETE_RETRY_BASE * 2 ** max(attempt - 1, 0), DELETE_RETRY_CAP)
