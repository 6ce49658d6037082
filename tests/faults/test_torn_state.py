"""A stack's backend state torn on purpose, as a kill -9 in the middle of a
write leaves it (issue 21), before each of stop, start, update and delete, on
the file:// and the postgres:// backend: every operation succeeds at the first
try, says what it repaired, keeps the user's file, and delete leaves 0
objects and no stack. No waiting for a lucky kill.

The shapes:
- sidecar: the checkpoint's `.attrs` sidecar truncated to 0 bytes (file://
  only: the postgres driver keeps no sidecars);
- cut: the checkpoint cut mid-JSON, its `.bak` left;
- gone: the checkpoint deleted, its `.bak` left;
- lost: the checkpoint cut and every copy of it gone (the run starts over
  from the runtime's labelled objects).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.api.conftest import Service, custom_service
from tests.api.test_api_lifecycle import wait_op
from tests.api.test_stack_settings import pulumi_backend
from tests.faults.engine import DockerView

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

OPS = ("stop", "start", "update", "delete")
KEEP = ("keep.txt", "user data")


class FileState:
    """The file:// backend's files of one stack, as the CLI writes them."""

    def __init__(self, backend_url: str):
        self.root = Path(backend_url.removeprefix("file://")) / ".pulumi"

    def checkpoint(self, stack: str) -> Path:
        return self.root / "stacks" / "stackspace" / f"{stack}.json"

    def exists(self, stack: str) -> bool:
        return self.checkpoint(stack).exists()

    def tear(self, stack: str, shape: str) -> None:
        ckpt = self.checkpoint(stack)
        sidecar = ckpt.with_name(ckpt.name + ".attrs")
        assert ckpt.exists() and sidecar.exists(), "the CLI wrote no checkpoint and sidecar"
        if shape == "sidecar":
            sidecar.write_bytes(b"")
        elif shape == "gone":
            assert ckpt.with_name(ckpt.name + ".bak").exists()
            ckpt.unlink()
        else:  # cut, lost
            data = ckpt.read_bytes()
            ckpt.write_bytes(data[: len(data) // 2])
        if shape == "lost":
            for copy in [ckpt.with_name(ckpt.name + ".bak"),
                         *(self.root / "backups" / "stackspace" / stack).glob("*")]:
                copy.unlink()


class PostgresState:
    """The postgres:// backend's rows of one stack (`data` = {"data": base64})."""

    def __init__(self, database_url: str):
        self.url = database_url

    def _sql(self, query: str, *params: object) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def _key(self, stack: str) -> str:
        return f"%.pulumi/stacks/stackspace/{stack}.json"

    def exists(self, stack: str) -> bool:
        return bool(self._sql("SELECT 1 FROM pulumi_state WHERE key LIKE %s", self._key(stack)))

    def tear(self, stack: str, shape: str) -> None:
        ((key, data),) = self._sql("SELECT key, data::text FROM pulumi_state WHERE key LIKE %s",
                                   self._key(stack))
        assert self._sql("SELECT 1 FROM pulumi_state WHERE key = %s", key + ".bak")
        if shape == "gone":
            self._sql("DELETE FROM pulumi_state WHERE key = %s", key)
            return
        raw = base64.b64decode(json.loads(data)["data"])
        cut = json.dumps({"data": base64.b64encode(raw[: len(raw) // 2]).decode()})
        self._sql("UPDATE pulumi_state SET data = %s::json WHERE key = %s", cut, key)
        if shape == "lost":
            self._sql("DELETE FROM pulumi_state WHERE key = %s OR key LIKE %s", key + ".bak",
                      f"%.pulumi/backups/stackspace/{stack}/%")


def lifecycle_through_torn_state(svc: Service, engine: DockerView, state, shape: str) -> None:
    """create, then tear the state before each of stop, start, update and delete."""
    name = f"torn-{shape}-{secrets.token_hex(2)}"
    op = svc.call("POST", "/api/v1/workspaces", svc.alice, json={"name": name}).json()
    op = wait_op(svc, svc.alice, op["id"])
    assert op["status"] == "succeeded", op.get("error")
    ws = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()
    stack = ws["stack"]
    (load,) = engine.workloads(name)
    engine.write_file(load.name, *KEEP)
    storage = engine.storage(name)
    for kind in OPS:
        state.tear(stack, shape)
        method, path, body = {
            "stop": ("POST", f"/{name}/stop", None), "start": ("POST", f"/{name}/start", None),
            "update": ("PATCH", f"/{name}", {"env": {"ROUND": kind}}),
            "delete": ("DELETE", f"/{name}", None)}[kind]
        r = svc.call(method, f"/api/v1/workspaces{path}", svc.alice, json=body)
        assert r.status_code == 202, r.text
        op = wait_op(svc, svc.alice, r.json()["id"])
        said = [e["message"] for _, e in svc.store.events(op["id"], 0)
                if "state repaired" in e.get("message", "")]
        assert op["status"] == "succeeded", (shape, kind, op.get("error"), said)
        assert said, f"{shape}/{kind}: no repair recorded on the operation"
        loads = engine.workloads(name)
        if kind == "delete":
            assert svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).status_code == 404
            assert engine.objects(name) == [], f"{shape}: orphans after delete"
            assert not state.exists(stack), f"{shape}: stack {stack} left in the backend"
            return
        assert engine.storage(name) == storage, f"{shape}/{kind}: storage replaced"
        if kind == "stop":
            assert loads == [], f"{shape}: stopped, yet {loads}"
            continue
        (load,) = loads
        assert load.running and engine.read_file(load.name, KEEP[0]) == KEEP[1]
        if kind == "update":
            env = engine.client.containers.get(load.name).attrs["Config"]["Env"]
            assert "ROUND=update" in env


def run_shapes(svc: Service, engine: DockerView, state, shapes: tuple[str, ...]) -> None:
    with ThreadPoolExecutor(len(shapes)) as pool:
        for future in [pool.submit(lifecycle_through_torn_state, svc, engine, state, s)
                       for s in shapes]:
            future.result()


@pytest.fixture(scope="module")
def docker_view(docker_client) -> DockerView:
    return DockerView(docker_client)


def test_file_backend_torn_state_never_sticks(tmp_path: Path, docker_host, docker_view,
                                              pulumi_settings, docker_provider,
                                              new_database: Callable[[str], str]):
    (tmp_path / "state").mkdir()
    settings = dataclasses.replace(pulumi_settings,
                                   backend_url=f"file://{tmp_path / 'state'}")
    with custom_service(tmp_path / "svc", docker_host, settings) as svc:
        run_shapes(svc, docker_view, FileState(settings.backend_url),
                   ("sidecar", "cut", "gone", "lost"))


def test_postgres_backend_torn_state_never_sticks(tmp_path: Path, docker_host, docker_view,
                                                  pulumi_settings, docker_provider,
                                                  new_database: Callable[[str], str]):
    database = new_database("torn_state")
    settings = dataclasses.replace(pulumi_settings, backend_url=pulumi_backend(database))
    with custom_service(tmp_path / "svc", docker_host, settings,
                        database_url=new_database("torn_store")) as svc:
        run_shapes(svc, docker_view, PostgresState(database), ("cut", "gone", "lost"))
