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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stacks import code_version
from stacks.settings import PROJECT_DIR, PulumiSettings
from tests.api.conftest import Service, custom_service
from tests.e2e.remote_helpers import wait_op

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("docker_provider")]

PROGRAM_FILES = ("Pulumi.yaml", "__main__.py", "components", "stacks")


@dataclass
class Fleet:
    svc: Service
    data_dir: Path
    settings: PulumiSettings
    names: list[tuple[str, str]]  # (owner, name)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, docker_host, pulumi_home, pulumi_bin) -> Iterator[Fleet]:
    """Two Docker workspaces of two owners, made through the service, whose
    backend and passphrase the CLI finds as `stackspace stack` does."""
    data_dir = tmp_path_factory.mktemp("fleet")
    (data_dir / "state").mkdir()
    settings = PulumiSettings(backend_url=f"file://{data_dir / 'state'}",
                              passphrase=secrets.token_hex(16), pulumi_home=pulumi_home,
                              bin_dir=pulumi_bin, python=sys.executable)
    suffix = secrets.token_hex(3)
    with custom_service(data_dir, docker_host, settings) as svc:
        names = [("alice", f"fa-{suffix}"), ("bob", f"fb-{suffix}")]
        tokens = {"alice": svc.alice, "bob": svc.bob}
        ops = []
        for owner, name in names:
            r = svc.call("POST", "/api/v1/workspaces", tokens[owner], json={"name": name})
            assert r.status_code == 202, r.text
            ops.append((owner, r.json()["id"]))
        for owner, op_id in ops:
            assert wait_op(svc, tokens[owner], op_id)["status"] == "succeeded"
        yield Fleet(svc, data_dir, settings, names)
        for owner, name in names:
            r = svc.call("DELETE", f"/api/v1/workspaces/{name}", tokens[owner])
            if r.status_code == 202:
                wait_op(svc, tokens[owner], r.json()["id"])


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
    env = {**os.environ, "PULUMI_CONFIG_PASSPHRASE": fleet.settings.passphrase,
           "PULUMI_HOME": str(fleet.settings.pulumi_home),
           "STACKSPACE_PULUMI_BIN": str(fleet.settings.bin_dir)}
    env.pop("PULUMI_BACKEND_URL", None)
    env.pop("STACKSPACE_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "service.cli", "fleet", "preview",
                           "--program", str(program), "--data-dir", str(fleet.data_dir),
                           "--concurrency", "2", *args],
                          env=env, capture_output=True, text=True, timeout=900, check=False)


def snapshot(fleet: Fleet) -> tuple[dict[str, bytes], list[dict], dict]:
    """Every byte of the stack state, and every store row of the fleet."""
    state = fleet.data_dir / "state"
    files = {str(p.relative_to(state)): p.read_bytes()
             for p in sorted(state.rglob("*")) if p.is_file()}
    store = fleet.svc.store
    return files, store.workspaces(), {str(k): v for k, v in store.last_operations().items()}


def test_workspaces_record_the_code_version_they_run(fleet: Fleet) -> None:
    svc = fleet.svc
    listed = svc.call("GET", "/api/v1/workspaces?owner=", svc.admin).json()["items"]
    mine = {(w["owner"], w["name"]): w for w in listed}
    for owner, name in fleet.names:
        assert mine[(owner, name)]["code_version"] == code_version.current()
        assert mine[(owner, name)]["outdated"] is False
    shown = svc.call("GET", f"/api/v1/workspaces/{fleet.names[0][1]}", svc.alice).json()
    assert shown["code_version"] == code_version.current() and shown["outdated"] is False
    # The digest covers the program, the commit says which checkout it came from.
    assert shown["code_version"].split("@")[0] == code_version.current_digest()


def test_preview_of_a_label_change_writes_nothing(fleet: Fleet, tmp_path: Path) -> None:
    program = program_copy(tmp_path)
    # Unchanged code first: every workspace unchanged (the review is exact).
    same = fleet_preview(fleet, program, "--json")
    assert same.returncode == 0, same.stderr
    assert {w["outcome"] for w in json.loads(same.stdout)["workspaces"]} == {"unchanged"}

    edit(program / "components" / "docker.py",
         'labels=labels("workspace") + [',
         'labels=labels("workspace") + [{"label": "example.com/team", "value": "dev"}, ')
    before = snapshot(fleet)
    plans = tmp_path / "plans"
    r = fleet_preview(fleet, program, "--json", "--save-plans", str(plans))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert sorted(w["workspace"] for w in report["workspaces"]) == sorted(
        f"{o}/{n}" for o, n in fleet.names)
    for ws in report["workspaces"]:
        assert ws["storage_at_risk"] is False
        assert ws["outcome"] in ("changed", "restarted"), ws
        workload = [c for c in ws["resources"] if c["name"] == "workspace"]
        assert workload and "labels" in workload[0]["properties"][0], ws["resources"]
        assert ws["steps"]["replace"] + ws["steps"]["update"] >= 1
        assert (plans / f"{ws['stack']}.plan.json").is_file()
    assert report["summary"]["refused"] == 0
    assert report["summary"]["changed"] + report["summary"]["restarted"] == len(fleet.names)
    # Nothing written: no config, no state, no store row.
    assert snapshot(fleet) == before
    # Another owner's workspaces are left out with --owner.
    only = fleet_preview(fleet, program, "--owner", "bob", "--json")
    assert [w["workspace"] for w in json.loads(only.stdout)["workspaces"]] == [
        f"bob/{fleet.names[1][1]}"]


