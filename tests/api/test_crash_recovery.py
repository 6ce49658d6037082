"""kill -9 of the service's main process (only: its workers and the Pulumi CLI
they run are left to fend for themselves) in the middle of a create, then a
restart on the same data dir: the operation ends interrupted, the workspace
shows the state Docker really has, a retry succeeds on the same storage, and
delete leaves nothing. tests/faults/ kills the whole process tree instead."""

from __future__ import annotations

import time

import pytest

from tests.faults.checks import after_restart, assert_cut_by_the_kill, converge, delete_clean
from tests.faults.conftest import live_service, unique
from tests.faults.engine import DockerView

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("docker_provider")]


def test_kill_9_mid_operation_recovers(tmp_path, docker_host, docker_client, pulumi_bin,
                                       pulumi_home, store_backend):
    engine = DockerView(docker_client)
    runtimes = [{"name": "local", "type": "docker", "host": docker_host,
                 "network_mode": "none"}]
    database_url = store_backend("crash")
    settings = {"database_url": database_url} if database_url else {}
    with live_service(tmp_path, runtimes, pulumi_bin, pulumi_home, engine,
                      settings=settings) as svc:
        name = unique("crash")
        op = svc.call("POST", "/workspaces", json={"name": name}).json()
        stack = svc.workspace(name).json()["stack"]
        # Wait until the engine is really at work: the volume exists.
        deadline = time.monotonic() + 300
        while not engine.storage(name):
            assert svc.op(op["id"])["status"] in ("queued", "running"), "create ended"
            assert time.monotonic() < deadline, "the create never made its volume"
            time.sleep(0.02)
        assert svc.proc is not None
        killed_at = time.time()
        svc.proc.kill()
        svc.proc.wait()
        volumes_at_kill = engine.storage(name)
        assert volumes_at_kill

        svc.start()
        assert_cut_by_the_kill(svc.op(op["id"]), killed_at)
        ws = after_restart(svc, engine, name, op["id"], volumes_at_kill)
        if ws["state"] != "running":
            # The user asked for a running workspace: say why it is not.
            assert "interrupted" in (ws["last_error"] or ""), \
                (ws["state"], ws["desired"], ws["last_error"], ws["last_operation"])

        # The user retries: it works (no stale lock) on the same storage.
        ws = converge(svc, engine, name, "running")
        assert engine.storage(name) == volumes_at_kill
        delete_clean(svc, engine, name, stack)
