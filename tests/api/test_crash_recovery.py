"""kill -9 the service in the middle of an operation, start it again: the
operation is marked interrupted, the stack lock is cleared, the workspace shows
a true state, a retry succeeds, and no storage is lost."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("docker_provider")]
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveService:
    def __init__(self, tmp: Path, docker_host: str, pulumi_bin: Path, pulumi_home: Path):
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.config = tmp / "stackspace.yaml"
        self.config.write_text(yaml.safe_dump({
            "data_dir": str(tmp / "data"), "listen": f"127.0.0.1:{self.port}",
            "runtimes": [{"name": "local", "type": "docker", "host": docker_host,
                          "network_mode": "none"}]}))
        self.env = {**os.environ, "STACKSPACE_ADMIN_TOKEN": self.token,
                    "STACKSPACE_PULUMI_BIN": str(pulumi_bin), "PULUMI_HOME": str(pulumi_home),
                    "PULUMI_CONFIG_PASSPHRASE": "crash-test"}
        self.log = tmp / "service.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--config", str(self.config)],
            cwd=REPO, env=self.env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.3)
        raise AssertionError(f"service did not start: {self.log.read_text()[-2000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, **kw) -> requests.Response:
        return requests.request(method, f"{self.url}/api/v1{path}", timeout=30,
                                headers={"Authorization": f"Bearer {self.token}"}, **kw)

    def wait(self, op_id: str, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            op = self.call("GET", f"/operations/{op_id}").json()
            if op["status"] not in ("queued", "running"):
                return op
            time.sleep(0.5)
        raise AssertionError("operation did not end")


def test_kill_9_mid_operation_recovers(tmp_path, docker_host, docker_client, pulumi_bin,
                                       pulumi_home):
    svc = LiveService(tmp_path, docker_host, pulumi_bin, pulumi_home)
    svc.start()
    name = f"crash-{secrets.token_hex(3)}"
    try:
        op = svc.call("POST", "/workspaces", json={"name": name}).json()
        # Wait until the engine is really at work (a resource event arrived).
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            events = svc.call("GET", f"/operations/{op['id']}").json()
            if events["status"] == "running" and list(
                    (tmp_path / "data" / "state" / ".pulumi" / "locks").rglob("*.json")):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the create never reached the engine")
        svc.kill9()
        volumes_at_kill = {v.name: v.id for v in docker_client.volumes.list(
            filters={"label": f"stackspace.dev/workspace={name}"})}

        svc.start()
        interrupted = svc.call("GET", f"/operations/{op['id']}").json()
        assert interrupted["status"] == "failed"
        assert "interrupted" in interrupted["error"]
        ws = svc.call("GET", f"/workspaces/{name}").json()
        assert ws["state"] in ("running", "stopped", "failed")
        assert "interrupted" in ws["last_error"]

        # The user retries: it works (no stale lock), and storage was kept.
        retry = svc.wait(svc.call("POST", f"/workspaces/{name}/start").json()["id"])
        assert retry["status"] == "succeeded", retry
        ws = svc.call("GET", f"/workspaces/{name}").json()
        assert ws["state"] == "running"
        assert docker_client.containers.get(ws["outputs"]["container"]).status == "running"
        for vol_name, vol_id in volumes_at_kill.items():
            assert docker_client.volumes.get(vol_name).id == vol_id

        done = svc.wait(svc.call("DELETE", f"/workspaces/{name}").json()["id"])
        assert done["status"] == "succeeded", done
    finally:
        svc.stop()
