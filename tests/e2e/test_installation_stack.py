"""The installation id through the stack on the real engine: its stack config
key names and labels the objects, and an operator's `pulumi preview --stack`
(the local program, reading `stackspace:installation`) reproduces the plan."""

from __future__ import annotations

import secrets

import pytest

from components.runtime import DockerRuntime
from components.spec import WorkspaceSpec
from stacks.config import StackConfig
from stacks.naming import resource_base, stack_name
from tests.e2e.stack_helpers import assert_operator_preview_is_clean

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("docker_provider")]


def test_installation_names_and_labels_objects_and_operator_preview_is_clean(
        runner, docker_host, docker_client):
    owner, name, installation = "alice", f"inst-stack-{secrets.token_hex(3)}", "0a1b2c3d"
    runtime = DockerRuntime(name="local", host=docker_host, network_mode="none")
    stack = stack_name(owner, name)
    cfg = StackConfig(owner=owner, spec=WorkspaceSpec.parse({"name": name}), runtime=runtime,
                      running=True, installation=installation)
    try:
        runner.apply(cfg, stack)
        base = resource_base(owner, name, installation)
        assert base != resource_base(owner, name)
        container = docker_client.containers.get(base)
        assert container.labels["stackspace.dev/installation"] == installation
        volume = docker_client.volumes.get(f"{base}-home")
        assert volume.attrs["Labels"]["stackspace.dev/installation"] == installation
        assert_operator_preview_is_clean(runner, stack, "no-secret-here")
    finally:
        runner.delete(stack)
    assert not docker_client.containers.list(
        all=True, filters={"label": f"stackspace.dev/workspace={name}"})
    assert not docker_client.volumes.list(filters={"label": f"stackspace.dev/workspace={name}"})
