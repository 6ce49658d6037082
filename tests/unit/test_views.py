"""Rendered rows (service.views): a page and one workspace rendered from the
stored rows say exactly what ws_view says of the parsed workspace and its
newest operation, on both stores, and a changed row is never served stale."""

from __future__ import annotations

import json

from components.runtime import parse_runtime, runtime_dict
from components.spec import WorkspaceSpec
from service.storage_usage import StorageUsage
from service.store import Store
from service.views import ONE_COLUMNS, PAGE_COLUMNS, Rendered, ws_view

RUNTIME = runtime_dict(parse_runtime({"name": "local", "type": "docker",
                                      "host": "unix:///nonexistent.sock"}))


def create(store: Store, owner: str, name: str) -> None:
    spec = WorkspaceSpec.parse({"name": name, "env": {"A": "1"}, "secret_env": {"T": "s3cret"},
                                "files": [{"path": "k", "content": "key", "secret": True}]})
    store.create_workspace(owner, name, f"{owner}-{name}", RUNTIME, spec.public_dict(),
                           spec.secret_values(), quota=10)


def expected(store: Store, owner: str, name: str) -> dict:
    return ws_view(store.workspace(owner, name), store.last_operation(owner, name))


def test_rendered_rows_match_the_view_and_follow_every_change(store_target, tmp_path):
    store = Store(store_target, key_file=tmp_path / "store.key")
    try:
        for owner, name in [("bob", "b1"), ("alice", "a2"), ("alice", "a1")]:
            create(store, owner, name)
        # A workspace with no operation at all (its history pruned).
        create(store, "carol", "c1")
        with store.tx() as db:
            db.execute("DELETE FROM operations WHERE owner='carol'")
        rendered = Rendered()

        def page(owner=None, after=None, limit=10):
            return json.loads(rendered.page(store.page_rows(PAGE_COLUMNS, owner, after, limit),
                                            "next-cursor"))

        body = page()
        assert [(i["owner"], i["name"]) for i in body["items"]] == [
            ("alice", "a1"), ("alice", "a2"), ("bob", "b1"), ("carol", "c1")]
        assert body["items"] == [expected(store, i["owner"], i["name"]) for i in body["items"]]
        assert body["next"] == "next-cursor"
        assert body["items"][3]["last_operation"] is None
        assert "s3cret" not in json.dumps(body) and '"key"' not in json.dumps(body)
        # Keyset pages: after a key, of one owner.
        assert [i["name"] for i in page(after=("alice", "a1"), limit=2)["items"]] == ["a2", "b1"]
        assert [i["name"] for i in page(owner="alice")["items"]] == ["a1", "a2"]

        # Every change the view shows is seen at once (a state, a new operation).
        store.update_workspace("alice", "a1", state="running", outputs={"container": "c"})
        store.request_operation("alice", "a1", "stop", queue=True)
        first = page()["items"][0]
        assert first == expected(store, "alice", "a1")
        assert (first["state"], first["last_operation"]["kind"]) == ("running", "stop")

        # One workspace: its view and its storage, following a changed request.
        storage = StorageUsage([parse_runtime(RUNTIME)], max_age=3600)

        def one(name):
            rows = store.page_rows(ONE_COLUMNS, "alice", None, 1, name=name)
            return json.loads(rendered.one(rows[0], storage))

        def requested(size):
            return {"requested_bytes": size, "used_bytes": None, "over": False,
                    "measured_at": None, "enforced": False}

        assert one("a2") == {**expected(store, "alice", "a2"), "storage": requested(2**30)}
        spec = store.workspace("alice", "a2")["spec"]
        store.update_workspace("alice", "a2", spec={**spec, "resources": {
            **spec["resources"], "storage": "2Gi"}})
        assert one("a2") == {**expected(store, "alice", "a2"), "storage": requested(2 * 2**30)}
        assert store.page_rows(ONE_COLUMNS, "bob", None, 1, name="a2") == []
    finally:
        store.close()
