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
