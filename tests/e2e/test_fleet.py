"""GitOps review of component code (SPEC §6, §10) on the real engine: a fleet
made through the service records the code it runs; `stackspace fleet preview`
of a changed copy of the program shows what the change does to every
workspace and writes nothing."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from service.store import Store
from stacks import code_version
from stacks.settings import PROJECT_DIR
from tests.e2e.stack_helpers import ensure_namespace
from tests.faults.harness import REPO, LiveService

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("docker_provider",
                                                       "kubernetes_provider")]
NAMESPACE = "stackspace-fleet-e2e"
KUBE_SPEC = {"runtime": "cluster",
             "resources": {"cpu": "250m", "memory": "128Mi", "storage": "32Mi"}}

PROGRAM_FILES = ("Pulumi.yaml", "__main__.py", "components", "stacks")


@dataclass
class Fleet:
    svc: LiveService  # `stackspace serve`, as deployed
    store: Store  # the same store, read as the CLI reads it
    tokens: dict[str, str]  # owner -> token
    names: list[tuple[str, str]]  # (owner, name): two running, one stopped on Docker
    kube: tuple[str, str]  # a running one on Kubernetes
    core: Any  # the cluster's CoreV1Api
    apps: Any  # and AppsV1Api

    @property
    def all(self) -> list[tuple[str, str]]:
        return [*self.names, self.kube]

    def deploy(self, checkout: Path) -> None:
        """Restart the service from another checkout (a merged change)."""
        self.svc.stop()
        self.svc.cwd = checkout
        self.svc.start("serve")

    def get(self, owner: str, name: str) -> dict:
        r = self.svc.call("GET", f"/workspaces/{name}", self.tokens[owner])
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, docker_host, pulumi_home, pulumi_bin, kube_cluster
          ) -> Iterator[Fleet]:
    """Three Docker workspaces of two owners and a Kubernetes one, made through a running
    `stackspace serve`, whose store, backend and passphrase the CLI finds as
    `stackspace stack` does."""
    api = config.new_client_from_config(config_file=str(kube_cluster))
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    ensure_namespace(core, NAMESPACE)
    runtimes = [{"name": "local", "type": "docker", "host": docker_host,
                 "network_mode": "none"},
                {"name": "cluster", "type": "kubernetes", "kubeconfig": str(kube_cluster),
                 "namespace": NAMESPACE}]
    svc = LiveService(tmp_path_factory.mktemp("fleet"), runtimes, pulumi_bin=pulumi_bin,
                      pulumi_home=pulumi_home)
    svc.start("serve")
    store = Store(svc.data_dir / "stackspace.db")
    tokens = {"alice": store.add_user("alice"), "bob": store.add_user("bob")}
    suffix = secrets.token_hex(3)
    names = [("alice", f"fa-{suffix}"), ("alice", f"fc-{suffix}"), ("bob", f"fb-{suffix}")]
    fleet = Fleet(svc, store, tokens, names, ("alice", f"fk-{suffix}"), core, apps)
    try:
        ops = []
        for owner, name in fleet.all:
            body = {"name": name, **(KUBE_SPEC if (owner, name) == fleet.kube else {})}
            r = svc.call("POST", "/workspaces", tokens[owner], json=body)
            assert r.status_code == 202, r.text
            ops.append(r.json()["id"])
        for op_id in ops:
            assert svc.wait_op(op_id)["status"] == "succeeded", svc.op(op_id)
        yield fleet
    finally:
        if svc.cwd != REPO:
            fleet.deploy(REPO)
        svc.ensure_running()
        deletes = []
        for owner, name in fleet.all:
            r = svc.call("DELETE", f"/workspaces/{name}?queue=true", tokens[owner])
            if r.status_code == 202:
                deletes.append(r.json()["id"])
        for op_id in deletes:
            svc.wait_op(op_id)
        svc.stop()
        store.close()


def program_copy(tmp_path: Path) -> Path:
    """The repository's program files, copied (no .venv: a bare CI checkout)."""
    dest = tmp_path / "checkout"
    dest.mkdir()
    for entry in PROGRAM_FILES:
        src = PROJECT_DIR / entry
        if src.is_dir():
            shutil.copytree(src, dest / entry, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(src, dest / entry)
    return dest


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not once in {path}"
    path.write_text(text.replace(old, new))


def fleet_preview(fleet: Fleet, program: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", "fleet", "preview",
                           "--program", str(program), "--data-dir", str(fleet.svc.data_dir),
                           "--concurrency", "2", *args],
                          env=fleet.svc.env, capture_output=True, text=True, timeout=900,
                          check=False)