def test_preview_flags_a_change_that_would_replace_storage(fleet: Fleet, tmp_path: Path
                                                          ) -> None:
    program = program_copy(tmp_path)
    # The volume under a new resource name: the old one would be deleted.
    edit(program / "components" / "docker.py", 'docker.Volume(\n            "storage",',
         'docker.Volume(\n            "home",')
    before = snapshot(fleet)
    r = fleet_preview(fleet, program, "--markdown")
    assert r.returncode == 1, r.stdout + r.stderr
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| `")]
    assert len(rows) == len(fleet.names)
    assert all("| refused |" in row and "**YES**" in row for row in rows), r.stdout
    assert f"{len(fleet.names)} refused" in r.stdout
    assert snapshot(fleet) == before


def test_rollout_updates_outdated_running_workspaces_through_the_queue(
        fleet: Fleet, docker_client) -> None:
    svc = fleet.svc
    (alice, a_name), (bob, b_name) = fleet.names
    # Admin only; options are checked field by field and change nothing.
    assert svc.call("POST", "/api/v1/rollouts", svc.alice, json={}).status_code == 404
    bad = svc.call("POST", "/api/v1/rollouts", svc.admin, json={"batch": "0", "nope": 1})
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} == {"batch", "nope"}

    # Both workspaces as older code left them; bob's is stopped.
    stop = svc.call("POST", f"/api/v1/workspaces/{b_name}/stop", svc.bob)
    assert wait_op(svc, svc.bob, stop.json()["id"])["status"] == "succeeded"
    old = "0123456789abcdef@0123456789ab"
    for owner, name in fleet.names:
        outputs = svc.store.workspace(owner, name)["outputs"]
        svc.store.update_workspace(owner, name, outputs={**outputs, code_version.OUTPUT: old})
    shown = svc.call("GET", f"/api/v1/workspaces/{a_name}", svc.alice).json()
    assert shown["outdated"] is True and shown["code_version"] == old
    container = docker_client.containers.get(shown["outputs"]["container"])
    marker = container.exec_run(["sh", "-c", "echo kept > marker && cat marker"],
                                user="1000")
    assert marker.exit_code == 0, marker.output

    env = {**os.environ, "STACKSPACE_URL": svc.url, "STACKSPACE_TOKEN": svc.admin}
    r = subprocess.run([sys.executable, "-m", "service.cli", "fleet", "rollout", "--batch", "1",
                        "--json"], env=env, capture_output=True, text=True, timeout=900,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    rollout = json.loads(r.stdout)
    assert rollout["status"] == "finished" and rollout["code_version"] == code_version.current()
    items = {i["workspace"]: i for i in rollout["items"]}
    assert items[f"{alice}/{a_name}"]["status"] == "succeeded"
    # A stopped workspace gets the code at its next start.
    assert items[f"{bob}/{b_name}"]["status"] == "skipped"
    assert "next start" in items[f"{bob}/{b_name}"]["detail"]
    op = svc.call("GET", f"/api/v1/operations/{items[f'{alice}/{a_name}']['operation']}",
                  svc.alice).json()
    assert op["kind"] == "update" and op["status"] == "succeeded"
    after = svc.call("GET", f"/api/v1/workspaces/{a_name}", svc.alice).json()
    assert after["code_version"] == code_version.current() and after["outdated"] is False
    assert after["state"] == "running"
    kept = docker_client.containers.get(after["outputs"]["container"]).exec_run(
        ["cat", "marker"], user="1000")
    assert kept.output.strip() == b"kept"
    # The rollout is kept in the store: GET shows it; cancel after its end is a conflict.
    got = svc.call("GET", f"/api/v1/rollouts/{rollout['id']}", svc.admin).json()
    assert got["items"] == rollout["items"]
    late = svc.call("POST", f"/api/v1/rollouts/{rollout['id']}/cancel", svc.admin)
    assert late.status_code == 409
    bob_ws = svc.call("GET", f"/api/v1/workspaces/{b_name}", svc.bob).json()
    assert bob_ws["outdated"] is True and bob_ws["state"] == "stopped"
    start = svc.call("POST", f"/api/v1/workspaces/{b_name}/start", svc.bob)
    assert wait_op(svc, svc.bob, start.json()["id"])["status"] == "succeeded"
    assert svc.call("GET", f"/api/v1/workspaces/{b_name}", svc.bob).json()["outdated"] is False
