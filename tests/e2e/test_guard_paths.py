"""The storage guard's two ways on the real engine (stacks/guard.py): start and
stop of an untouched stack are checked from its state (one engine pass), and
anything that could change storage (an operator's `state unprotect`, a spec
change) is previewed again, while the workspace's data stays."""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from components.runtime import DockerRuntime
from components.spec import WorkspaceSpec
from stacks.naming import resource_base, stack_name
from stacks.settings import PROJECT_DIR
from tests.e2e.stack_helpers import converger

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("docker_provider")]
STATE = "the stack's state"


def test_guard_checks_from_state_until_storage_or_spec_changes(runner, docker_host,
                                                              docker_client):
    owner, name = "speed", f"guard-paths-{secrets.token_hex(3)}"
    runtime = DockerRuntime(name="local", host=docker_host, network_mode="none")
    spec = WorkspaceSpec.parse({"name": name, "env": {"A": "1"}})
    stack = stack_name(owner, name)
    converge = converger(runner, owner, runtime, stack)

    def pulumi(*args: str) -> None:
        env = {**os.environ, **runner.settings.env()}
        proc = subprocess.run(["pulumi", *args, "--stack", stack, "--non-interactive"],
                              cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                              check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]

    try:
        created = converge(spec, True)
        assert created.guard == STATE  # a new stack: its plan can only create
        assert "storage_attest" not in created.outputs  # the guard's, not the user's
        container = docker_client.containers.get(resource_base(owner, name))
        container.exec_run(["sh", "-c", "echo kept > /workspace/kept.txt"], user="1000")

        assert converge(spec, False).guard == STATE
        assert converge(spec, True).guard == STATE

        # An operator lifts protection: the state no longer proves anything.
        volume_urn = next(
            r["urn"] for r in runner.read_state(runner.select_or_create(stack, known=True)[0])
            ["resources"] if r["type"] == "docker:index/volume:Volume")
        pulumi("state", "unprotect", volume_urn, "--yes")
        stopped = converge(spec, False)
        assert stopped.guard is not None and "not protected" in stopped.guard
        # That run's program protected storage again: back to one pass.
        assert converge(spec, True).guard == STATE

        # A spec change is previewed, and applied.
        changed = spec.merged({"env": {"A": "2"}})
        updated = converge(changed, True)
        assert updated.guard is not None and updated.guard.startswith("a preview")
        container = docker_client.containers.get(resource_base(owner, name))
        assert container.exec_run(["sh", "-c", "echo $A; cat /workspace/kept.txt"],
                                  user="1000").output == b"2\nkept\n"
    finally:
        runner.delete(stack)
    assert not runner.exists(stack)
