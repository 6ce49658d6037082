"""A job's repr (a log line, a traceback, a debugger) carries no secret: not
the passphrase, not a password in the backend URL, not the spec's secrets, not
the stack's settings file (REVIEW L1)."""

from __future__ import annotations

from pathlib import Path

from components.runtime import parse_runtime
from components.spec import WorkspaceSpec
from service.jobs import Job
from stacks.config import StackConfig
from stacks.settings import PulumiSettings

SECRETS = ["pass-phrase-1", "db-password-2", "cred-3", "env-secret-4", "file-secret-5",
           "pull-password-6", "settings-salt-7"]


def test_a_jobs_repr_holds_no_secret():
    spec = WorkspaceSpec.parse({
        "name": "dev",
        "repository": {"url": "https://git.example.com/a.git", "credential": SECRETS[2]},
        "secret_env": {"TOKEN": SECRETS[3]},
        "files": [{"path": "k", "content": SECRETS[4], "secret": True}],
        "image": "registry.example.com/ws:1",
        "image_credentials": {"username": "u", "password": SECRETS[5]}})
    settings = PulumiSettings(backend_url=f"postgres://state:{SECRETS[1]}@db/state",
                              passphrase=SECRETS[0], pulumi_home=Path("/tmp/home"))
    runtime = parse_runtime({"name": "local", "type": "docker", "host": "unix:///x.sock"})
    job = Job(op_id="op", kind="create", stack="ws-dev", store_path="/tmp/db",
              settings=settings, config=StackConfig(owner="alice", spec=spec, runtime=runtime,
                                                    running=True),
              stack_settings=f"encryptionsalt: {SECRETS[6]}")
    shown = repr(job)
    assert "ws-dev" in shown and "/tmp/home" in shown  # still useful
    assert [s for s in SECRETS if s in shown] == []
