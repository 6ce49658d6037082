"""`secret_env` over HTTP on the real engine and Docker Engine: the workspace
gets the value, the API, the SSE stream and the store never show it, and an
update of plain env keeps it."""

from __future__ import annotations

import json
import secrets

import pytest

from tests.api.test_api_lifecycle import wait_op
from tests.conftest import raw_store_contents
from tests.e2e.remote_helpers import stackspace_exec

pytestmark = pytest.mark.e2e


def test_secret_env_reaches_the_workspace_and_is_never_echoed(service, docker_client):
    svc = service
    name = f"content-senv-{secrets.token_hex(3)}"
    value = f"onedev-token-{secrets.token_hex(12)}"
    r = svc.call("POST", "/api/v1/workspaces", svc.alice, json={
        "name": name, "env": {"ONEDEV_SERVER_URL": "https://onedev.example.test"},
        "secret_env": {"ONEDEV_WORKSPACE_TOKEN": value}})
    assert r.status_code == 202
    op = wait_op(svc, svc.alice, r.json()["id"])
    assert op["status"] == "succeeded", op
    ws = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()
    assert ws["spec"]["secret_env"] == {"ONEDEV_WORKSPACE_TOKEN": "[secret]"}
    env = ["sh", "-c", 'printf "%s %s" "$ONEDEV_WORKSPACE_TOKEN" "$ONEDEV_SERVER_URL"']
    # Through the exec proxy, as the user runs it.
    assert stackspace_exec(svc, name, *env).stdout.decode() == \
        f"{value} https://onedev.example.test"

    def inspected() -> str:  # every object the workspace owns, as `docker inspect` shows it
        filters = {"label": f"stackspace.dev/workspace={name}"}
        return json.dumps([docker_client.api.inspect_container(c.id) for c in
                           docker_client.containers.list(all=True, filters=filters)]
                          + [v.attrs for v in docker_client.volumes.list(filters=filters)])

    assert name in inspected() and value not in inspected()

    # Updating plain env keeps the secret one (it stays in the stack's secrets).
    op = wait_op(svc, svc.alice, svc.call("PATCH", f"/api/v1/workspaces/{name}", svc.alice,
                                          json={"env": {"ONEDEV_SERVER_URL": "https://b.test"}}
                                          ).json()["id"])
    assert op["status"] == "succeeded", op
    assert stackspace_exec(svc, name, *env).stdout.decode() == f"{value} https://b.test"
    assert value not in inspected()

    shown = [svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).text,
             svc.call("GET", "/api/v1/workspaces", svc.alice).text,
             svc.call("GET", f"/api/v1/operations/{op['id']}/events", svc.alice).text,
             r.text]
    assert not any(value in text for text in shown)
    assert value.encode() not in raw_store_contents(svc.store)
    op = wait_op(svc, svc.alice, svc.call("DELETE", f"/api/v1/workspaces/{name}",
                                          svc.alice).json()["id"])
    assert op["status"] == "succeeded", op
