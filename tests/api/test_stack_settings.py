"""Stack settings in the store, the postgres:// Pulumi backend, and the operator's
command, through a live service on the real engine and Docker Engine (SPEC §1,
§6, §9): nothing lands in the checkout, the store holds each stack's config and
encryption salt, and `stackspace stack OWNER/NAME -- ...` runs the plain
`pulumi` CLI on the very stack the service drives."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import docker.errors
import pytest

from components.base import LABEL_OWNER, LABEL_WORKSPACE
from components.secret_env import with_secret_env
from service.store import DatabaseURL
from stacks.settings import PROJECT_DIR
from tests.api.conftest import Service, custom_service
from tests.api.test_api_lifecycle import wait_op

pytestmark = pytest.mark.e2e


def checkout_settings_files() -> set[Path]:
    return {p for p in PROJECT_DIR.glob("Pulumi.*.y*ml") if p.name != "Pulumi.yaml"}


def pulumi_backend(database_url: str) -> str:
    """The DIY backend URL for a database: Pulumi wants the `postgres://` scheme
    (`postgresql://` reads as a Pulumi Cloud URL) and, for a server without TLS
    (the test server on loopback), `sslmode=disable` (lib/pq requires TLS)."""
    rest = database_url.split("://", 1)[1]
    return f"postgres://{rest}?sslmode=disable"


def operator(svc: Service, settings, workspace: str, *args: str
             ) -> subprocess.CompletedProcess:
    """`stackspace stack OWNER/NAME -- ARGS` as an operator on the service host."""
    env = {**os.environ, "PULUMI_BACKEND_URL": settings.backend_url,
           "PULUMI_CONFIG_PASSPHRASE": settings.passphrase,
           "PULUMI_HOME": str(settings.pulumi_home),
           "STACKSPACE_PULUMI_BIN": str(settings.bin_dir)}
    env.pop("STACKSPACE_DATABASE_URL", None)
    if isinstance(svc.store.path, DatabaseURL):
        env["STACKSPACE_DATABASE_URL"] = str(svc.store.path)
    data_dir = Path(svc.store.key_file).parent  # the service's data (and secrets) dir
    return subprocess.run([sys.executable, "-m", "service.cli", "stack", workspace,
                           "--data-dir", str(data_dir), "--", *args],
                          env=env, capture_output=True, text=True, timeout=600, check=False)


def backend_lists(settings, stack: str, cwd: Path) -> bool:
    """Whether the plain CLI lists `stack` in the backend (outside any
    project: `--all` lists every stack the backend holds)."""
    proc = subprocess.run([settings.pulumi_binary, "stack", "ls", "--all", "--json",
                           "--non-interactive"], cwd=cwd, env={**os.environ, **settings.env()},
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return any(s["name"].split("/")[-1] == stack for s in json.loads(proc.stdout))


def run_op(svc: Service, method: str, path: str, body: dict | None = None) -> dict:
    r = svc.call(method, f"/api/v1/workspaces{path}", svc.alice, json=body)
    assert r.status_code == 202, r.text
    op = wait_op(svc, svc.alice, r.json()["id"])
    assert op["status"] == "succeeded", op
    return op


def lifecycle_with_operator_checks(svc: Service, settings, docker_client, name: str,
                                   listed: Callable[[str], bool] | None = None) -> None:
    """create (with a secret) / stop / start / delete through the service; the
    stack's settings live in the store at each step, never in the checkout;
    the operator's preview shows no changes and its `stack output` what the
    API shows. `listed(stack)`: whether the plain CLI lists the stack."""
    value = f"state-secret-{os.urandom(8).hex()}"
    before = checkout_settings_files()
    run_op(svc, "POST", "", {"name": name, "secret_env": {"STATE_TOKEN": value}})
    ws = svc.store.workspace("alice", name)
    stack = ws["stack"]
    salt = [ln for ln in ws["stack_settings"].splitlines() if ln.startswith("encryptionsalt:")]
    assert salt and "stackspace:secrets:" in ws["stack_settings"]
    assert value not in ws["stack_settings"]
    assert checkout_settings_files() == before
    if listed is not None:
        assert listed(stack)

    shown = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).text
    assert "encryptionsalt" not in shown and "stack_settings" not in shown

    preview = operator(svc, settings, f"alice/{name}", "preview", "--expect-no-changes",
                       "--non-interactive")
    assert preview.returncode == 0, preview.stdout[-2000:] + preview.stderr[-2000:]
    assert value not in preview.stdout + preview.stderr
    outputs = operator(svc, settings, stack, "stack", "output", "--json")  # by stack name
    assert outputs.returncode == 0, outputs.stderr[-2000:]
    api_outputs = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()["outputs"]
    assert json.loads(outputs.stdout)["container"] == api_outputs["container"]

    run_op(svc, "POST", f"/{name}/stop")
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(api_outputs["container"])
    run_op(svc, "POST", f"/{name}/start")
    container = docker_client.containers.get(api_outputs["container"])
    code, out = container.exec_run(with_secret_env(["sh", "-c", 'printf %s "$STATE_TOKEN"']),
                                       user="1000")
    assert (code, out.decode()) == (0, value)
    # The salt the create made is the one every later run used.
    kept = svc.store.workspace("alice", name)["stack_settings"]
    assert [ln for ln in kept.splitlines() if ln.startswith("encryptionsalt:")] == salt
    assert checkout_settings_files() == before
    stacks = operator(svc, settings, f"alice/{name}", "stack", "ls", "--json")
    assert stacks.returncode == 0, stacks.stderr[-2000:]
    assert stack in [s["name"] for s in json.loads(stacks.stdout)]

    run_op(svc, "DELETE", f"/{name}")
    assert svc.store.workspace("alice", name) is None
    assert checkout_settings_files() == before
    gone = operator(svc, settings, f"alice/{name}", "stack", "ls")
    assert gone.returncode != 0 and "no workspace" in gone.stderr
    if listed is not None:
        assert not listed(stack)


def test_service_keeps_stack_settings_in_its_store(service, pulumi_settings, docker_client):
    lifecycle_with_operator_checks(service, pulumi_settings, docker_client,
                                   f"state-file-{os.urandom(3).hex()}")


def test_workspace_lifecycle_on_the_postgres_backend(tmp_path, docker_host, docker_client,
                                                     pulumi_settings, docker_provider,
                                                     new_database):
    """The DIY postgres:// backend (Pulumi CLI >= 3.176) beside the PostgreSQL
    store, as replicas run past one machine: the service runs every operation
    on it, and the plain CLI sees the stack there (the backend creates its
    `pulumi_state` table on first use)."""
    backend = pulumi_backend(new_database("state_backend"))
    settings = dataclasses.replace(pulumi_settings, backend_url=backend)

    with custom_service(tmp_path / "svc", docker_host, settings,
                        database_url=new_database("state_store")) as svc:
        lifecycle_with_operator_checks(svc, settings, docker_client,
                                       f"state-pg-{os.urandom(3).hex()}",
                                       lambda stack: backend_lists(settings, stack, tmp_path))


def test_replicas_opening_a_new_postgres_backend_at_once_all_succeed(pulumi_settings,
                                                                     new_database):
    """The CLI creates the backend's table on first use, and two CLIs doing so at
    once fail: each replica opens the backend before its engines run, retrying
    when a sibling won the race."""
    from concurrent.futures import ThreadPoolExecutor

    import psycopg

    from stacks.settings import prepare_backend

    url = new_database("state_open")
    settings = dataclasses.replace(pulumi_settings, backend_url=pulumi_backend(url))
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(lambda _: prepare_backend(settings), range(4))) == [None] * 4
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('pulumi_state')").fetchone()[0] is not None


def test_every_workspace_deletes_on_a_postgres_backend_holding_many_stacks(
        tmp_path, docker_host, docker_client, pulumi_settings, docker_provider, new_database):
    """The plain CLI's `stack ls` on the postgres:// backend (3.259) never
    answers once the backend holds 4 stacks: no operation may depend on a
    listing. Five workspaces are made; each delete finishes and leaves nothing."""
    backend = pulumi_backend(new_database("state_many"))
    settings = dataclasses.replace(pulumi_settings, backend_url=backend)
    names = [f"state-many-{os.urandom(2).hex()}-{i}" for i in range(5)]
    with custom_service(tmp_path / "svc", docker_host, settings,
                        database_url=new_database("state_many_store")) as svc:
        ops = [svc.call("POST", "/api/v1/workspaces", svc.alice, json={"name": n}).json()
               for n in names]
        assert [wait_op(svc, svc.alice, op["id"])["status"] for op in ops] == ["succeeded"] * 5
        ops = [svc.call("DELETE", f"/api/v1/workspaces/{n}", svc.alice).json() for n in names]
        assert [wait_op(svc, svc.alice, op["id"])["status"] for op in ops] == ["succeeded"] * 5
        assert svc.store.workspaces("alice") == []
    for n in names:
        labels = [f"{LABEL_WORKSPACE}={n}", f"{LABEL_OWNER}=alice"]
        assert docker_client.containers.list(all=True, filters={"label": labels}) == []
        assert docker_client.volumes.list(filters={"label": labels}) == []


def test_two_installations_on_one_backend_never_share_a_stack(
        service, tmp_path, docker_host, docker_client, pulumi_settings):
    """Another installation (its own store) on the same backend and passphrase
    asks for the same owner and workspace name: same stack name, so its create
    is refused (it has no settings for that stack), and deleting its failed
    workspace leaves the first one's stack and workload alone."""
    name = f"state-twice-{os.urandom(3).hex()}"
    first = service
    run_op(first, "POST", "", {"name": name, "env": {"FROM": "first"}})
    container = first.store.workspace("alice", name)["outputs"]["container"]
    try:
        with custom_service(tmp_path / "second", docker_host, pulumi_settings) as second:
            r = second.call("POST", "/api/v1/workspaces", second.alice,
                            json={"name": name, "env": {"FROM": "second"}})
            op = wait_op(second, second.alice, r.json()["id"])
            assert (op["status"], op["error_type"]) == ("failed", "stack-taken"), op
            assert "another stackspace installation" in op["error"]
            run_op(second, "DELETE", f"/{name}")
        code, out = docker_client.containers.get(container).exec_run(
            ["sh", "-c", 'printf %s "$FROM"'])
        assert (code, out.decode()) == (0, "first")
        preview = operator(first, pulumi_settings, f"alice/{name}", "preview",
                           "--expect-no-changes", "--non-interactive")
        assert preview.returncode == 0, preview.stdout[-2000:] + preview.stderr[-2000:]
    finally:
        run_op(first, "DELETE", f"/{name}")


