"""`stackspace exec` whatever its stdin is (a TTY, a pipe, a regular file, /dev/null,
no stdin at all), through the service and the proxy process on the real engine:
the bytes arrive, EOF arrives, and the exit code passes through."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pexpect
import pytest

from tests.api.test_cli_client import cli
from tests.e2e.remote_helpers import stackspace_exec

pytestmark = pytest.mark.e2e
COUNT_AND_EXIT = ["sh", "-c", "wc -c; exit 5"]


@pytest.fixture(scope="module")
def workspace(service):
    name = f"stdin-{secrets.token_hex(3)}"
    assert cli(service, "create", "-", "--wait", stdin=json.dumps({"name": name})
               ).returncode == 0
    yield name
    cli(service, "delete", name, "--wait")


def test_stdin_from_dev_null(service, workspace):
    r = stackspace_exec(service, workspace, *COUNT_AND_EXIT, stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stdout, r.stderr) == (5, b"0\n", b"")


def test_stdin_from_a_pipe(service, workspace):
    r = stackspace_exec(service, workspace, *COUNT_AND_EXIT, stdin=b"x" * 100_000)
    assert (r.returncode, r.stdout) == (5, b"100000\n")


def test_stdin_from_a_regular_file(service, workspace, tmp_path):
    path = tmp_path / "input.bin"
    path.write_bytes(os.urandom(300_000))
    with open(path, "rb") as f:
        r = stackspace_exec(service, workspace, *COUNT_AND_EXIT, stdin=f)
    assert (r.returncode, r.stdout) == (5, b"300000\n")


def test_stdin_closed(service, workspace):
    env = {**os.environ, "STACKSPACE_URL": service.url, "STACKSPACE_TOKEN": service.alice}
    # The shell closes fd 0 before it execs the client (no preexec_fn: Python
    # between fork and exec can abort in a process with gRPC threads).
    r = subprocess.run(["/bin/sh", "-c", 'exec "$@" <&-', "sh", sys.executable, "-m",
                        "service.cli", "exec", workspace, "--", *COUNT_AND_EXIT], env=env,
                       capture_output=True, timeout=120, check=False)
    assert (r.returncode, r.stdout) == (5, b"0\n"), r.stderr


def test_stdin_from_a_terminal(service, workspace):
    env = {**os.environ, "STACKSPACE_URL": service.url, "STACKSPACE_TOKEN": service.alice}
    child = pexpect.spawn(sys.executable, ["-m", "service.cli", "exec", workspace, "--",
                                           *COUNT_AND_EXIT], env=env, timeout=60)
    child.sendline("abc")  # the local terminal is in cooked mode: a line, then ^D
    child.sendeof()
    child.expect(r"\b4\r?\n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 5
