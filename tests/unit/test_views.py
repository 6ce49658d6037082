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
        # Pages are kept by version on SQLite only (service.listing_version).
        assert (store.listing_version() is None) == (store.db.dialect == "postgresql")

        def page(owner=None, after=None, limit=10):  # as the API reads one
            return json.loads(rendered.at_version(
                ("page", owner, after, limit), store.listing_version(),
                lambda: rendered.page(store.page_rows(PAGE_COLUMNS, owner, after, limit),
                                      "next-cursor")))

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

        def one(name):  # as the API reads one
            def read():
                rows = store.page_rows(ONE_COLUMNS, "alice", None, 1, name=name)
                return rendered.one(rows[0], storage) if rows else None
            found = rendered.at_version(("one", name), store.listing_version(), read)
            return found and json.loads(rendered.with_storage(found, storage))

        def requested(size):
            return {"requested_bytes": size, "used_bytes": None, "over": False,
                    "measured_at": None, "enforced": False}

        assert one("a2") == {**expected(store, "alice", "a2"), "storage": requested(2**30)}
        spec = store.workspace("alice", "a2")["spec"]
        store.update_workspace("alice", "a2", spec={**spec, "resources": {
            **spec["resources"], "storage": "2Gi"}})
        assert one("a2") == {**expected(store, "alice", "a2"), "storage": requested(2 * 2**30)}
        assert store.page_rows(ONE_COLUMNS, "bob", None, 1, name="a2") == []

        # Written by another client (another process: the runner's workers,
        # or a raw statement): seen at once too.
        other = Store(store_target, key_file=tmp_path / "store.key")
        try:
            with other.tx() as db:
                db.execute("UPDATE operations SET status='failed', error='boom' WHERE"
                           " owner='alice' AND workspace='a2'")
                db.execute("UPDATE workspaces SET last_error='boom' WHERE name='a2'")
        finally:
            other.close()
        assert one("a2")["last_error"] == "boom"
        assert one("a2")["last_operation"]["error"] == "boom"
        assert page()["items"][1] == expected(store, "alice", "a2")
        store.delete_workspace("alice", "a2")
        assert one("a2") is None
        assert [i["name"] for i in page(owner="alice")["items"]] == ["a1"]
    finally:
        store.close()


def test_the_listing_version_moves_with_every_change_a_view_shows(tmp_path):
    """SQLite's (PostgreSQL has none: its rows come in one round trip)."""
    store = Store(tmp_path / "s.db", key_file=tmp_path / "store.key")
    try:
        seen = [store.listing_version()]

        def moved() -> bool:
            seen.append(store.listing_version())
            return seen[-1] != seen[-2]

        create(store, "alice", "a1")
        assert moved()
        store.add_event(store.last_operation("alice", "a1")["id"], {"type": "x"})
        assert not moved()  # events are not in any view
        store.update_workspace("alice", "a1", state="running")
        assert moved()
        store.request_operation("alice", "a1", "stop", queue=True)
        assert moved()
        store.db.execute("DELETE FROM operations")
        assert moved()
        # Reopened (a restart, another replica): installed once, kept.
        again = Store(tmp_path / "s.db", key_file=tmp_path / "store.key")
        assert again.listing_version() == seen[-1]
        again.close()
    finally:
        store.close()
