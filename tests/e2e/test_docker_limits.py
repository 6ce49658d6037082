"""Limits of a Docker workspace (SPEC §8, issue 17), through the service on the
real engine: its container has the runtime's pids limit after create, after a
limit changed by hand and a start, after stop/start and after an update that
replaces it; a main command that forks more than the limit from its first
instant, and a shell that does the same through `stackspace exec`, are both
stopped short of it; and the storage it writes past its request shows in
GET /workspaces/{name} (`storage.over`) and in /metrics."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from typing import Any

import pytest
import requests

from tests.api.conftest import custom_service
from tests.e2e.remote_helpers import labelled, operate, stackspace_exec

pytestmark = pytest.mark.e2e

LIMIT = 64
MiB = 2**20
# Forks 100 processes as it starts, once per workspace (a marker on its
# storage), then stays up; dash gives up at the first fork refused.
BOMB = ("if [ ! -e .bombed ]; then touch .bombed; i=0; while [ $i -lt 100 ]; do "
        "sleep 2 & i=$((i+1)); echo $i > .forked; done; fi; exec sleep infinity")


def workspace_container(docker_client: Any, name: str) -> Any:
    (found,) = docker_client.containers.list(filters={"label": [
        f"stackspace.dev/workspace={name}", "stackspace.dev/owner=alice",
        "stackspace.dev/role=workspace"]})
    return found


def pids_limit(docker_client: Any, name: str) -> tuple[str, int | None]:
    c = workspace_container(docker_client, name)
    return c.id, c.attrs["HostConfig"].get("PidsLimit")


def poll(what: str, probe: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := probe()) is not None:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def storage_view(svc: Any, name: str) -> dict[str, Any]:
    r = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice)
    assert r.status_code == 200, r.text
    return r.json()["storage"]


def over_metric(svc: Any, name: str) -> float | None:
    """The workspace's stackspace_workspace_storage_over sample, if exported."""
    text = requests.get(f"{svc.url}/metrics", timeout=30).text
    for line in text.splitlines():
        if (line.startswith("stackspace_workspace_storage_over{")
                and f'workspace="{name}"' in line):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_pids_limit_and_storage_use(tmp_path, docker_host, docker_client, pulumi_settings,
                                    docker_provider):
    runtimes = [{"name": "local", "type": "docker", "host": docker_host,
                 "network_mode": "none", "pids_limit": LIMIT}]
    name = f"limits-{secrets.token_hex(3)}"
    with custom_service(tmp_path, docker_host, pulumi_settings, runtimes=runtimes,
                        storage_scan_seconds=1) as svc:
        try:
            op = operate(svc, "POST", "", json={"name": name, "resources": {"storage": "2Mi"},
                                                "command": ["sh", "-c", BOMB]})
            assert op["status"] == "succeeded", op.get("error")
            first, limit = pids_limit(docker_client, name)
            assert limit == LIMIT
            # The limit was there before the command's first fork (tini and the
            # shell count too); the restart policy then brings it back up.
            forked = poll("the command's fork count",
                          lambda: _read_int(svc, name, "/workspace/.forked"), timeout=90)
            assert 0 < forked < LIMIT, forked

            # More forks than the limit allows: the shell is refused a process
            # well before its 100th (tini, the main command and the shell count too).
            bomb = stackspace_exec(svc, name, "sh", "-c",
                                   'i=0; while [ $i -lt 100 ]; do sleep 3 & i=$((i+1)); '
                                   'echo $i > /tmp/forked; done')
            assert bomb.returncode != 0, bomb.stderr
            assert b"fork" in bomb.stderr.lower(), bomb.stderr
            forked = poll("the fork count", lambda: _read_int(svc, name, "/tmp/forked"),
                          timeout=90)
            assert 0 < forked < LIMIT, forked

            # A limit lifted by hand is set again by the next operation (a start).
            subprocess.run(["docker", "update", "--pids-limit", "-1", first], check=True,
                           capture_output=True, env={**os.environ, "DOCKER_HOST": docker_host})
            assert pids_limit(docker_client, name)[1] != LIMIT
            assert operate(svc, "POST", f"/{name}/start")["status"] == "succeeded"
            assert pids_limit(docker_client, name) == (first, LIMIT)

            # Storage: measured, under its request, then over it once written past it.
            before = poll("a first measurement",
                          lambda: (s := storage_view(svc, name))["used_bytes"] is not None
                          and s or None)
            assert before["requested_bytes"] == 2 * MiB and before["over"] is False
            wrote = stackspace_exec(svc, name, "sh", "-c",
                                    "head -c 4194304 /dev/zero > /workspace/big")
            assert wrote.returncode == 0, wrote.stderr
            after = poll("the write to be measured",
                         lambda: (s := storage_view(svc, name))["over"] and s or None)
            assert after["used_bytes"] >= 4 * MiB and after["enforced"] is False
            assert poll("the metric", lambda: over_metric(svc, name) or None) == 1.0

            # Stop/start and an update that replaces the container keep the limit.
            assert operate(svc, "POST", f"/{name}/stop")["status"] == "succeeded"
            assert operate(svc, "POST", f"/{name}/start")["status"] == "succeeded"
            second, limit = pids_limit(docker_client, name)
            assert second != first and limit == LIMIT
            op = operate(svc, "PATCH", f"/{name}", json={"env": {"LIMITS": "1"}})
            assert op["status"] == "succeeded", op.get("error")
            third, limit = pids_limit(docker_client, name)
            assert third != second and limit == LIMIT
        finally:
            op = operate(svc, "DELETE", f"/{name}?queue=true")
            assert op["status"] == "succeeded", op.get("error")
    assert labelled(docker_client, "alice", name) == ([], [])


def _read_int(svc: Any, name: str, path: str) -> int | None:
    # Retried: the exec itself needs a process until the sleeps are gone, and
    # the workspace may be restarting.
    r = stackspace_exec(svc, name, "cat", path)
    return int(r.stdout) if r.returncode == 0 else None
