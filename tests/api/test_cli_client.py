"""The `stackspace` client commands against a live service on the real engine:
--json output, --wait exit codes, and clear errors."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

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


def test_quota_is_enforced_per_user(tmp_path, docker_host, pulumi_settings):
    from tests.api.conftest import start_service

    gen = start_service(tmp_path, docker_host, pulumi_settings, quota=1)
    svc = next(gen)
    try:
        assert svc.call("POST", "/api/v1/workspaces", svc.alice, json={"name": "a"}
                        ).status_code == 202
        over = svc.call("POST", "/api/v1/workspaces", svc.alice, json={"name": "b"})
        assert over.status_code == 403 and over.json()["type"].endswith("/quota-exceeded")
        # another user has their own quota
        assert svc.call("POST", "/api/v1/workspaces", svc.bob, json={"name": "b"}
                        ).status_code == 202
        # a queued operation can be cancelled before it runs
        op = svc.call("POST", "/api/v1/workspaces/a/stop?queue=true", svc.alice).json()
        cancel = svc.call("POST", f"/api/v1/operations/{op['id']}/cancel", svc.alice)
        assert cancel.status_code == 202
        assert svc.call("GET", f"/api/v1/operations/{op['id']}", svc.alice
                        ).json()["status"] in ("cancelled", "running", "succeeded", "failed")
    finally:
        for user, ws in ((svc.alice, "a"), (svc.bob, "b")):
            svc.call("DELETE", f"/api/v1/workspaces/{ws}?queue=true", user)
        deadline = __import__("time").monotonic() + 300
        while svc.store.workspaces() and __import__("time").monotonic() < deadline:
            __import__("time").sleep(0.5)
        next(gen, None)
