"""Three service replicas and two exec proxies on one database (SPEC §9): any
replica takes any operation, per-workspace order and one-at-a-time hold
across replicas, a replica killed mid-create has its operation taken over by
another once its lease expires, and a ticket is single-use across proxies."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from service.exec_client import ExecClientError, run_exec
from tests.faults.checks import (
    after_restart,
    assert_cut_by_the_kill,
    assert_truthful,
    converge,
    delete_clean,
)
from tests.faults.conftest import unique
from tests.faults.harness import ACTIVE, LOCK_ERRORS
from tests.replicas.conftest import Replicas

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


def workspace_runs(rs: Replicas, name: str) -> list[dict[str, Any]]:
    """Every operation of workspace `name` (the service's own recovery runs too),
    as the shared store recorded them."""
    return [o for o in (rs.store().operation(r["id"]) for r in rs.store().db.execute(
        "SELECT id FROM operations WHERE owner='admin' AND workspace=? ORDER BY seq", (name,)))
        if o is not None]


def assert_one_at_a_time(ops: list[dict[str, Any]]) -> None:
    """No two engine runs on the workspace's stack overlapped, and none met
    Pulumi's own stack lock."""
    ran = sorted((o for o in ops if o["started"] is not None), key=lambda o: o["started"])
    for before, after in zip(ran, ran[1:], strict=False):
        assert before["ended"] is not None and before["ended"] <= after["started"], \
            f"two operations ran at once: {before['kind']} and {after['kind']}"
    for o in ops:
        text = f"{o['error'] or ''} {o['error_type'] or ''}".lower()
        assert not any(e in text for e in LOCK_ERRORS), f"engine lock error: {o}"


def test_sixteen_operations_spread_over_three_replicas_never_overlap_on_a_stack(
        replicas: Replicas, docker_view):
    rs, engine = replicas, docker_view
    names = [unique("repl-many") for _ in range(8)]

    # Eight creates at once, each asked of another replica.
    with ThreadPoolExecutor(8) as pool:
        creates = list(pool.map(lambda i: rs.api(i).call(
            "POST", "/workspaces", json={"name": names[i]}).json(), range(8)))
    for i, op in enumerate(creates):
        assert rs.api(i + 1).wait_op(op["id"])["status"] == "succeeded", op

    # Then sixteen at once: per workspace a stop through one replica and a
    # start queued behind it through the next.
    def stop_then_start(i: int) -> list[dict[str, Any]]:
        stop = rs.api(i).mutate("POST", f"/workspaces/{names[i]}/stop")
        start = rs.api(i + 1).mutate("POST", f"/workspaces/{names[i]}/start?queue=true")
        return [stop, start]

    with ThreadPoolExecutor(8) as pool:
        later = [op for pair in pool.map(stop_then_start, range(8)) for op in pair]
    assert len(later) == 16
    ended = [rs.api(i + 2).wait_op(op["id"]) for i, op in enumerate(later)]
    assert [o["status"] for o in ended] == ["succeeded"] * 16, \
        [(o["kind"], o["status"], o["error"]) for o in ended]

    runners: set[str] = set()
    for i, name in enumerate(names):
        ops = workspace_runs(rs, name)
        assert [o["kind"] for o in ops if o["kind"] != "refresh"] == \
            ["create", "stop", "start"], ops  # in the order asked
        assert_one_at_a_time(ops)
        runners |= {o["lease_owner"] for o in ops}
        ws = assert_truthful(rs.api(i), engine, name)
        assert ws["state"] == "running", ws
    assert runners == set(rs.ids), f"not every replica ran operations: {runners}"

    with ThreadPoolExecutor(8) as pool:
        deletes = list(pool.map(lambda i: rs.api(i).mutate(
            "DELETE", f"/workspaces/{names[i]}"), range(8)))
    for i, op in enumerate(deletes):
        assert rs.api(i + 1).wait_op(op["id"])["status"] == "succeeded", op
    for name in names:
        assert engine.objects(name) == [], f"left on the engine: {engine.objects(name)}"


def test_a_replica_killed_mid_create_is_taken_over_after_its_lease(replicas: Replicas,
                                                                   docker_view):
    rs, engine = replicas, docker_view
    name = unique("repl-kill")
    op = rs.api(0).call("POST", "/workspaces", json={"name": name}).json()
    stack = rs.api(0).workspace(name).json()["stack"]
    # Wait until the engine is really at work (the volume exists), then find
    # the replica running the create and kill -9 its whole process tree.
    deadline = time.monotonic() + 300
    while not engine.storage(name):
        assert rs.api(0).op(op["id"])["status"] in ACTIVE, "the create ended"
        assert time.monotonic() < deadline, "the create never made its volume"
        time.sleep(0.02)
    running = rs.store().operation(op["id"])
    assert running is not None and running["status"] == "running", running
    victim = rs.index_of(running["lease_owner"])
    killed_at = time.time()
    rs.services[victim].kill9()
    storage_at_kill = engine.storage(name)
    survivor = rs.api(victim + 1)

    # Another replica ends it once the lease has expired: the user sees it end.
    ended = survivor.wait_op(op["id"], timeout=300)
    assert_cut_by_the_kill(ended, killed_at)
    if ended["status"] == "failed":  # else the victim had ended it before it died
        taker = rs.store().operation(op["id"])["lease_owner"]
        assert taker != rs.ids[victim] and taker in rs.ids, taker
    # The workspace settles in a state the runtime agrees with, the user's
    # retry works on the same storage, and delete leaves nothing.
    after_restart(survivor, engine, name, op["id"], storage_at_kill)
    converge(survivor, engine, name, "running")
    assert engine.storage(name) == storage_at_kill
    assert_one_at_a_time(workspace_runs(rs, name))
    delete_clean(survivor, engine, name, stack)
    rs.services[victim].start("serve")  # back for the next test


def test_a_ticket_redeemed_on_one_proxy_is_refused_on_the_other(replicas: Replicas,
                                                                docker_view):
    rs, engine = replicas, docker_view
    name = unique("repl-ticket")
    assert rs.api(1).run_op("POST", "/workspaces", json={"name": name})["status"] == "succeeded"
    grant = rs.api(2).call("POST", f"/workspaces/{name}/terminals", json={
        "command": ["sh", "-c", "echo hello from $(hostname); exit 3"], "tty": False})
    assert grant.status_code == 201, grant.text
    ticket = grant.json()["ticket"]

    out = io.BytesIO()
    code = run_exec(rs.proxies[0].url, ticket, stdin=io.BytesIO(), stdout=out,
                    stderr=io.BytesIO())
    assert code == 3 and out.getvalue().startswith(b"hello from "), (code, out.getvalue())

    for proxy in (rs.proxies[1], rs.proxies[0]):  # replayed on the other proxy, or this one
        replay = io.BytesIO()
        with pytest.raises(ExecClientError, match="ticket already used"):
            run_exec(proxy.url, ticket, stdin=io.BytesIO(), stdout=replay, stderr=replay)
        assert replay.getvalue() == b""

    # The second proxy itself works: a fresh ticket runs there.
    fresh = rs.api(0).call("POST", f"/workspaces/{name}/terminals",
                           json={"command": ["true"], "tty": False}).json()["ticket"]
    assert run_exec(rs.proxies[1].url, fresh, stdin=io.BytesIO(), stdout=io.BytesIO(),
                    stderr=io.BytesIO()) == 0
    delete_clean(rs.api(0), engine, name, rs.api(0).workspace(name).json()["stack"])
