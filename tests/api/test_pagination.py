"""Pagination of GET /workspaces (SPEC §4): `limit` and an opaque `cursor`,
a stable order, every row exactly once; bad values name their field; the
CLI's `list` follows the cursors."""

from __future__ import annotations

import json
import subprocess
import sys

from components.runtime import parse_runtime, runtime_dict
from components.spec import WorkspaceSpec
from stacks.naming import stack_name

RUNTIME = runtime_dict(parse_runtime({"name": "local", "type": "docker",
                                      "host": "unix:///nonexistent.sock"}))


def insert(svc, owner: str, name: str) -> None:
    """A workspace row (and its queued create) straight through the store: fast."""
    spec = WorkspaceSpec.parse({"name": name})
    svc.store.create_workspace(owner, name, stack_name(owner, name), RUNTIME,
                               spec.public_dict(), spec.secret_values(), quota=1000)


def walk(svc, token: str, limit: int, extra: str = "") -> list[list[str]]:
    pages, cursor = [], None
    while True:
        query = f"?limit={limit}{extra}" + (f"&cursor={cursor}" if cursor else "")
        r = svc.call("GET", f"/api/v1/workspaces{query}", token)
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append([f"{w['owner']}/{w['name']}" for w in body["items"]])
        cursor = body["next"]
        if cursor is None:
            assert "Link" not in r.headers
            return pages
        link = r.headers["Link"]
        assert link.endswith('; rel="next"') and f"cursor={cursor}" in link
        if len(pages) == 2 and svc.store.workspace("alice", "aaa-late") is None:
            # Rows created behind the cursor meanwhile are not seen twice, nor
            # shift the rest of the walk.
            insert(svc, "alice", "aaa-late")


def test_a_walk_sees_every_workspace_exactly_once_in_a_stable_order(idle_service):
    svc = idle_service
    for i in range(120):
        insert(svc, "alice", f"ws-{i:03d}")
    for i in range(5):
        insert(svc, "bob", f"b-{i}")

    pages = walk(svc, svc.alice, 50)
    assert [len(p) for p in pages] == [50, 50, 20]
    seen = [n for page in pages for n in page]
    assert seen == [f"alice/ws-{i:03d}" for i in range(120)]  # bob's never, each once, in order

    # An admin's walk crosses owners in (owner, name) order.
    every = [n for page in walk(svc, svc.admin, 7) for n in page]
    assert every == sorted(every) and len(every) == len(set(every)) == 126
    assert [n for page in walk(svc, svc.admin, 40, "&owner=bob") for n in page] == \
        [f"bob/b-{i}" for i in range(5)]

    # The CLI lists them all (it follows `next`: the default page is 100).
    out = subprocess.run([sys.executable, "-m", "service.cli", "list", "--json",
                          "--url", svc.url, "--token", svc.alice],
                         capture_output=True, text=True, timeout=60, check=True)
    names = [w["name"] for w in json.loads(out.stdout)["items"]]
    assert len(names) == 121 and names[0] == "aaa-late"


def test_bad_limit_or_cursor_is_a_problem_naming_the_field(idle_service):
    svc = idle_service
    for query, field in (("limit=0", "limit"), ("limit=501", "limit"), ("limit=ten", "limit"),
                         ("cursor=not-a-cursor", "cursor"), ("cursor=WzFd", "cursor")):
        r = svc.call("GET", f"/api/v1/workspaces?{query}", svc.alice)
        assert r.status_code == 400, (query, r.text)
        assert r.headers["Content-Type"] == "application/problem+json"
        assert [e["field"] for e in r.json()["errors"]] == [field], query
