"""`stackspace stack` (service/operator.py) on the real Pulumi CLI: the plain
CLI runs on the workspace's stack with its settings from the store; settings
an operator changes go back to the store, unless an operation is in flight."""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from service import lifecycle
from service.operator import WorkspaceNotFound, run_pulumi
from service.store import Store
from stacks.naming import stack_name
from stacks.settings import StackFiles

pytestmark = pytest.mark.e2e


def test_operator_changes_reach_the_store_unless_an_operation_runs(pulumi_settings, tmp_path):
    store = Store(tmp_path / "stackspace.db")
    owner, name = "alice", f"state-op-{secrets.token_hex(3)}"
    stack = stack_name(owner, name)
    op, _ = store.create_workspace(owner, name, stack, {"name": "local", "type": "docker"},
                                   {"name": name}, {}, quota=10)
    store.finish_operation(op, "succeeded", lifecycle.Settled("stopped", "stopped"))
    env = {**os.environ, **pulumi_settings.env()}
    with StackFiles(pulumi_settings.pulumi_home, stack, None) as files:
        init = subprocess.run([pulumi_settings.pulumi_binary, "stack", "init", stack,
                               "--non-interactive"], cwd=files.path, env=env,
                              capture_output=True, text=True, check=False)
        assert init.returncode == 0, init.stderr
    store.update_workspace(owner, name, stack_settings=files.text)
    warnings: list[str] = []
    try:
        code = run_pulumi(store, pulumi_settings, f"{owner}/{name}",
                          ["config", "set", "stackspace:note", "from-operator"], warnings.append)
        assert code == 0 and not warnings
        saved = store.workspace(owner, name)["stack_settings"]
        assert "stackspace:note: from-operator" in saved
        assert saved.startswith(files.text.splitlines()[0])  # the same salt

        # By stack name too; an operation in flight keeps the store as it is.
        store.request_operation(owner, name, "start", queue=False)
        code = run_pulumi(store, pulumi_settings, stack,
                          ["config", "set", "stackspace:note", "later"], warnings.append)
        assert code == 0 and len(warnings) == 1 and "not saved" in warnings[0]
        assert store.workspace(owner, name)["stack_settings"] == saved
        # A failing command's exit code is the command's.
        assert run_pulumi(store, pulumi_settings, stack, ["config", "get", "nope:missing"],
                          warnings.append) != 0
        with pytest.raises(WorkspaceNotFound):
            run_pulumi(store, pulumi_settings, f"{owner}/missing", ["stack", "ls"])
    finally:
        with StackFiles(pulumi_settings.pulumi_home, stack,
                        store.workspace(owner, name)["stack_settings"]) as files:
            subprocess.run([pulumi_settings.pulumi_binary, "stack", "rm", stack, "--yes",
                            "--non-interactive"], cwd=files.path, env=env, check=True,
                           capture_output=True)