def fleet_rollout(fleet: Fleet, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STACKSPACE_URL": fleet.svc.url, "STACKSPACE_TOKEN": fleet.svc.token}
    return subprocess.run([sys.executable, "-m", "service.cli", "fleet", "rollout", "--json",
                           *args], env=env, capture_output=True, text=True, timeout=900,
                          check=False)


def snapshot(fleet: Fleet) -> tuple[dict[str, bytes], list[dict], dict]:
    """Every byte of the stack state, and every store row of the fleet."""
    state = fleet.svc.data_dir / "state"
    files = {str(p.relative_to(state)): p.read_bytes()
             for p in sorted(state.rglob("*")) if p.is_file()}
    store = fleet.store
    return files, store.workspaces(), {str(k): v for k, v in store.last_operations().items()}


def service_checkout(tmp_path: Path) -> Path:
    """A whole checkout of the service (a merge, deployed), sharing the venv."""
    dest = tmp_path / "service"
    shutil.copytree(REPO, dest, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "tests", "bench", "*.egg-info", ".ruff_cache"))
    (dest / ".venv").symlink_to(REPO / ".venv")
    return dest


LABEL_OLD = 'labels=labels("workspace") + ['
LABEL_NEW = 'labels=labels("workspace") + [{"label": "example.com/team", "value": "dev"}, '
VOLUME_OLD = 'docker.Volume(\n            "storage",'
VOLUME_NEW = 'docker.Volume(\n            "home",'
K_LABEL_OLD = '"template": {"metadata": {"labels": selector}'
K_LABEL_NEW = '"template": {"metadata": {"labels": {**selector, "example.com/team": "dev"}}'
K_VOLUME_OLD = 'PersistentVolumeClaim(\n            "storage",'
K_VOLUME_NEW = 'PersistentVolumeClaim(\n            "home",'


def label_change(checkout: Path) -> None:
    """A label added to the workload, on both runtimes."""
    edit(checkout / "components" / "docker.py", LABEL_OLD, LABEL_NEW)
    edit(checkout / "components" / "kubernetes.py", K_LABEL_OLD, K_LABEL_NEW)


def storage_change(checkout: Path) -> None:
    """Storage under a new resource name, on both runtimes: the old one goes."""
    edit(checkout / "components" / "docker.py", VOLUME_OLD, VOLUME_NEW)
    edit(checkout / "components" / "kubernetes.py", K_VOLUME_OLD, K_VOLUME_NEW)


def test_workspaces_record_the_code_version_they_run(fleet: Fleet) -> None:
    listed = fleet.svc.call("GET", "/workspaces?owner=").json()["items"]
    mine = {(w["owner"], w["name"]): w for w in listed}
    for owner, name in fleet.all:
        assert mine[(owner, name)]["code_version"] == code_version.current()
        assert mine[(owner, name)]["outdated"] is False
    shown = fleet.get(*fleet.names[0])
    assert shown["code_version"] == code_version.current() and shown["outdated"] is False
    # The digest covers the program, the commit says which checkout it came from.
    assert shown["code_version"].split("@")[0] == code_version.current_digest()


def test_preview_of_a_label_change_writes_nothing(fleet: Fleet, tmp_path: Path) -> None:
    program = program_copy(tmp_path)
    # Unchanged code first: every workspace unchanged (the review is exact).
    same = fleet_preview(fleet, program, "--json")
    assert same.returncode == 0, same.stderr
    assert {w["outcome"] for w in json.loads(same.stdout)["workspaces"]} == {"unchanged"}

    label_change(program)
    before = snapshot(fleet)
    plans = tmp_path / "plans"
    r = fleet_preview(fleet, program, "--json", "--save-plans", str(plans))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert sorted(w["workspace"] for w in report["workspaces"]) == sorted(
        f"{o}/{n}" for o, n in fleet.all)
    for ws in report["workspaces"]:
        assert ws["storage_at_risk"] is False
        assert ws["outcome"] in ("changed", "restarted"), ws
        workload = [c for c in ws["resources"] if c["name"] == "workspace"]
        assert workload and "labels" in workload[0]["properties"][0], ws["resources"]
        assert ws["steps"]["replace"] + ws["steps"]["update"] >= 1
        assert (plans / f"{ws['stack']}.plan.json").is_file()
    assert report["summary"]["refused"] == 0
    assert report["summary"]["changed"] + report["summary"]["restarted"] == len(fleet.all)
    # The pod of the Kubernetes workspace is rolled: a restart.
    kube = next(w for w in report["workspaces"] if w["workspace"] == "/".join(fleet.kube))
    assert kube["restart"] is True, kube
    # Nothing written: no config, no state, no store row.
    assert snapshot(fleet) == before
    # Another owner's workspaces are left out with --owner.
    only = fleet_preview(fleet, program, "--owner", "bob", "--json")
    assert [w["workspace"] for w in json.loads(only.stdout)["workspaces"]] == [
        f"{o}/{n}" for o, n in fleet.names if o == "bob"]


