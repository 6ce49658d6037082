"""`stackspace doctor --json` on the real toolchain: one entry per part, exit 0
only when every configured runtime can work."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.e2e


def doctor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", "doctor", "--json", *args],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def test_doctor_reports_every_part(tmp_path, docker_host, pulumi_bin, pulumi_home,
                                   docker_provider, kubernetes_provider):
    env = {**os.environ, "DOCKER_HOST": docker_host, "STACKSPACE_PULUMI_BIN": str(pulumi_bin),
           "PULUMI_HOME": str(pulumi_home), "STACKSPACE_DATA_DIR": str(tmp_path)}
    r = doctor(env)
    report = json.loads(r.stdout)
    names = {c["name"]: c for c in report["checks"]}
    assert {"pulumi CLI", "python language host", "plugin docker", "plugin kubernetes",
            "runtime local (docker)"} <= set(names)
    assert names["pulumi CLI"]["detail"] == "v3.259.0"
    assert names["plugin docker"]["detail"] == "v5.2.0"
    assert names["runtime local (docker)"]["detail"].startswith("Docker Engine ")
    assert r.returncode == 0 and report["ok"] is True


def test_doctor_fails_when_a_runtime_cannot_work(tmp_path, pulumi_bin, pulumi_home):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"runtimes": [
        {"name": "gone", "type": "docker", "host": f"unix://{tmp_path}/no-docker.sock"},
        {"name": "nokube", "type": "kubernetes", "kubeconfig": str(tmp_path / "missing")}]}))
    env = {**os.environ, "STACKSPACE_PULUMI_BIN": str(pulumi_bin),
           "PULUMI_HOME": str(pulumi_home), "STACKSPACE_DATA_DIR": str(tmp_path)}
    r = doctor(env, "--config", str(config))
    report = json.loads(r.stdout)
    names = {c["name"]: c for c in report["checks"]}
    assert r.returncode == 1 and report["ok"] is False
    assert names["runtime gone (docker)"]["ok"] is False
    assert "no-docker.sock" in names["runtime gone (docker)"]["detail"]
    assert names["runtime nokube (kubernetes)"]["ok"] is False


def test_doctor_checks_the_postgresql_store(tmp_path, postgres_url, pulumi_bin, pulumi_home):
    env = {**os.environ, "STACKSPACE_PULUMI_BIN": str(pulumi_bin),
           "PULUMI_HOME": str(pulumi_home), "STACKSPACE_DATA_DIR": str(tmp_path),
           "STACKSPACE_DATABASE_URL": postgres_url}
    store = {c["name"]: c for c in json.loads(doctor(env).stdout)["checks"]}["store (postgresql)"]
    assert store["ok"] is True and store["detail"].startswith("PostgreSQL ")
    env["STACKSPACE_DATABASE_URL"] = "postgresql://nobody:s3cretpw@127.0.0.1:25432/stackspace"
    r = doctor(env)
    store = {c["name"]: c for c in json.loads(r.stdout)["checks"]}["store (postgresql)"]
    assert r.returncode == 1 and store["ok"] is False
    assert 'role "nobody" does not exist' in store["detail"] and "s3cretpw" not in r.stdout
