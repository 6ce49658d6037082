"""How the API shows workspaces and operations (SPEC §4), and a listing's
rows rendered once per version.

A page of `GET /workspaces` costs about a millisecond a row when each row is
parsed, its spec rebuilt and redacted, and the whole encoded again. `Rendered`
keeps each row's JSON keyed by exactly the columns its view reads (the
workspace's and its newest operation's), so an unchanged row costs one
dictionary look-up; a changed row has a new key and is rendered afresh.
On SQLite it also keeps whole pages and single views with the listing
version they were read at (service.listing_version): while that number
stands, they are served without reading a row.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Hashable
from typing import Any

from components.spec import WorkspaceSpec
from service import fleet_api
from service.storage_usage import StorageRequest, StorageUsage

# The columns ws_view and op_view read (the operation's as op_<name>): a
# rendered row is keyed by exactly these.
WS_COLUMNS = ("name", "owner", "runtime", "stack", "desired", "state", "last_error", "spec",
              "outputs")
OP_COLUMNS = ("id", "workspace", "owner", "kind", "status", "created", "started", "ended",
              "timings", "error", "error_type")
PAGE_COLUMNS = ", ".join([f"w.{c}" for c in WS_COLUMNS] + [f"o.{c} AS op_{c}" for c in OP_COLUMNS])
# One workspace's view also shows its storage use (service.storage_usage).
ONE_COLUMNS = PAGE_COLUMNS + ", w.runtime_config, w.installation"


def ws_view(ws: dict[str, Any], last: dict[str, Any] | None) -> dict[str, Any]:
    spec = WorkspaceSpec.stored(ws["spec"])
    return {
        "name": ws["name"],
        "owner": ws["owner"],
        "runtime": ws["runtime"],
        "stack": ws["stack"],
        "desired": ws["desired"],
        "state": ws["state"],
        "last_error": ws["last_error"],
        "spec": spec.to_dict(redact=True),
        "outputs": ws["outputs"],
        **fleet_api.code_state(ws["outputs"]),
        "last_operation": op_view(last) if last else None,
    }


def op_view(op: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": op["id"],
        "workspace": op["workspace"],
        "owner": op["owner"],
        "kind": op["kind"],
        "status": op["status"],
        "created": op["created"],
        "started": op["started"],
        "ended": op["ended"],
        "timings": op["timings"],
        "error": op["error"],
        # e.g. "storage-at-risk" (the durability guard refused the plan), "interrupted"
        "error_type": op.get("error_type"),
    }


class Rendered:
    """Rows' JSON by their content (bounded: emptied when full)."""

    LIMIT = 4096

    def __init__(self) -> None:
        self._json: dict[tuple[Any, ...], str] = {}
        # One workspace's rows (ONE_COLUMNS): its JSON without the closing
        # brace, and the facts its storage use is looked up by.
        self._one: dict[tuple[Any, ...], tuple[str, StorageRequest]] = {}
        # By request, with the listing version they were read at: pages
        # (body, next cursor) and single views (as in _one).
        self._at: dict[Hashable, tuple[int, Any]] = {}
        self._lock = threading.Lock()

    def item(self, row: Any) -> str:
        """ws_view of a row of PAGE_COLUMNS, as JSON."""
        key = tuple(row)
        found = self._json.get(key)
        if found is None:
            ws = {c: row[c] for c in WS_COLUMNS}
            ws["spec"], ws["outputs"] = json.loads(ws["spec"]), json.loads(ws["outputs"])
            last = None
            if row["op_id"] is not None:
                last = {c: row[f"op_{c}"] for c in OP_COLUMNS}
                last["timings"] = json.loads(last["timings"])
            found = json.dumps(ws_view(ws, last))
            self._keep(self._json, key, found)
        return found

    def _keep(self, cache: dict[tuple[Any, ...], Any], key: tuple[Any, ...],
              value: Any) -> None:
        with self._lock:
            if len(cache) >= self.LIMIT:  # bounded: emptied when full
                cache.clear()
            cache[key] = value

    def at_version(self, key: Hashable, version: int | None, read: Callable[[], Any]) -> Any:
        """What `read()` returns, kept for `key` while the listing version is
        `version` (read before `read()` runs: a change in between makes the
        next request read again). None as `version` (PostgreSQL): always read.
        A None from `read()` (nothing found) is not kept."""
        if version is not None:
            hit = self._at.get(key)
            if hit is not None and hit[0] == version:
                return hit[1]
        value = read()
        if version is not None and value is not None:
            self._keep(self._at, key, (version, value))
        return value

    def one(self, row: Any, storage: StorageUsage) -> tuple[str, StorageRequest]:
        """ws_view of a row of ONE_COLUMNS, as JSON without its closing brace,
        and what its storage use is looked up by (`with_storage`)."""
        key = tuple(row)
        found = self._one.get(key)
        if found is None:
            ws = {"owner": row["owner"], "name": row["name"], "runtime": row["runtime"],
                  "installation": row["installation"], "spec": json.loads(row["spec"]),
                  "runtime_config": json.loads(row["runtime_config"] or "null")}
            found = self.item(row)[:-1], storage.request_of(ws)
            self._keep(self._one, key, found)
        return found

    @staticmethod
    def with_storage(one: tuple[str, StorageRequest], storage: StorageUsage) -> str:
        """A view from `one` with the storage use as last measured, as JSON."""
        head, request = one
        return f'{head}, "storage": {json.dumps(storage.usage(request).to_dict())}}}'

    def page(self, rows: list[Any], cursor: str | None) -> str:
        """The body of a page of GET /workspaces: {"items": [...], "next": cursor}."""
        items = ",".join([self.item(r) for r in rows])
        return f'{{"items": [{items}], "next": {json.dumps(cursor)}}}'
