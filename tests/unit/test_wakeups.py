"""When the dispatcher next looks by itself (service.wakeups): at the soonest
future deadline, never later than the cap, never for a deadline already past."""

from __future__ import annotations

import pytest

from service.wakeups import from_wall, run_due, sleep_for


def test_a_run_is_due_at_its_timeout_then_at_the_end_of_its_grace():
    assert run_due(started=100.0, interrupted=None, timeout=600.0, grace=30.0) == 700.0
    assert run_due(started=100.0, interrupted=650.0, timeout=600.0, grace=30.0) == 680.0


@pytest.mark.parametrize(("due", "expected"), [
    ([], 30.0),                          # nothing timed: the cap
    ([None, None], 30.0),                # unknown deadlines count for nothing
    ([105.0], 5.0),                      # the one deadline
    ([140.0, 112.5, None, 101.0], 1.0),  # the soonest of several
    ([200.0], 30.0),                     # beyond the cap: the cap
    ([100.0, 90.0], 30.0),               # due now or past: handled, not a busy loop
    ([90.0, 103.0], 3.0),                # a past one does not hide a future one
])
def test_the_sleep_lasts_until_the_soonest_future_deadline_at_most_the_cap(due, expected):
    assert sleep_for(100.0, due, cap=30.0) == pytest.approx(expected)


def test_store_times_become_monotonic_deadlines():
    assert from_wall(None, wall_now=1_000.0, now=5.0) is None
    assert from_wall(1_012.0, wall_now=1_000.0, now=5.0) == 17.0
    assert from_wall(990.0, wall_now=1_000.0, now=5.0) == -5.0
