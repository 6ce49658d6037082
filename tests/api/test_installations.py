"""Two installations (two data dirs: stores, Pulumi backends, proxies) on one
Docker Engine, as a harness starting a fresh service per scenario or staging
next to prod has them: the same owner/name in both never clash, each one's
terminal reaches its own container, and deleting in one leaves the other's
container, volume and files alone. Real engine, real services and proxies."""

from __future__ import annotations

import dataclasses
import json
import secrets
from pathlib import Path

import docker.errors
import pytest

from components.runtime import parse_runtime
from service.runtime_objects import remove_unrecorded, workload_running
from tests.api.conftest import custom_service
from tests.api.test_api_lifecycle import wait_op
from tests.api.test_cli_client import cli

pytestmark = pytest.mark.e2e

LABEL_INSTALLATION = "stackspace.dev/installation"


def _settings(pulumi_settings, data_dir: Path):
    """The installation's own Pulumi backend under its data dir (as `stackspace run`)."""
    (data_dir / "state").mkdir(parents=True)
    return dataclasses.replace(pulumi_settings, backend_url=f"file://{data_dir / 'state'}")


def _create(svc, name: str) -> dict:
    op = wait_op(svc, svc.alice, svc.call("POST", "/api/v1/workspaces", svc.alice,
                                          json={"name": name}).json()["id"])
    assert op["status"] == "succeeded", op["error"]
    return svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()


def _delete(svc, name: str) -> dict:
    return wait_op(svc, svc.alice, svc.call("DELETE", f"/api/v1/workspaces/{name}",
                                            svc.alice).json()["id"])


def test_two_installations_on_one_engine_never_touch_each_others_objects(
        tmp_path, docker_host, docker_client, pulumi_settings, docker_provider):
    name = f"inst-{secrets.token_hex(3)}"  # the same owner/name in both
    dir_a, dir_b = tmp_path / "a", tmp_path / "b"
    with custom_service(dir_a, docker_host, _settings(pulumi_settings, dir_a)) as a, \
            custom_service(dir_b, docker_host, _settings(pulumi_settings, dir_b)) as b:
        ids = (a.store.installation_id, b.store.installation_id)
        assert all(ids) and ids[0] != ids[1]
        try:
            ws_a = _create(a, name)
            wrote = cli(a, "exec", name, "--", "sh", "-c", "echo from-a > /workspace/mark")
            assert wrote.returncode == 0, wrote.stderr
            ws_b = _create(b, name)  # before ids: 'container name ... already in use'

            # Each installation's objects are its own: named apart, labelled with its id.
            cont_a = docker_client.containers.get(ws_a["outputs"]["container"])
            cont_b = docker_client.containers.get(ws_b["outputs"]["container"])
            assert cont_a.id != cont_b.id
            assert cont_a.labels[LABEL_INSTALLATION] == ids[0]
            assert cont_b.labels[LABEL_INSTALLATION] == ids[1]
            vol_a = docker_client.volumes.get(ws_a["outputs"]["storage"])
            assert vol_a.attrs["Labels"][LABEL_INSTALLATION] == ids[0]

            # The label lookups the service makes (status, recovery sweep) see
            # only their own installation's objects; a legacy store's sees neither.
            runtime = parse_runtime(a.store.workspace("alice", name)["runtime_config"])
            for inst in ids:
                assert workload_running(runtime, "alice", name, installation=inst) is True
            assert workload_running(runtime, "alice", name, installation="") is False
            assert remove_unrecorded(runtime, "alice", name, set(), installation="") == 0

            # Each terminal (service -> ticket -> proxy) lands in its own container.
            r = cli(b, "exec", name, "--", "sh", "-c",
                    "echo from-b > /workspace/mark-b; cat /workspace/mark 2>/dev/null; true")
            assert r.returncode == 0 and r.stdout == "", (r.stdout, r.stderr)
            r = cli(a, "exec", name, "--", "sh", "-c", "cat /workspace/mark; ls /workspace")
            assert r.returncode == 0 and r.stdout.startswith("from-a\n"), r.stderr
            assert "mark-b" not in r.stdout

            # Deleting in B removes B's objects only.
            assert _delete(b, name)["status"] == "succeeded"
            with pytest.raises(docker.errors.NotFound):
                docker_client.containers.get(cont_b.id)
            assert not docker_client.volumes.list(
                filters={"label": f"{LABEL_INSTALLATION}={ids[1]}"})
            cont_a.reload()
            assert cont_a.status == "running"
            assert docker_client.volumes.get(vol_a.name)
            state = a.call("GET", f"/api/v1/workspaces/{name}", a.alice).json()
            assert state["state"] == "running", state
            r = cli(a, "exec", name, "--", "cat", "/workspace/mark")
            assert (r.returncode, r.stdout) == (0, "from-a\n"), r.stderr

            # A stop/start in A after B is gone still finds A's own storage.
            stopped = cli(a, "stop", name, "--wait", "--json")
            assert json.loads(stopped.stdout)["status"] == "succeeded", stopped.stderr
            started = cli(a, "start", name, "--wait", "--json")
            assert json.loads(started.stdout)["status"] == "succeeded", started.stderr
            r = cli(a, "exec", name, "--", "cat", "/workspace/mark")
            assert (r.returncode, r.stdout) == (0, "from-a\n"), r.stderr

            assert _delete(a, name)["status"] == "succeeded"
            assert not docker_client.containers.list(
                all=True, filters={"label": f"stackspace.dev/workspace={name}"})
            assert not docker_client.volumes.list(
                filters={"label": f"stackspace.dev/workspace={name}"})
        finally:
            for svc in (a, b):
                if svc.store.workspace("alice", name):
                    _delete(svc, name)


