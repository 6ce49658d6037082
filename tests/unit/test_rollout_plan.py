"""service.rollout_plan: a rollout's options, batches and ends."""

from __future__ import annotations

import pytest

from service.rollout_plan import (
    FINISHED,
    PENDING,
    QUEUED,
    RUNNING,
    STOPPED,
    Options,
    OptionsError,
    batch_size,
    counts,
    in_use,
    item_outcome,
    next_batch,
    parse_options,
    rollout_state,
    skip_reason,
)


def test_defaults_and_valid_options() -> None:
    assert parse_options({}) == Options()
    opts = parse_options({"batch": 3, "max_failures": 2, "skip_active_minutes": 15,
                          "stopped_too": True})
    assert opts == Options(batch="3", max_failures=2, skip_active_minutes=15.0,
                           stopped_too=True)
    assert parse_options({"batch": "25%"}).batch == "25%"


@pytest.mark.parametrize(("body", "fields"), [
    ({"batch": 0}, {"batch"}),
    ({"batch": "101%"}, {"batch"}),
    ({"batch": "ten"}, {"batch"}),
    ({"batch": True}, {"batch"}),
    ({"max_failures": 0}, {"max_failures"}),
    ({"max_failures": "1"}, {"max_failures"}),
    ({"skip_active_minutes": -1}, {"skip_active_minutes"}),
    ({"skip_active_minutes": False}, {"skip_active_minutes"}),
    ({"stopped_too": "yes"}, {"stopped_too"}),
    ({"plans": "x", "batch": -2}, {"plans", "batch"}),
])
def test_bad_options_name_their_fields(body: dict, fields: set[str]) -> None:
    with pytest.raises(OptionsError) as e:
        parse_options(body)
    assert set(e.value.errors) == fields


def test_a_body_that_is_no_object() -> None:
    with pytest.raises(OptionsError) as e:
        parse_options([1])
    assert set(e.value.errors) == {"body"}


@pytest.mark.parametrize(("batch", "total", "size"), [
    ("10", 3, 10), ("1", 50, 1), ("10%", 50, 5), ("10%", 3, 1), ("50%", 5, 3),
    ("100%", 7, 7), ("1%", 0, 1)])
def test_batch_size(batch: str, total: int, size: int) -> None:
    assert batch_size(batch, total) == size


def test_in_use() -> None:
    assert in_use(1000.0, 1000.0 + 59, 1)
    assert not in_use(1000.0, 1000.0 + 61, 1)
    assert not in_use(None, 1000.0, 5)
    assert not in_use(1000.0, 1000.0, 0)  # 0 minutes: nobody waits


def test_skip_reasons() -> None:
    running, stopped = {"desired": "running"}, {"desired": "stopped"}
    assert skip_reason(running, True, Options()) is None
    assert skip_reason(running, False, Options()) == "already runs this code"
    assert "next start" in (skip_reason(stopped, True, Options()) or "")
    assert skip_reason(stopped, True, Options(stopped_too=True)) is None
    assert skip_reason(None, True, Options()) == "deleted"
    assert skip_reason({"desired": "deleted"}, True, Options()) == "deleted"


def test_next_batch_keeps_order_and_lets_busy_ones_wait() -> None:
    assert next_batch(["a", "b", "c", "d"], 2, []) == ["a", "b"]
    assert next_batch(["a", "b", "c", "d"], 2, ["a"]) == ["b", "c"]
    assert next_batch(["a"], 2, ["a"]) == []


@pytest.mark.parametrize(("op", "outcome"), [
    ({"status": "queued"}, (QUEUED, None)),
    ({"status": "running"}, (QUEUED, None)),
    ({"status": "succeeded"}, ("succeeded", None)),
    ({"status": "failed", "error_type": "storage-at-risk", "error": "plan would delete x"},
     ("refused", "plan would delete x")),
    ({"status": "failed", "error_type": "interrupted"}, (PENDING, "interrupted: runs again")),
    ({"status": "cancelled", "error": None}, ("cancelled", "the update was cancelled")),
    ({"status": "failed", "error": "boom"}, ("failed", "boom")),
])
def test_item_outcome(op: dict, outcome: tuple) -> None:
    assert item_outcome(op) == outcome


def test_rollout_state_and_counts() -> None:
    assert rollout_state([PENDING, "succeeded"], 1) == RUNNING
    assert rollout_state([QUEUED], 1) == RUNNING
    assert rollout_state(["succeeded", "refused", "skipped"], 1) == FINISHED
    assert rollout_state(["failed", PENDING], 1) == STOPPED
    assert rollout_state(["failed", PENDING], 2) == RUNNING
    assert rollout_state([], 1) == FINISHED
    assert counts(["succeeded", "succeeded", "refused"])["succeeded"] == 2


def test_reviews_are_checked_field_by_field() -> None:
    from service.rollout_plan import parse_reviews

    assert parse_reviews(None) is None
    good = {"alice/a": {"code": "c", "state": "s", "extra": "dropped"}}
    assert parse_reviews(good) == {"alice/a": {"code": "c", "state": "s"}}
    for bad in ({}, [], {"alice": {"code": "c", "state": "s"}}, {"alice/a": {"code": "c"}},
                {"alice/a": {"code": 1, "state": "s"}}):
        with pytest.raises(OptionsError) as e:
            parse_reviews(bad)
        assert set(e.value.errors) == {"reviews"}
    with pytest.raises(OptionsError) as e:
        parse_options({"reviews": [], "batch": 0})
    assert set(e.value.errors) == {"reviews", "batch"}


def test_review_digest_and_mismatch() -> None:
    from service.rollout_plan import review_digest, review_mismatch

    base = review_digest({"name": "a", "env": {}}, "config: {}\n")
    assert base == review_digest({"env": {}, "name": "a"}, "config: {}\n")  # key order
    assert base != review_digest({"name": "a", "env": {"X": "1"}}, "config: {}\n")
    assert base != review_digest({"name": "a", "env": {}}, "config: {x: 1}\n")
    assert review_digest({}, None) == review_digest({}, "")
    review = {"code": "c1", "state": base}
    assert review_mismatch(review, "c1", base) is None
    assert "other component code" in (review_mismatch(review, "c2", base) or "")
    assert "changed since the review" in (review_mismatch(review, "c1", "other") or "")
