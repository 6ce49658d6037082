"""What the store keeps of a spec, over HTTP on the real engine (SPEC §4):
queued PATCHes compose in order, and a row stored under older rules stays
usable. The store logic is the same on both stores (tests/unit/test_store.py
runs it on each), so these run on SQLite only."""

from __future__ import annotations

import json
import secrets

import pytest

from components.spec import DEFAULT_IMAGE, MAX_FILE_BYTES
from tests.api.test_api_lifecycle import wait_op

pytestmark = [pytest.mark.e2e,
              pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)]


def _container(svc, docker_client, name: str):
    ws = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()
    return ws, docker_client.containers.get(ws["outputs"]["container"])


def test_queued_patches_compose_behind_a_running_operation(service, docker_client):
    svc = service
    name = f"compose-{secrets.token_hex(3)}"
    other_image = "stackspace/workspace:compose-test"
    docker_client.images.get(DEFAULT_IMAGE).tag(other_image)
    create = svc.call("POST", "/api/v1/workspaces", svc.alice,
                      json={"name": name, "env": {"A": "1"}}).json()["id"]
    # Each queued while the ones before it (the create first) have not run:
    # each must apply to the spec the one before it produced.
    patches = [{"env": {"A": "1", "B": "2"}},
               {"files": [{"path": "notes/todo.txt", "content": "kept\n"}]},
               {"image": other_image}]
    queued = []
    for patch in patches:
        r = svc.call("PATCH", f"/api/v1/workspaces/{name}?queue=true", svc.alice, json=patch)
        assert r.status_code == 202, r.text
        queued.append(r.json()["id"])
    assert svc.call("GET", f"/api/v1/operations/{create}", svc.alice).json()["status"] in (
        "queued", "running")
    for op_id in [create, *queued]:
        assert wait_op(svc, svc.alice, op_id)["status"] == "succeeded"

    ws, container = _container(svc, docker_client, name)
    assert ws["spec"]["env"] == {"A": "1", "B": "2"}
    assert [f["path"] for f in ws["spec"]["files"]] == ["notes/todo.txt"]
    assert ws["spec"]["image"] == other_image
    assert container.attrs["Config"]["Image"] == other_image
    assert "B=2" in container.attrs["Config"]["Env"]
    assert container.exec_run(["cat", "/workspace/notes/todo.txt"]).output == b"kept\n"
    assert wait_op(svc, svc.alice, svc.call("DELETE", f"/api/v1/workspaces/{name}",
                                            svc.alice).json()["id"])["status"] == "succeeded"


def test_a_workspace_stored_under_older_rules_stays_usable(service, docker_client):
    svc = service
    name = f"legacy-{secrets.token_hex(3)}"
    op = svc.call("POST", "/api/v1/workspaces", svc.alice, json={"name": name}).json()
    assert wait_op(svc, svc.alice, op["id"])["status"] == "succeeded"
    # As an older release stored it, when one file could take 256 KiB: today's
    # rules (100 KiB) reject this spec.
    big = "x" * (MAX_FILE_BYTES + 4096)
    with svc.store.tx() as db:
        row = db.execute("SELECT spec FROM workspaces WHERE owner=? AND name=?",
                         ("alice", name)).fetchone()
        spec = {**json.loads(row["spec"]), "files": [{"path": "big.txt", "content": big,
                                                       "mode": "0644", "secret": False}]}
        db.execute("UPDATE workspaces SET spec=?, spec_version=0 WHERE owner=? AND name=?",
                   (json.dumps(spec), "alice", name))

    listed = svc.call("GET", "/api/v1/workspaces", svc.alice)
    assert listed.status_code == 200, listed.text
    assert name in [w["name"] for w in listed.json()["items"]]
    shown = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice)
    assert shown.status_code == 200, shown.text
    assert shown.json()["spec"]["files"][0]["path"] == "big.txt"
    for action in ("stop", "start"):
        op = svc.call("POST", f"/api/v1/workspaces/{name}/{action}", svc.alice).json()
        assert wait_op(svc, svc.alice, op["id"])["status"] == "succeeded", action
    assert _container(svc, docker_client, name)[1].status == "running"
    # A PATCH meets today's rules for what it sends, naming the field at fault;
    # what it leaves alone keeps the rules it was stored under.
    r = svc.call("PATCH", f"/api/v1/workspaces/{name}", svc.alice,
                 json={"files": [{"path": "big.txt", "content": big}]})
    assert r.status_code == 422 and "files[0].content" in r.text, r.text
    r = svc.call("PATCH", f"/api/v1/workspaces/{name}", svc.alice, json={"env": {"X": "1"}})
    assert r.status_code == 202, r.text
    assert wait_op(svc, svc.alice, r.json()["id"])["status"] == "succeeded"
    ws, container = _container(svc, docker_client, name)
    assert ws["spec"]["files"][0]["path"] == "big.txt" and "X=1" in container.attrs[
        "Config"]["Env"]
    op = svc.call("DELETE", f"/api/v1/workspaces/{name}", svc.alice).json()
    assert wait_op(svc, svc.alice, op["id"])["status"] == "succeeded"
    assert svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).status_code == 404
