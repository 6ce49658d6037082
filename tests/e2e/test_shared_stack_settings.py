"""Stack settings in shared state (SPEC §9) on the real engine and Docker Engine:
a run's config and encryption salt live in a private work dir materialised
from text the caller keeps (the service: its store), never in the checkout,
so another replica (another process, another work dir) runs the same stack
with its secrets."""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from components.runtime import DockerRuntime
from components.secret_env import with_secret_env
from components.spec import WorkspaceSpec
from stacks.automation import StackRunner
from stacks.config import StackConfig
from stacks.naming import resource_base, stack_name
from stacks.settings import PROJECT_DIR, PulumiSettings, StackFiles
from tests.e2e.repo_image import BASE_IMAGE

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("docker_provider")]


def checkout_settings_files() -> set[Path]:
    return {p for p in PROJECT_DIR.glob("Pulumi.*.y*ml") if p.name != "Pulumi.yaml"}


def other_replica(settings: PulumiSettings, stack: str, text: str, cfg: StackConfig,
                  digest: str, tmp: str) -> dict[str, Any]:
    """Another replica's worker: a fresh process whose work dirs live elsewhere,
    given only the shared passphrase (settings) and the stack's settings text."""
    tempfile.tempdir = tmp
    runner = StackRunner(settings)
    env = {**os.environ, **settings.env()}
    # Without the salt from the store, the stack's secrets cannot be read.
    saltless = "".join(ln for ln in text.splitlines(keepends=True)
                       if not ln.startswith("encryptionsalt:"))
    with StackFiles(settings.pulumi_home, stack, saltless) as bad:
        no_salt = subprocess.run(
            [settings.pulumi_binary, "config", "get", "stackspace:secrets", "--stack", stack,
             "--non-interactive"], cwd=bad.path, env=env, capture_output=True, text=True,
            check=False).returncode
    with StackFiles(settings.pulumi_home, stack, text) as files:
        runner.use(files)
        # The secrets digest matches: the secret config is not written again,
        # so the engine must decrypt what the first replica wrote.
        result = runner.apply(cfg, stack, secrets_digest=digest)
        got = runner.cli("config", "get", "stackspace:secrets", "--stack", stack)
        work_dir = str(files.path)
    return {"pid": os.getpid(), "work_dir": work_dir, "no_salt_exit": no_salt,
            "secrets": json.loads(got.stdout) if got.returncode == 0 else None,
            "secrets_digest": result.secrets_digest, "text": files.text}


def test_another_replica_runs_the_stack_from_settings_in_shared_state(
        pulumi_settings, docker_host, docker_client, tmp_path):
    owner, name = "alice", f"state-replica-{secrets.token_hex(3)}"
    value = f"token-{secrets.token_hex(12)}"
    runtime = DockerRuntime(name="local", host=docker_host, network_mode="none")
    spec = WorkspaceSpec.parse({"name": name, "image": BASE_IMAGE,
                                "secret_env": {"STATE_TOKEN": value}})
    stack = stack_name(owner, name)
    before = checkout_settings_files()
    runner = StackRunner(pulumi_settings)

    # Replica A creates the stack; the settings come back as text.
    with StackFiles(pulumi_settings.pulumi_home, stack, None) as files:
        runner.use(files)
        created = runner.apply(StackConfig(owner=owner, spec=spec, runtime=runtime,
                                           running=True), stack)
        a_dir = files.path
    text = files.text
    assert text and "encryptionsalt:" in text and "stackspace:secrets:" in text
    assert value not in text  # secret config is encrypted with the passphrase + salt
    assert not a_dir.exists()
    assert checkout_settings_files() == before
    assert not (PROJECT_DIR / f"Pulumi.{stack}.yaml").exists()

    # Replica B (another process, another temp root) stops it.
    other_tmp = tmp_path / "replica-b"
    other_tmp.mkdir()
    stopped = StackConfig(owner=owner, spec=spec, runtime=runtime, running=False)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        b = pool.apply(other_replica, (pulumi_settings, stack, text, stopped,
                                       created.secrets_digest, str(other_tmp)))
    assert b["pid"] != os.getpid()
    assert Path(b["work_dir"]).parent == other_tmp and not Path(b["work_dir"]).exists()
    assert b["no_salt_exit"] != 0
    assert b["secrets"] == {"env:STATE_TOKEN": value}
    assert b["secrets_digest"] == created.secrets_digest
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(resource_base(owner, name))

    # Back on A with B's text: start (the secret reaches the workspace), delete.
    try:
        with StackFiles(pulumi_settings.pulumi_home, stack, b["text"]) as files:
            runner.use(files)
            runner.apply(StackConfig(owner=owner, spec=spec, runtime=runtime, running=True),
                         stack, secrets_digest=created.secrets_digest)
            ws = docker_client.containers.get(resource_base(owner, name))
            code, out = ws.exec_run(with_secret_env(["sh", "-c", 'printf %s "$STATE_TOKEN"']),
                                       user="1000")
            assert (code, out.decode()) == (0, value)
    finally:
        with StackFiles(pulumi_settings.pulumi_home, stack, files.text or b["text"]) as files:
            runner.use(files)
            runner.delete(stack)
            assert not runner.exists(stack)
        runner.use(None)
    assert files.text is None  # the stack and its settings are gone
    assert checkout_settings_files() == before
