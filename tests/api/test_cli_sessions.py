"""Sessions that outlive their connection as a user meets them (SPEC §5, §7),
through the CLI, the service and the proxy process on the real engine: the
issue's report (a loop in `stackspace exec` whose client is killed), `term
--list`, `term --attach`, `exec --detach`, and `term` reconnecting by itself
across a kill -9 and restart of the proxy."""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import replace

import pexpect

from tests.api.conftest import custom_service
from tests.api.test_cli_client import cli
from tests.e2e.exec_fixtures import ProxyProcess
from tests.e2e.remote_helpers import stackspace_exec
from tests.e2e.session_checks import ClientProcess, wait_for

LOOP = ("i=1; while [ $i -le 6 ]; do echo line $i; i=$((i+1)); sleep 0.5; done; "
        "echo t2 > /workspace/t2; exit 3")


def sessions(svc, name: str) -> dict[str, dict]:
    r = cli(svc, "term", name, "--list", "--json")
    assert r.returncode == 0, r.stderr
    return {s["id"]: s for s in json.loads(r.stdout)}


def test_sessions_through_the_cli(tmp_path, docker_host, pulumi_settings, docker_provider):
    with custom_service(tmp_path, docker_host, pulumi_settings) as svc:
        name = f"sess-{secrets.token_hex(3)}"
        assert cli(svc, "create", "-", "--wait", stdin=json.dumps({"name": name})
                   ).returncode == 0
        try:
            check_killed_exec(svc, name)
            check_detach(svc, name)
            check_terminal_reconnects(svc, name)
            check_sessions_end_with_the_workspace(svc, name)
        finally:
            cli(svc, "delete", name, "--wait")


def check_killed_exec(svc, name: str) -> None:
    """The report: the client of a running loop is killed; the loop finishes."""
    env = {**os.environ, "STACKSPACE_URL": svc.url, "STACKSPACE_TOKEN": svc.alice}
    client = ClientProcess([sys.executable, "-m", "service.cli", "exec", name, "--",
                               "sh", "-c", LOOP], env)
    wait_for("the first lines", lambda: b"line 2\n" in client.out)
    client.kill()
    [sid] = [i for i, s in sessions(svc, name).items() if LOOP in s["command"]]
    r = cli(svc, "term", name, "--attach", sid, stdin="")
    assert (r.returncode, r.stdout) == (3, "".join(f"line {i}\n" for i in range(1, 7)))
    assert stackspace_exec(svc, name, "cat", "/workspace/t2").stdout == b"t2\n"
    wait_for("the session whose exit reached a client to be collected",
             lambda: sid not in sessions(svc, name))


def check_detach(svc, name: str) -> None:
    r = cli(svc, "exec", name, "--detach", "--", "sh", "-c", "echo in-the-background; exit 4")
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip()
    ended = wait_for("the command to end", lambda: sessions(svc, name)[sid]["exit_code"] == 4)
    assert ended
    r = cli(svc, "term", name, "--attach", sid, stdin="")
    assert (r.returncode, r.stdout) == (4, "in-the-background\n")
    r = cli(svc, "term", name, "--attach", "no-such-session", stdin="")
    assert r.returncode != 0 and "no session" in r.stderr


def check_sessions_end_with_the_workspace(svc, name: str) -> None:
    r = cli(svc, "exec", name, "--detach", "--", "sleep", "9876")
    assert r.returncode == 0 and r.stdout.strip() in sessions(svc, name)
    assert cli(svc, "stop", name, "--wait").returncode == 0
    assert cli(svc, "start", name, "--wait").returncode == 0
    assert sessions(svc, name) == {}


def check_terminal_reconnects(svc, name: str) -> None:
    env = {**os.environ, "STACKSPACE_URL": svc.url, "STACKSPACE_TOKEN": svc.alice}
    child = pexpect.spawn(sys.executable, ["-m", "service.cli", "term", name], env=env,
                          timeout=60, dimensions=(24, 80))
    child.expect_exact("$ ")  # the prompt: the local terminal is raw by now
    child.sendline("echo one-$((1+1))")
    child.expect_exact("one-2")
    old = svc.proxy
    old.proc.kill()  # kill -9, then a new proxy on the same address
    old.proc.wait()
    port = int(old.url.rsplit(":", 1)[1].split("/")[0])
    svc.proxy = ProxyProcess(replace(old.config, port=port))
    child.sendline("echo two-$((1+1))")
    child.expect_exact("two-2")  # typed while reconnecting or after: it arrives
    child.sendline("exit 7")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 7
    wait_for("the ended terminal to be collected",
             lambda: not [s for s in sessions(svc, name).values() if s["tty"]])

