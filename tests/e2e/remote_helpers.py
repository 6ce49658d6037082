"""Shared steps of the remote Docker host tests: clients for the remote engine,
operations over HTTP, `stackspace exec` through the service and the proxy."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from components.clients import docker_client
from components.runtime import parse_runtime


def remote_client(runtime: dict[str, str]) -> Any:
    """The Docker SDK against the remote engine, as the runtime reaches it."""
    return docker_client(parse_runtime(runtime))  # type: ignore[arg-type]


def labelled(client: Any, owner: str, name: str) -> tuple[list[Any], list[Any]]:
    """Containers (any state) and volumes carrying the workspace's labels."""
    filters = {"label": [f"stackspace.dev/workspace={name}", f"stackspace.dev/owner={owner}"]}
    return (client.containers.list(all=True, filters=filters),
            client.volumes.list(filters=filters))


def wait_op(svc: Any, token: str, op_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op = svc.call("GET", f"/api/v1/operations/{op_id}", token).json()
        if op["status"] not in ("queued", "running"):
            return op
        time.sleep(0.5)
    raise AssertionError(f"operation {op_id} did not end")


def operate(svc: Any, method: str, path: str, **kw: Any) -> dict[str, Any]:
    r = svc.call(method, f"/api/v1/workspaces{path}", svc.alice, **kw)
    assert r.status_code == 202, r.text
    return wait_op(svc, svc.alice, r.json()["id"])


def stackspace_exec(svc: Any, name: str, *command: str, stdin: Any = subprocess.DEVNULL,
                    token: str | None = None) -> subprocess.CompletedProcess:
    """`stackspace exec NAME -- COMMAND` as a user runs it (stdin: bytes or a file)."""
    env = {**os.environ, "STACKSPACE_URL": svc.url, "STACKSPACE_TOKEN": token or svc.alice}
    data = stdin if isinstance(stdin, bytes) else None
    return subprocess.run([sys.executable, "-m", "service.cli", "exec", name, "--", *command],
                          input=data, stdin=None if data is not None else stdin, env=env,
                          capture_output=True, timeout=300, check=False)
