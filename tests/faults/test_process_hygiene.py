"""Process hygiene of `stackspace run` (issue 9): SIGTERM and SIGINT stop the
service, the exec proxy and the workers, and free the ports for the next run;
a service started with SIGINT ignored (`nohup cmd &`) can still cancel; a
killed worker costs at most its own operation."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.faults.checks import assert_cut_by_the_kill, assert_truthful, converge, delete_clean
from tests.faults.conftest import live_service, unique
from tests.faults.harness import (
    LiveService,
    alive,
    any_resource_event,
    port_free,
    process_tree,
    wait_gone,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"


def proxy_pids(svc: LiveService) -> list[int]:
    assert svc.proc is not None
    return [p for p in process_tree(svc.proc.pid) if "service.cli proxy" in cmdline(p)]


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def service_pids(svc: LiveService) -> set[int]:
    """The service's own processes: the one started (the HTTP server's arbiter)
    and the HTTP worker forked from it, which hosts the operation runner."""
    assert svc.proc is not None
    own = cmdline(svc.proc.pid)
    return {p for p in process_tree(svc.proc.pid) if cmdline(p) == own}


def busy_workers(svc: LiveService) -> set[int]:
    """The runner's worker processes that are running a Pulumi CLI."""
    assert svc.proc is not None
    service = service_pids(svc)
    found = set()
    for pid in process_tree(svc.proc.pid):
        if cmdline(pid).split(" ")[0].rsplit("/", 1)[-1] != "pulumi":
            continue
        with contextlib.suppress(OSError, ValueError):
            while parent(pid) not in service:
                pid = parent(pid)
            found.add(pid)
    return found - set(proxy_pids(svc))


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def assert_whole_service_up(svc: LiveService) -> None:
    """The API answers and this run's own proxy holds the proxy port."""
    deadline = time.monotonic() + 30
    while not (proxy_pids(svc) and accepts(svc.proxy_port)):
        assert time.monotonic() < deadline, f"the exec proxy is not up: {svc.tail()}"
        time.sleep(0.3)
    time.sleep(1)  # a proxy that cannot bind exits at once: still there?
    assert proxy_pids(svc), f"the exec proxy died: {svc.tail()}"


def test_sigterm_and_sigint_stop_service_proxy_and_workers_and_a_second_run_works(
        tmp_path, docker_runtime, pulumi_bin, pulumi_home, docker_view):
    engine = docker_view
    with live_service(tmp_path, docker_runtime, pulumi_bin, pulumi_home, engine) as svc:
        assert_whole_service_up(svc)
        name = unique("fault-hyg")
        assert svc.run_op("POST", "/workspaces", json={"name": name})["status"] == "succeeded"
        for sig, then in ((signal.SIGTERM, "stopped"), (signal.SIGINT, "running")):
            assert svc.proc is not None
            tree = process_tree(svc.proc.pid)
            assert len(tree) >= 4, "expected the service, its HTTP worker, the proxy and a worker"
            os.kill(svc.proc.pid, sig)
            svc.proc.wait(timeout=60)
            left = wait_gone(tree, timeout=30)
            assert not left, f"{sig.name} left running: " + "; ".join(
                f"{p} {cmdline(p)}" for p in left)
            assert port_free(svc.port) and port_free(svc.proxy_port), sig.name

            svc.start()  # same data dir, same ports
            assert_whole_service_up(svc)
            assert "Traceback" not in svc.tail(2000)
            converge(svc, engine, name, then)  # and its workers run operations
        delete_clean(svc, engine, name, assert_truthful(svc, engine, name)["stack"])


def test_cancel_reaches_the_engine_when_sigint_is_ignored(tmp_path, docker_runtime, pulumi_bin,
                                                          pulumi_home, docker_view):
    """Started as `nohup stackspace run &` starts it (SIGINT ignored), the
    service still cancels a running create: it ends cancelled (or failed by the
    cancel) before making the workspace, and a retry on the stack succeeds."""
    engine = docker_view
    with live_service(tmp_path, docker_runtime, pulumi_bin, pulumi_home, engine,
                      sigint_ignored=True) as svc:
        name = unique("fault-nohup")
        op = svc.call("POST", "/workspaces", json={"name": name}).json()
        matched, _ = svc.follow(op["id"], any_resource_event)
        assert matched, "the create ended before any resource step"
        r = svc.call("POST", f"/operations/{op['id']}/cancel")
        assert r.status_code == 202, r.text
        ended = svc.wait_op(op["id"], timeout=300)
        assert ended["status"] in ("cancelled", "failed"), ended
        if ended["status"] == "failed":
            assert "cancel" in (ended["error"] or "").lower(), ended
        assert not [w for w in engine.workloads(name) if w.running], \
            "the cancelled create went on to start the workspace"
        ws = assert_truthful(svc, engine, name)
        converge(svc, engine, name, "running")
        delete_clean(svc, engine, name, ws["stack"])


def test_a_killed_worker_costs_only_its_operation(tmp_path, docker_runtime, pulumi_bin,
                                                 pulumi_home, docker_view):
    engine = docker_view
    with live_service(tmp_path, docker_runtime, pulumi_bin, pulumi_home, engine) as svc:
        name = unique("fault-worker")
        op = svc.call("POST", "/workspaces", json={"name": name}).json()
        matched, _ = svc.follow(op["id"], any_resource_event)
        assert matched, "the create ended before any resource step"
        # The busy worker is the one running a Pulumi CLI (between two CLI
        # runs of one operation there may be none for a moment).
        deadline = time.monotonic() + 120
        while not (busy := busy_workers(svc)) and time.monotonic() < deadline:
            assert svc.op(op["id"])["status"] in ("queued", "running"), "create ended"
            time.sleep(0.05)
        assert len(busy) == 1, [(w, cmdline(w)) for w in busy]
        assert svc.proc is not None and not busy & service_pids(svc), "no worker process"
        killed_at = time.time()
        os.kill(busy.pop(), signal.SIGKILL)
        assert_cut_by_the_kill(svc.wait_op(op["id"], timeout=300), killed_at)
        assert svc.proc is not None and alive(svc.proc.pid), "the service died with a worker"
        assert_truthful(svc, engine, name)
        # Later operations still run: a retry, and a second workspace.
        converge(svc, engine, name, "running")
        other = unique("fault-worker2")
        assert svc.run_op("POST", "/workspaces", json={"name": other})["status"] == "succeeded"
        for ws_name in (name, other):
            delete_clean(svc, engine, ws_name, svc.workspace(ws_name).json()["stack"])