def test_a_legacy_store_keeps_old_names_and_never_touches_an_installation_with_an_id(
        tmp_path, docker_host, docker_client, pulumi_settings, docker_provider):
    """Upgrade: a store that held workspaces before ids existed keeps the empty
    id: its workspaces get exactly the old names and labels, and its lookups
    (delete's sweep included) pass over an installation with an id."""
    from service.store import Store
    from stacks.naming import resource_base

    name = f"inst-legacy-{secrets.token_hex(3)}"
    dir_old, dir_new = tmp_path / "old", tmp_path / "new"
    made = Store(dir_old / "stackspace.db")  # what the upgrade decided for it
    made.db.execute("UPDATE meta SET value='' WHERE key='installation'")
    made.close()
    with custom_service(dir_old, docker_host, _settings(pulumi_settings, dir_old)) as old, \
            custom_service(dir_new, docker_host, _settings(pulumi_settings, dir_new)) as new:
        assert old.store.installation_id == "" and new.store.installation_id
        try:
            ws_old = _create(old, name)
            base = resource_base("alice", name)  # the name every version before ids gave
            assert ws_old["outputs"]["container"] == base
            assert ws_old["outputs"]["storage"] == f"{base}-home"
            legacy = docker_client.containers.get(base)
            assert LABEL_INSTALLATION not in legacy.labels
            volume_id = docker_client.volumes.get(f"{base}-home").id
            assert cli(old, "exec", name, "--", "sh", "-c",
                       "echo kept > /workspace/kept").returncode == 0

            ws_new = _create(new, name)
            assert ws_new["outputs"]["container"] != base

            for kind in ("stop", "start"):
                done = cli(old, kind, name, "--wait", "--json")
                assert json.loads(done.stdout)["status"] == "succeeded", done.stderr
            assert docker_client.volumes.get(f"{base}-home").id == volume_id
            r = cli(old, "exec", name, "--", "cat", "/workspace/kept")
            assert (r.returncode, r.stdout) == (0, "kept\n"), r.stderr

            assert _delete(old, name)["status"] == "succeeded"
            with pytest.raises(docker.errors.NotFound):
                docker_client.volumes.get(f"{base}-home")
            assert docker_client.containers.get(ws_new["outputs"]["container"]).status == \
                "running"
            assert docker_client.volumes.get(ws_new["outputs"]["storage"])
            assert _delete(new, name)["status"] == "succeeded"
        finally:
            for svc in (old, new):
                if svc.store.workspace("alice", name):
                    _delete(svc, name)