@pytest.mark.parametrize("ending", ["failed", "cancelled"])
def test_a_create_cut_short_after_init_keeps_its_salt_for_the_next_run(
        service, pulumi_settings, tmp_path, ending):
    """A create that fails (its clone fails) or is cancelled once the engine
    runs has made the stack and its salt: the store keeps them, so the next
    run (delete) decrypts what the stack holds and removes it."""
    svc = service
    name = f"state-{ending[:4]}-{os.urandom(3).hex()}"
    spec = {"name": name, "secret_env": {"STATE_TOKEN": os.urandom(8).hex()}}
    if ending == "failed":
        spec["repository"] = {"url": "file:///srv/missing.git"}
    r = svc.call("POST", "/api/v1/workspaces", svc.alice, json=spec)
    assert r.status_code == 202, r.text
    op_id = r.json()["id"]
    deleted = False
    try:
        if ending == "cancelled":
            # Cancel once the engine is at work on the stack (after `stack init`).
            deadline = time.monotonic() + 300
            while not any(body.get("resource_type") == "docker:index/volume:Volume"
                          for _, body in svc.store.events(op_id)):
                assert time.monotonic() < deadline, "the create never reached the engine"
                time.sleep(0.2)
            assert svc.call("POST", f"/api/v1/operations/{op_id}/cancel", svc.alice).ok
        op = wait_op(svc, svc.alice, op_id)
        assert op["status"] == ending, op
        ws = svc.store.workspace("alice", name)
        assert "encryptionsalt:" in (ws["stack_settings"] or ""), ws["state"]
        assert backend_lists(pulumi_settings, ws["stack"], tmp_path)
        run_op(svc, "DELETE", f"/{name}")
        deleted = True
        assert not backend_lists(pulumi_settings, ws["stack"], tmp_path)
    finally:
        if not deleted:  # leave nothing behind a failed check
            wait_op(svc, svc.alice, op_id)
            r = svc.call("DELETE", f"/api/v1/workspaces/{name}", svc.alice)
            if r.status_code == 202:
                wait_op(svc, svc.alice, r.json()["id"])
