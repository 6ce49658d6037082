"""The environment every engine process gets (PulumiSettings.env), on the real CLI."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

import pytest

from stacks.settings import ENGINE_LOG_ROTATION

pytestmark = pytest.mark.e2e


def test_the_clis_own_log_directory_stays_small(pulumi_settings, tmp_path: Path):
    """Every CLI process writes a log file into PULUMI_HOME/logs and reads the
    whole directory on start. Left at the CLI's defaults it grows to 500 MB
    (tens of thousands of files: slower CLI starts, a full disk); the service's
    engines keep at most ENGINE_LOG_ROTATION's bound."""
    home = tmp_path / "home"
    logs = home / "logs"
    logs.mkdir(parents=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() - 3600))
    for i in range(600):  # 600 x 64 KiB: 37.5 MiB written within the hour
        (logs / f"pulumi-{stamp}-{i}-up.log").write_bytes(os.urandom(64 * 1024))
    settings = dataclasses.replace(pulumi_settings, pulumi_home=home)
    proc = subprocess.run([settings.pulumi_binary, "stack", "ls", "--all", "--non-interactive"],
                          cwd=tmp_path, env={**os.environ, **settings.env()},
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    total = sum(p.stat().st_size for p in logs.iterdir())
    bound = int(ENGINE_LOG_ROTATION["PULUMI_LOG_ROTATION_MAX_TOTAL_MB"]) * 2**20
    # Rotation runs before the CLI opens its own log, which comes on top.
    assert 0 < total <= bound + 2**20
    # The newest logs are what is kept (the CLI's own run among them).
    assert any(p.name.endswith("-stack_list.log") for p in logs.iterdir())


def test_the_engine_never_sees_the_admin_token_or_the_database_url(
        tmp_path: Path, docker_host, pulumi_bin, pulumi_home, docker_provider, new_database):
    """SPEC §8: the engine (the Pulumi CLI, the language host, third-party
    provider plugins) gets an allowlisted environment. The service's worker
    processes start every engine process and hand down their environment:
    theirs holds neither the admin token nor the store's database URL, even
    when the service itself was given both in its environment."""
    from tests.faults.harness import LiveService, process_tree

    url = new_database("engine_env")
    svc = LiveService(tmp_path, [{"name": "local", "type": "docker", "host": docker_host}],
                      pulumi_bin=pulumi_bin, pulumi_home=pulumi_home,
                      extra_env={"STACKSPACE_DATABASE_URL": url,
                                 "STACKSPACE_SOME_SETTING": "not-for-engines"})
    svc.start()
    try:
        assert svc.proc is not None
        service_env = (Path("/proc") / str(svc.proc.pid) / "environ").read_bytes()
        # The service has both: the test is real.
        assert svc.token.encode() in service_env and url.encode() in service_env
        workers = [p for p in process_tree(svc.proc.pid)
                   if b"--worker" in (Path("/proc") / str(p) / "cmdline").read_bytes()]
        assert workers, "no warm worker processes"
        for pid in workers:
            environ = (Path("/proc") / str(pid) / "environ").read_bytes()
            names = {line.split(b"=", 1)[0] for line in environ.split(b"\0") if b"=" in line}
            assert svc.token.encode() not in environ and url.encode() not in environ
            assert not names & {b"STACKSPACE_ADMIN_TOKEN", b"STACKSPACE_DATABASE_URL",
                                b"STACKSPACE_SOME_SETTING"}
            assert {b"PULUMI_HOME", b"PATH"} <= names
        # And the service still works on that store: engines run without them.
        op = svc.run_op("POST", "/workspaces", json={"name": "env-check"})
        assert op["status"] == "succeeded", op.get("error")
        assert svc.run_op("DELETE", "/workspaces/env-check")["status"] == "succeeded"
    finally:
        svc.stop()
