"""When the runner's dispatcher next has to look by itself (pure logic).

The dispatcher is woken by the store (service.notify) for work queued, a
cancel asked for, or an operation ended. Everything else it does falls due at
a time it can compute: a run's timeout, a cancel's grace ending, a delete
retry, a workspace going idle, a takeover check, a prune. It sleeps until the
soonest of those, never longer than a cap (a missed wake-up costs at most the
cap), instead of waking on a fixed tick.
"""

from __future__ import annotations

from collections.abc import Iterable

# A run not yet on a worker when it had to be interrupted is asked again this soon.
RETRY_SOON = 0.2


def run_due(started: float, interrupted: float | None, timeout: float,
            grace: float) -> float:
    """When a running operation next needs the dispatcher (monotonic s): its
    timeout; once interrupted, the end of the grace before its kill."""
    return started + timeout if interrupted is None else interrupted + grace


def sleep_for(now: float, due: Iterable[float | None], cap: float) -> float:
    """Seconds to sleep from `now` until the soonest deadline in `due` (None:
    none), at most `cap`. Deadlines not in the future are left out: they were
    just handled, and what still holds them up (an operation in flight) wakes
    the dispatcher when it ends."""
    future = [d - now for d in due if d is not None and d > now]
    return min([cap, *future])


def from_wall(at: float | None, wall_now: float, now: float) -> float | None:
    """A store's unix time as a monotonic deadline (None stays None)."""
    return None if at is None else now + (at - wall_now)