def test_preview_flags_a_change_that_would_replace_storage(fleet: Fleet, tmp_path: Path
                                                          ) -> None:
    program = program_copy(tmp_path)
    # The volume under a new resource name: the old one would be deleted.
    storage_change(program)
    before = snapshot(fleet)
    r = fleet_preview(fleet, program, "--markdown")
    assert r.returncode == 1, r.stdout + r.stderr
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| `")]
    assert len(rows) == len(fleet.all)
    assert all("| refused |" in row and "**YES**" in row for row in rows), r.stdout
    assert f"{len(fleet.all)} refused" in r.stdout
    assert snapshot(fleet) == before


def updates(fleet: Fleet, owner: str, name: str) -> int:
    """Succeeded update operations of a workspace."""
    return fleet.store.db.execute(
        "SELECT COUNT(*) FROM operations WHERE owner=? AND workspace=? AND kind='update'"
        " AND status='succeeded'", (owner, name)).fetchone()[0]


def test_rollout_of_a_merged_change_survives_a_kill(fleet: Fleet, tmp_path: Path,
                                                    docker_client) -> None:
    svc = fleet.svc
    (a_owner, a1), (_, a2), (b_owner, b1) = fleet.names
    # Admin only; options are checked field by field.
    assert svc.call("POST", "/rollouts", fleet.tokens["alice"], json={}).status_code == 404
    bad = svc.call("POST", "/rollouts", json={"batch": "0", "nope": 1})
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} == {"batch", "nope"}
    stop = svc.call("POST", f"/workspaces/{b1}/stop", fleet.tokens[b_owner])
    assert svc.wait_op(stop.json()["id"])["status"] == "succeeded"
    container = docker_client.containers.get(fleet.get(a_owner, a1)["outputs"]["container"])
    assert container.exec_run(["sh", "-c", "echo kept > marker"], user="1000").exit_code == 0

    # The pull request's preview, its plans kept; then a user's PATCH makes a2's stale.
    checkout = service_checkout(tmp_path)
    label_change(checkout)
    plans = tmp_path / "plans"
    reviewed = fleet_preview(fleet, checkout, "--json", "--save-plans", str(plans))
    assert reviewed.returncode == 0, reviewed.stderr
    patch = svc.call("PATCH", f"/workspaces/{a2}", fleet.tokens[a_owner],
                     json={"env": {"TEAM": "dev"}})
    assert svc.wait_op(patch.json()["id"])["status"] == "succeeded"

    # The merge: the service now runs the changed component code.
    fleet.deploy(checkout)
    new_version = code_version.version_at(checkout)
    assert all(fleet.get(o, n)["outdated"] for o, n in fleet.all)
    before = {n: updates(fleet, o, n) for o, n in fleet.all}

    started = fleet_rollout(fleet, "--batch", "1", "--plans", str(plans), "--no-wait")
    assert started.returncode == 0, started.stderr
    rid = json.loads(started.stdout)["id"]
    # kill -9 of the whole service while the first update is in the queue or running.
    deadline = time.monotonic() + 120
    while not any(i["operation"] for i in svc.call("GET", f"/rollouts/{rid}").json()["items"]):
        assert time.monotonic() < deadline, "no update was requested"
        time.sleep(0.2)
    svc.restart_after_kill()
    deadline = time.monotonic() + 600
    while (rollout := svc.call("GET", f"/rollouts/{rid}").json())["status"] == "running":
        assert time.monotonic() < deadline, rollout
        time.sleep(1)

    items = {i["workspace"]: i for i in rollout["items"]}
    assert rollout["status"] == "finished", rollout
    assert rollout["code_version"] == new_version

    def rolled_out(owner: str, name: str) -> None:
        ws = fleet.get(owner, name)
        assert ws["code_version"] == new_version and ws["outdated"] is False
        assert ws["state"] == "running"
        labels = docker_client.containers.get(ws["outputs"]["container"]).labels
        assert labels.get("example.com/team") == "dev"
        # Applied once, whatever the kill cut off.
        assert updates(fleet, owner, name) == before[name] + 1

    assert items[f"{a_owner}/{a1}"]["status"] == "succeeded", items
    rolled_out(a_owner, a1)
    # The Kubernetes workspace too: its pod template carries the label.
    k_owner, k_name = fleet.kube
    assert items[f"{k_owner}/{k_name}"]["status"] == "succeeded", items
    kube = fleet.get(k_owner, k_name)
    assert kube["code_version"] == new_version and kube["state"] == "running"
    deployment = fleet.apps.read_namespaced_deployment(kube["outputs"]["deployment"], NAMESPACE)
    assert deployment.spec.template.metadata.labels.get("example.com/team") == "dev"
    assert updates(fleet, k_owner, k_name) == before[k_name] + 1
    new = docker_client.containers.get(fleet.get(a_owner, a1)["outputs"]["container"])
    assert new.exec_run(["cat", "marker"], user="1000").output.strip() == b"kept"
    # Changed since its review: never updated with something unreviewed.
    assert items[f"{a_owner}/{a2}"]["status"] == "stale", items
    assert "changed since the review" in items[f"{a_owner}/{a2}"]["detail"]
    assert fleet.get(a_owner, a2)["outdated"] is True
    assert updates(fleet, a_owner, a2) == before[a2]
    # A stopped workspace gets the code at its next start, or now with --stopped-too.
    assert items[f"{b_owner}/{b1}"]["status"] == "skipped"
    assert "next start" in items[f"{b_owner}/{b1}"]["detail"]
    assert fleet.get(b_owner, b1)["outdated"] is True
    late = svc.call("POST", f"/rollouts/{rid}/cancel")
    assert late.status_code == 409

    again = fleet_rollout(fleet, "--stopped-too")
    assert again.returncode == 0, again.stdout + again.stderr
    second = json.loads(again.stdout)
    assert sorted(i["workspace"] for i in second["items"]) == sorted(
        [f"{a_owner}/{a2}", f"{b_owner}/{b1}"])
    rolled_out(a_owner, a2)
    ws = fleet.get(b_owner, b1)
    assert ws["outdated"] is False and ws["state"] == "stopped"


def test_rollout_refuses_storage_at_risk_and_touches_nothing(fleet: Fleet, tmp_path: Path,
                                                             docker_client) -> None:
    checkout = service_checkout(tmp_path)
    storage_change(checkout)
    running = fleet.names[:2]
    containers = {n: docker_client.containers.get(fleet.get(o, n)["outputs"]["container"]).id
                  for o, n in running}
    k_owner, k_name = fleet.kube
    pvc = fleet.get(k_owner, k_name)["outputs"]["storage"]
    pvc_uid = fleet.core.read_namespaced_persistent_volume_claim(pvc, NAMESPACE).metadata.uid
    fleet.deploy(checkout)
    r = fleet_rollout(fleet, "--max-failures", "5")
    assert r.returncode == 1, r.stdout + r.stderr
    rollout = json.loads(r.stdout)
    items = {i["workspace"]: i for i in rollout["items"]}
    for owner, name in running:
        assert items[f"{owner}/{name}"]["status"] == "refused", items
        ws = fleet.get(owner, name)
        assert ws["outdated"] is True and ws["state"] == "running"
        now = docker_client.containers.get(ws["outputs"]["container"])
        assert now.id == containers[name] and now.status == "running"
        assert docker_client.volumes.get(ws["outputs"]["storage"])
    assert items[f"{k_owner}/{k_name}"]["status"] == "refused", items
    assert fleet.get(k_owner, k_name)["outdated"] is True
    claim = fleet.core.read_namespaced_persistent_volume_claim(pvc, NAMESPACE)
    assert claim.metadata.uid == pvc_uid and claim.metadata.deletion_timestamp is None
