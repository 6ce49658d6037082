"""The lifecycle rules (service/lifecycle.py), exhaustively and as a state
machine against a model of what really exists on the runtime."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from service import lifecycle as lc

ERRORS = (None, "storage-at-risk", "not-started", lc.INTERRUPTED, lc.CANCELLED, "InitFailed")
BUSY = ("provisioning", "starting", "stopping")


def test_delete_is_final_and_admits_only_delete():
    for kind in lc.KINDS:
        if kind == "delete":
            assert lc.admit(kind, "deleted") == "deleted"
        else:
            with pytest.raises(lc.Refused):
                lc.admit(kind, "deleted")


def test_admission_sets_the_desired_state():
    for desired in ("running", "stopped"):
        assert lc.admit("create", desired) == "running"
        assert lc.admit("start", desired) == "running"
        assert lc.admit("stop", desired) == "stopped"
        assert lc.admit("delete", desired) == "deleted"
        # An update or a recovery keeps what the user wanted.
        assert lc.admit("update", desired) == desired
        assert lc.admit("refresh", desired) == desired
    with pytest.raises(ValueError, match="unknown"):
        lc.admit("reboot", "running")


def test_every_run_writes_running_and_deleting_explicitly():
    for kind, desired in itertools.product(lc.KINDS, lc.DESIRED):
        flags = lc.run_flags(kind, desired)
        assert isinstance(flags.running, bool) and isinstance(flags.deleting, bool)
        # Only delete lifts the storage protection, and it never runs a workload.
        assert flags.deleting == (kind == "delete")
        if flags.deleting:
            assert not flags.running
    # Updating a stopped workspace keeps it stopped (no workload appears).
    assert lc.run_flags("update", "stopped").running is False
    assert lc.run_flags("update", "running").running is True


def test_busy_states_are_states():
    for kind, desired, state in itertools.product(lc.KINDS, lc.DESIRED, lc.STATES):
        assert lc.busy_state(kind, desired, state) in lc.STATES
    assert lc.busy_state("update", "stopped", "stopped") == "stopped"
    assert lc.busy_state("refresh", "running", "failed") == "failed"


@pytest.mark.parametrize("kind", lc.KINDS)
def test_settle_covers_every_outcome(kind):
    for ok, error, desired, prev, prev_desired, seen in itertools.product(
            (True, False), ERRORS, lc.DESIRED, lc.STATES, lc.DESIRED, (True, False, None)):
        if ok and error:
            continue
        s = lc.settle(kind, ok=ok, error_type=error, desired=desired, prev_state=prev,
                      prev_desired=prev_desired, observed_running=seen)
        if ok and kind == "delete":
            assert s.state is None
            continue
        assert s.state in lc.STATES
        # A settled workspace is never left showing a transition, except a
        # delete that is being retried.
        assert s.state not in BUSY or (not ok and error in lc.UNCHANGED and s.state == prev)
        if kind == "delete":
            assert s.state == "deleting" and s.retry_delete and s.desired == "deleted"
        elif ok and kind != "refresh":
            assert s.state == ("running" if lc.run_flags(kind, desired).running else "stopped")
        elif not ok and error in lc.UNCHANGED:
            expected = "failed" if kind == "create" else prev
            assert s.state == expected
            if kind != "create":
                assert s.desired == (desired if desired == "deleted" else prev_desired)
        elif error in (lc.INTERRUPTED, lc.CANCELLED) or kind == "refresh":
            assert s.state == {True: "running", False: "stopped", None: "failed"}[seen]
        else:
            assert s.state == "failed"


def test_delete_retry_backs_off_and_is_capped():
    delays = [lc.delete_retry_delay(n) for n in range(1, 12)]
    assert delays == sorted(delays)
    assert delays[0] == lc.DELETE_RETRY_BASE
    assert max(delays) == lc.DELETE_RETRY_CAP


class WorkspaceModel(RuleBasedStateMachine):
    """A workspace driven through random requests and outcomes, against a
    model of the runtime (does the workload really run?). Whatever happens,
    a `running`/`stopped` state is the truth, and delete always finishes."""

    def __init__(self) -> None:
        super().__init__()
        self.state = "provisioning"
        self.desired = "running"
        self.truly_running = False
        self.gone = False
        self.pending: list[tuple[str, str, str]] = [("create", "provisioning", "running")]

    @precondition(lambda self: not self.gone)
    @rule(kind=st.sampled_from(lc.USER_KINDS[1:]))
    def request(self, kind: str) -> None:
        try:
            new = lc.admit(kind, self.desired)
        except lc.Refused:
            assert self.desired == "deleted" and kind != "delete"
            return
        self.pending.append((kind, self.state, self.desired))
        self.desired = new

    @precondition(lambda self: bool(self.pending) and not self.gone)
    @rule(result=st.sampled_from(["ok", "refused", "failed", "interrupted", "cancelled"]),
          side_effect=st.booleans())
    def run_next(self, result: str, side_effect: bool) -> None:
        kind, _, prev_desired = self.pending.pop(0)
        prev_state = self.state
        self.state = lc.busy_state(kind, self.desired, self.state)
        flags = lc.run_flags(kind, self.desired)
        if result == "ok":
            self.truly_running = flags.running
            if kind == "delete":
                self.gone = True
        elif result in ("failed", "interrupted", "cancelled") and side_effect:
            # A run cut short may or may not have reached its goal.
            self.truly_running = flags.running
        error = {"ok": None, "refused": "storage-at-risk", "failed": "InitFailed",
                 "interrupted": lc.INTERRUPTED, "cancelled": lc.CANCELLED}[result]
        s = lc.settle(kind, ok=result == "ok", error_type=error, desired=self.desired,
                      prev_state=prev_state, prev_desired=prev_desired,
                      observed_running=self.truly_running, superseded=bool(self.pending))
        if s.state is None:
            assert kind == "delete" and result == "ok"
            return
        self.state, self.desired = s.state, s.desired
        if s.retry_delete:
            self.pending.insert(0, ("delete", self.state, "deleted"))

    @precondition(lambda self: self.gone)
    @rule()
    def deleted_stays_deleted(self) -> None:
        assert self.desired == "deleted"

    @invariant()
    def running_and_stopped_are_true(self) -> None:
        if self.gone or self.pending and self.state in BUSY:
            return
        if self.state == "running":
            assert self.truly_running
        if self.state == "stopped":
            assert not self.truly_running

    @invariant()
    def deletion_is_sticky(self) -> None:
        if any(k == "delete" for k, _, _ in self.pending):
            assert self.desired == "deleted"


TestWorkspaceModel = WorkspaceModel.TestCase
TestWorkspaceModel.settings = settings(max_examples=300, stateful_step_count=40,
                                       deadline=None)



def test_success_reports_what_the_run_did_not_what_was_asked_meanwhile():
    # An update built while the workspace should run keeps its container; a stop
    # requested during that run changes the desire, not what the run left.
    s = lc.settle("update", ok=True, error_type=None, desired="stopped", prev_state="running",
                  prev_desired="running", observed_running=None, ran_as="running")
    assert (s.state, s.desired) == ("running", "stopped")
    s = lc.settle("update", ok=True, error_type=None, desired="running", prev_state="stopped",
                  prev_desired="stopped", observed_running=None, ran_as="stopped")
    assert (s.state, s.desired) == ("stopped", "running")
