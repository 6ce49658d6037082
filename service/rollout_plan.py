"""The rules of a fleet rollout (SPEC §10) as pure functions: its options, how
big a batch is, which workspaces go next, what an ended operation means for
its item, and when the rollout is over. service.rollouts does the I/O."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

# Item states: waiting, its update queued or running, and the ends.
PENDING, QUEUED = "pending", "queued"
# stale: it changed since the review it was to get (--plans); never updated.
ENDED = ("succeeded", "failed", "refused", "stale", "skipped", "cancelled")
# Rollout states.
RUNNING, FINISHED, STOPPED, CANCELLED = "running", "finished", "stopped", "cancelled"
OPTION_NAMES = ("batch", "max_failures", "skip_active_minutes", "stopped_too", "reviews")
# An update cut off by a crash changed nothing for good: it runs again, once more.
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Options:
    batch: str = "10%"  # N workspaces, or P% of the rollout's
    max_failures: int = 1
    # A workspace in use waits (SPEC §10): terminal activity in the last this
    # many minutes, or a kept session still running. 0: no workspace waits.
    skip_active_minutes: float = 15.0
    stopped_too: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class OptionsError(ValueError):
    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


_BATCH = re.compile(r"^([1-9][0-9]{0,5})(%?)$")


def parse_options(data: Any) -> Options:
    """Options from a request body; OptionsError names each bad field."""
    if not isinstance(data, dict):
        raise OptionsError({"body": "must be an object"})
    errors = {k: "unknown field" for k in data if k not in OPTION_NAMES}
    batch = str(data.get("batch", Options.batch))
    m = _BATCH.match(batch)
    if isinstance(data.get("batch"), bool) or not m or (m.group(2) and int(m.group(1)) > 100):
        errors["batch"] = "a number of workspaces (1 or more) or a percentage (1% to 100%)"
    failures = data.get("max_failures", Options.max_failures)
    if isinstance(failures, bool) or not isinstance(failures, int) or failures < 1:
        errors["max_failures"] = "an integer, 1 or more"
    minutes = data.get("skip_active_minutes", Options.skip_active_minutes)
    if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not (
            0 <= minutes <= 24 * 60):
        errors["skip_active_minutes"] = "minutes, from 0 to 1440"
    stopped = data.get("stopped_too", Options.stopped_too)
    if not isinstance(stopped, bool):
        errors["stopped_too"] = "true or false"
    try:
        parse_reviews(data.get("reviews"))
    except OptionsError as e:
        errors.update(e.errors)
    if errors:
        raise OptionsError(errors)
    return Options(batch=batch, max_failures=failures, skip_active_minutes=float(minutes),
                   stopped_too=stopped)


def review_digest(spec: Mapping[str, Any], stack_settings: str | None) -> str:
    """What a fleet preview saw of a workspace: its spec and its stack settings
    (every `stackspace:*` config value, secrets encrypted, and the salt). Any
    operation that changes what the program gets changes it."""
    blob = json.dumps({"spec": spec, "settings": stack_settings or ""}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def parse_reviews(data: Any) -> dict[str, dict[str, str]] | None:
    """The reviews a rollout is bound to (`fleet preview --save-plans`): for
    each "owner/name", the code digest and review digest it was previewed
    with. None: not bound to a review."""
    if data is None:
        return None
    ok = isinstance(data, dict) and data and all(
        isinstance(k, str) and "/" in k and isinstance(v, dict)
        and isinstance(v.get("code"), str) and isinstance(v.get("state"), str)
        for k, v in data.items())
    if not ok:
        raise OptionsError({"reviews": 'an object of "owner/name": {"code": ..., "state": ...}'})
    return {k: {"code": v["code"], "state": v["state"]} for k, v in data.items()}


def review_mismatch(review: Mapping[str, str], code: str, state: str) -> str | None:
    """Why a workspace no longer matches its review (None: it does)."""
    if review.get("code") != code:
        return "reviewed against other component code than the service runs"
    if review.get("state") != state:
        return "its config or state changed since the review"
    return None


def batch_size(batch: str, total: int) -> int:
    """Workspaces per batch: N, or P% of `total` rounded up (at least 1)."""
    if batch.endswith("%"):
        return max(1, math.ceil(total * int(batch[:-1]) / 100))
    return int(batch)


def in_use(last_activity: float | None, now: float, minutes: float) -> bool:
    """Terminal activity within the last `minutes` (the exec proxy reports it)."""
    return minutes > 0 and last_activity is not None and now - last_activity < minutes * 60


def skip_reason(ws: Mapping[str, Any] | None, outdated: bool, options: Options) -> str | None:
    """Why a workspace gets no update now (None: it gets one)."""
    if ws is None or ws.get("desired") == "deleted":
        return "deleted"
    if not outdated:
        return "already runs this code"
    if ws.get("desired") != "running" and not options.stopped_too:
        return "stopped: gets the code at its next start (or --stopped-too)"
    return None


def next_batch(pending: Iterable[str], size: int, busy: Iterable[str]) -> list[str]:
    """The next batch, in the rollout's order, of workspaces not in use: one in
    use waits (the others go past it) until its users have left it."""
    pending, busy = list(pending), set(busy)
    free = [p for p in pending if p not in busy]
    return free[:size]


def item_outcome(op: Mapping[str, Any]) -> tuple[str, str | None]:
    """An item's state from its operation: (state, detail). `queued` while it
    runs; `pending` again when a crash cut it off (it runs again)."""
    status = op.get("status")
    if status in ("queued", "running"):
        return QUEUED, None
    if status == "succeeded":
        return "succeeded", None
    if op.get("error_type") == "storage-at-risk":
        return "refused", op.get("error") or "storage at risk"
    if op.get("error_type") == "interrupted":
        return PENDING, "interrupted: runs again"
    if status == "cancelled":
        return "cancelled", op.get("error") or "the update was cancelled"
    return "failed", op.get("error") or "the update failed"


def rollout_state(states: Iterable[str], max_failures: int) -> str:
    """RUNNING until every item ended; STOPPED once failures reach the limit."""
    states = list(states)
    if sum(s == "failed" for s in states) >= max_failures:
        return STOPPED
    return RUNNING if any(s in (PENDING, QUEUED) for s in states) else FINISHED


def counts(states: Iterable[str]) -> dict[str, int]:
    out = dict.fromkeys((PENDING, QUEUED, *ENDED), 0)
    for s in states:
        out[s] = out.get(s, 0) + 1
    return out
