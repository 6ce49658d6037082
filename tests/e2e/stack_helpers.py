"""Shared steps of the backend end-to-end tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

from components.runtime import Runtime
from components.spec import WorkspaceSpec
from stacks.automation import RunResult, StackRunner
from stacks.config import StackConfig


def converger(runner: StackRunner, owner: str, runtime: Runtime, stack: str
              ) -> Callable[[WorkspaceSpec, bool], RunResult]:
    """`converge(spec, running)`: what the service does for create/stop/start/update."""
    def converge(spec: WorkspaceSpec, running: bool) -> RunResult:
        return runner.apply(StackConfig(owner=owner, spec=spec, runtime=runtime,
                                        running=running), stack)
    return converge


def assert_operator_preview_is_clean(runner: StackRunner, stack: str, secret: str) -> None:
    """`pulumi preview --stack <ws>` by hand (the local program, not the inline
    one), in the runner's work dir with the stack's settings, shows no changes
    and no secret."""
    env = {**os.environ, **runner.settings.env()}
    preview = subprocess.run(
        ["pulumi", "preview", "--stack", stack, "--expect-no-changes", "--non-interactive"],
        cwd=runner.work_dir, env=env, capture_output=True, text=True, check=False)
    assert preview.returncode == 0, preview.stdout[-2000:] + preview.stderr[-2000:]
    assert secret not in preview.stdout + preview.stderr


def ensure_namespace(core, name: str) -> str:  # noqa: ANN001 - kubernetes CoreV1Api
    """Create a Kubernetes namespace unless it exists."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    except ApiException as e:
        if e.status != 409:
            raise
    return name
