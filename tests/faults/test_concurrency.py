"""Concurrent mutations and cancels against one workspace (SPEC §4: one
operation at a time per workspace, in order): the engine never runs two
operations on one stack, so no operation's run overlaps another's and none
fails on Pulumi's own lock."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.faults.checks import assert_truthful, converge, delete_clean
from tests.faults.conftest import unique
from tests.faults.harness import ACTIVE, LOCK_ERRORS, LiveService

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]


def _mutation(i: int, name: str, queue: bool) -> tuple[str, str, dict | None]:
    q = "?queue=true" if queue else ""
    return [("POST", f"/workspaces/{name}/stop{q}", None),
            ("POST", f"/workspaces/{name}/start{q}", None),
            ("PATCH", f"/workspaces/{name}{q}", {"env": {"ROUND": str(i)}})][i % 3]


def assert_one_at_a_time(ops: list[dict[str, Any]]) -> None:
    """No two runs on the workspace overlap, and none met Pulumi's lock."""
    ran = sorted((o for o in ops if o["started"] is not None), key=lambda o: o["started"])
    for before, after in zip(ran, ran[1:], strict=False):
        assert before["ended"] is not None and before["ended"] <= after["started"], \
            f"two operations ran at once: {before} and {after}"
    for o in ops:
        text = f"{o['error'] or ''} {o['error_type'] or ''}".lower()
        assert not any(e in text for e in LOCK_ERRORS), f"engine lock error: {o}"


def test_concurrent_mutations_and_cancels_never_overlap(docker_faults: LiveService,
                                                        docker_view):
    svc, engine = docker_faults, docker_view
    svc.ensure_running()
    name = unique("fault-race")
    created = svc.run_op("POST", "/workspaces", json={"name": name})
    assert created["status"] == "succeeded", created
    stack = svc.workspace(name).json()["stack"]
    op_ids = [created["id"]]

    def fire(args: tuple[str, str, dict | None]) -> Any:
        method, path, body = args
        return svc.call(method, path, json=body)

    # Without ?queue=true exactly one of a burst of mutations is admitted.
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(fire, [_mutation(i, name, False) for i in range(6)]))
    assert sorted(r.status_code for r in answers) == [202] + [409] * 5, \
        [(r.status_code, r.text[:100]) for r in answers]
    op_ids += [r.json()["id"] for r in answers if r.status_code == 202]

    # With ?queue=true all are admitted, and run one at a time in order...
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(fire, [_mutation(i, name, True) for i in range(6)]))
    assert [r.status_code for r in answers] == [202] * 6
    queued = [r.json()["id"] for r in answers]
    op_ids += queued

    # ...while cancels race the dispatcher: several at once on the running
    # operation (one SIGINT is a graceful cancel, a second a hard kill), and
    # on each queued one just as the operation before it ends.
    def cancel_storm(op_id: str) -> None:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: svc.call("POST", f"/operations/{op_id}/cancel"), range(4)))

    def canceller() -> None:
        deadline = time.monotonic() + 600
        for i, op_id in enumerate(queued):
            while svc.op(op_id)["status"] == "queued" and time.monotonic() < deadline:
                if i == 0 or svc.op(queued[i - 1])["status"] not in ACTIVE:
                    break
                time.sleep(0.02)
            if i % 2 == 0:
                cancel_storm(op_id)

    worker = threading.Thread(target=canceller)
    worker.start()
    worker.join(timeout=900)
    ops = [svc.wait_op(op_id) for op_id in op_ids]
    assert_one_at_a_time(ops)
    assert [o["status"] for o in ops if o["status"] not in ("succeeded", "failed",
                                                             "cancelled")] == []

    # The workspace is not harmed: it settles truthfully and converges.
    assert_truthful(svc, engine, name)
    converge(svc, engine, name, "running")
    converge(svc, engine, name, "stopped")
    delete_clean(svc, engine, name, stack)


def test_parallel_creates_all_run(docker_faults: LiveService, docker_view):
    """Creates racing the dispatcher are never failed as 'interrupted before
    they started' (the operation row must not be claimable before its inputs)."""
    svc, engine = docker_faults, docker_view
    svc.ensure_running()
    names = [unique("fault-par") for _ in range(3)]
    with ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(lambda n: svc.call("POST", "/workspaces", json={"name": n}),
                                names))
    assert [r.status_code for r in answers] == [202] * len(names)
    ops = [svc.wait_op(r.json()["id"]) for r in answers]
    assert [o["status"] for o in ops] == ["succeeded"] * len(names), ops
    for name in names:
        delete_clean(svc, engine, name, assert_truthful(svc, engine, name)["stack"])
