"""The `stackspace` client commands against a live service on the real engine:
--json output, --wait exit codes, and clear errors."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.e2e


def cli(svc, *args: str, token: str | None = None, stdin: str | None = None
        ) -> subprocess.CompletedProcess:
    env = {**os.environ, "STACKSPACE_URL": svc.url, "STACKSPACE_TOKEN": token or svc.alice}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_cli_create_wait_stop_start_delete(service, docker_client):
    name = f"cli-{secrets.token_hex(3)}"
    created = cli(service, "create", "-", "--wait", "--json",
                  stdin=json.dumps({"name": name}))
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["status"] == "succeeded"
    listed = json.loads(cli(service, "list", "--json").stdout)
    assert name in [w["name"] for w in listed["items"]]
    shown = json.loads(cli(service, "show", name, "--json").stdout)
    assert shown["state"] == "running"
    assert docker_client.containers.get(shown["outputs"]["container"]).status == "running"
    for command, state in (("stop", "stopped"), ("start", "running")):
        r = cli(service, command, name, "--wait", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(cli(service, "show", name, "--json").stdout)["state"] == state
    r = cli(service, "delete", name, "--wait", "--json")
    assert r.returncode == 0, r.stderr
    missing = cli(service, "show", name)
    assert missing.returncode != 0 and "404" in missing.stderr


def test_cli_reports_validation_errors_by_field(service):
    r = cli(service, "create", "-", stdin=json.dumps({"name": "BAD", "extra": 1}))
    assert r.returncode != 0
    assert "name:" in r.stderr and "extra: unknown field" in r.stderr


def test_cli_wait_exits_nonzero_when_the_operation_fails(service):
    name = f"clifail-{secrets.token_hex(3)}"
    spec = {"name": name, "repository": {"url": "file:///nonexistent/repo.git"}}
    r = cli(service, "create", "-", "--wait", "--json", stdin=json.dumps(spec))
    assert r.returncode == 1
    op = json.loads(r.stdout)
    assert op["status"] == "failed" and "init failed" in op["error"]
    assert "clone failed" in op["error"]  # the init step's own explanation
    assert cli(service, "delete", name, "--wait").returncode == 0


def test_quota_is_enforced_per_user(tmp_path, docker_host, docker_client, pulumi_settings,
                                    store_backend):
    from tests.api.conftest import custom_service
    from tests.api.test_api_lifecycle import wait_op

    # Unique names: the session's backend is shared by every test's service (each
    # its own installation), and a stack another one left would be refused as taken.
    a, b = (f"quota-{os.urandom(3).hex()}-{x}" for x in "ab")
    with custom_service(tmp_path, docker_host, pulumi_settings, quota=1,
                        database_url=store_backend("quota1")) as svc:
        try:
            assert svc.call("POST", "/api/v1/workspaces", svc.alice, json={"name": a}
                            ).status_code == 202
            over = svc.call("POST", "/api/v1/workspaces", svc.alice, json={"name": b})
            assert over.status_code == 403 and over.json()["type"].endswith("/quota-exceeded")
            # another user has their own quota
            assert svc.call("POST", "/api/v1/workspaces", svc.bob, json={"name": b}
                            ).status_code == 202
            # a stop queued behind the running create can be cancelled before it
            # runs: it never runs, and the workspace ends as the create left it
            create = svc.call("GET", f"/api/v1/workspaces/{a}", svc.alice).json()["last_operation"]
            op = svc.call("POST", f"/api/v1/workspaces/{a}/stop?queue=true", svc.alice).json()
            assert op["status"] == "queued"
            cancel = svc.call("POST", f"/api/v1/operations/{op['id']}/cancel", svc.alice)
            assert cancel.status_code == 202
            created = wait_op(svc, svc.alice, create["id"])
            assert created["status"] == "succeeded", created
            stop = wait_op(svc, svc.alice, op["id"])
            assert stop["status"] == "cancelled" and stop["started"] is None, stop
            ws = svc.call("GET", f"/api/v1/workspaces/{a}", svc.alice).json()
            assert (ws["state"], ws["desired"]) == ("running", "running"), ws
            assert docker_client.containers.get(ws["outputs"]["container"]).status == "running"
        finally:
            for user, ws in ((svc.alice, a), (svc.bob, b)):
                svc.call("DELETE", f"/api/v1/workspaces/{ws}?queue=true", user)
            deadline = time.monotonic() + 300
            while svc.store.workspaces() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert not svc.store.workspaces(), "a delete did not finish"


def test_exec_and_terminal_through_service_and_proxy(service, tmp_path):
    """`stackspace exec` and `stackspace term` on a workspace the service made."""
    import pexpect

    name = f"term-{secrets.token_hex(3)}"
    assert cli(service, "create", "-", "--wait", stdin=json.dumps(
        {"name": name, "env": {"GREETING": "hi"}})).returncode == 0
    try:
        r = cli(service, "exec", name, "--", "sh", "-c", "echo $GREETING; cat; exit 3",
                stdin="piped bytes\n")
        assert r.returncode == 3
        assert r.stdout == "hi\npiped bytes\n"
        # another user cannot get a ticket for it
        other = cli(service, "exec", name, "--", "true", token=service.bob)
        assert other.returncode != 0 and "404" in other.stderr

        env = {**os.environ, "STACKSPACE_URL": service.url, "STACKSPACE_TOKEN": service.alice}
        child = pexpect.spawn(sys.executable, ["-m", "service.cli", "term", name], env=env,
                              timeout=30, dimensions=(30, 100))
        child.expect(r"\$ ")  # the shell's prompt: it reads input from now on
        child.sendline("stty size; id -u; pwd")
        child.expect("30 100")
        child.expect("1000")
        child.expect("/workspace")
        child.sendline("exit 4")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 4
        # the proxy reported the activity to the service
        deadline = time.monotonic() + 10
        while not service.store.workspace("alice", name)["last_activity"]:
            assert time.monotonic() < deadline, "no activity report reached the service"
            time.sleep(0.2)
    finally:
        cli(service, "delete", name, "--wait")
