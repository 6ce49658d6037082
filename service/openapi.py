"""The OpenAPI 3.1 document of the HTTP API (tests check it against the routes)."""

from __future__ import annotations

from typing import Any

from components.spec import spec_schemas
from service import token_api
from service.pagination import DEFAULT_LIMIT, MAX_LIMIT

PROBLEM = {"$ref": "#/components/responses/Problem"}


IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "schema": {"type": "string", "maxLength": 200}}


def _op(summary: str, ok: str, schema: str | None = None, body: str | None = None,
        params: list[str] | None = None, auth: bool = True,
        idempotent: bool = False) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}} \
        if schema else None
    op: dict[str, Any] = {"summary": summary,
                          "responses": {ok: {"description": summary,
                                             **({"content": content} if content else {})}}}
    if auth:
        op["responses"].update({"400": PROBLEM, "401": PROBLEM, "404": PROBLEM})
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{body}"}}}}
        # 413: over the 1 MiB limit (service.http_server), refused unread
        op["responses"].update({"400": PROBLEM, "413": PROBLEM, "415": PROBLEM,
                                "422": PROBLEM})
    if ok == "202":
        op["responses"].update({"400": PROBLEM, "409": PROBLEM})
        op["parameters"] = [IDEMPOTENCY_KEY,
                            {"name": "queue", "in": "query", "required": False,
                             "schema": {"type": "string", "enum": ["true", "false"]}}]
    if ok == "201":
        op["responses"]["409"] = PROBLEM
    if idempotent:  # answered at once; a retry with the key gets the first answer
        op["parameters"] = [IDEMPOTENCY_KEY]
    for p in params or []:
        op.setdefault("parameters", []).append(
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}})
    if auth:
        op.setdefault("parameters", []).append(
            {"name": "owner", "in": "query", "required": False, "description":
             "admins: act on this user's workspaces", "schema": {"type": "string"}})
    else:
        op["security"] = []
    return op


# Pagination of lists (service.pagination); the next page is also in a Link header.
_PAGE = [{"name": "limit", "in": "query", "required": False,
          "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                     "default": DEFAULT_LIMIT}},
         {"name": "cursor", "in": "query", "required": False,
          "description": "`next` of the previous page, as given", "schema": {"type": "string"}}]


def document() -> dict[str, Any]:
    ws = ["name"]
    op = ["op_id"]
    return {
        "openapi": "3.1.0",
        "info": {"title": "stackspace", "version": "1"},
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/workspaces": {
                "post": {**(create := _op("Create a workspace", "202", "Operation",
                                          "WorkspaceSpec")),
                         "responses": {**create["responses"], "403": PROBLEM}},
                "get": {**(listing := _op("List workspaces, a page at a time (follow `next`)",
                                          "200", "WorkspaceList")),
                        "parameters": [*listing["parameters"], *_PAGE]},
            },
            "/api/v1/workspaces/{name}": {
                "get": _op("Show a workspace", "200", "Workspace", params=ws),
                "patch": _op("Update a workspace", "202", "Operation", "WorkspacePatch", ws),
                "delete": _op("Delete a workspace and its storage", "202", "Operation",
                              params=ws),
            },
            "/api/v1/workspaces/{name}/start": {
                "post": _op("Start a workspace", "202", "Operation", params=ws)},
            "/api/v1/workspaces/{name}/stop": {
                "post": _op("Stop a workspace (storage kept)", "202", "Operation", params=ws)},
            "/api/v1/workspaces/{name}/terminals": {
                "post": _op("Mint an exec-proxy ticket: a terminal ({command, tty}) or one "
                            "port-forward connection ({port})", "201", "Ticket",
                            params=ws)},
            **_files_paths(ws),
            "/api/v1/operations/{op_id}": {
                "get": _op("Show an operation", "200", "Operation", params=op)},
            "/api/v1/operations/{op_id}/cancel": {
                "post": _op("Cancel an operation", "202", "Operation", params=op)},
            "/api/v1/operations/{op_id}/events": {
                "get": {**_op("Engine events as Server-Sent Events", "200", params=op),
                        "responses": {"200": {"description": "event stream", "content": {
                            "text/event-stream": {"schema": {"type": "string"}}}},
                            "400": PROBLEM, "401": PROBLEM, "404": PROBLEM,
                            "503": PROBLEM}}},
            "/api/v1/rollouts": {"post": _op("Roll the service's code out to outdated "
                                             "workspaces (admin)", "201", "Rollout",
                                             "RolloutOptions", idempotent=True)},
            "/api/v1/rollouts/{rid}": {"get": _op("Show a rollout (admin)", "200", "Rollout",
                                                  params=["rid"])},
            "/api/v1/rollouts/{rid}/cancel": {"post": _op("Cancel a rollout (admin)", "200",
                                                          "Rollout", params=["rid"])},
            "/api/v1/rollouts/{rid}/events": {
                "get": {**_op("A rollout's progress as Server-Sent Events (admin)", "200",
                              params=["rid"]),
                        "responses": {"200": {"description": "event stream", "content": {
                            "text/event-stream": {"schema": {"type": "string"}}}},
                            "400": PROBLEM, "401": PROBLEM, "404": PROBLEM}}},
            "/internal/activity": {"post": {
                **_op("Terminal activity from the exec proxy (signed in its headers)", "204",
                      auth=False),
                "responses": {"204": {"description": "recorded"}, "400": PROBLEM,
                              "401": PROBLEM, "404": PROBLEM, "413": PROBLEM}}},
            # At the root (probes, scrapers) and under /api/v1 (SPEC §4 lists them there).
            **{f"{root}{path}": op for root in ("", "/api/v1") for path, op in {
                "/healthz": {"get": _op("Health", "200", auth=False)},
                "/metrics": {"get": {**_op("Prometheus metrics", "200", auth=False),
                                     "responses": {"200": {"description": "metrics", "content": {
                                         "text/plain": {"schema": {"type": "string"}}}}}}},
                "/openapi.json": {"get": _op("This document", "200", auth=False)},
            }.items()},
            **token_api.paths(_op, PROBLEM),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Problem": {"description": "RFC 9457 problem", "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            }}},
            "schemas": SCHEMAS,
        },
    }


def _files_paths(ws: list[str]) -> dict[str, Any]:
    """GET/PUT .../files/{path} (service.files_api): raw bytes, a listing or tar."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    meta = {h: {"schema": {"type": "string"}} for h in (
        "X-Stackspace-Type", "X-Stackspace-Mode", "X-Stackspace-Mtime", "Last-Modified")}
    extra = {c: PROBLEM for c in ("403", "409", "503")}

    def read(path_params: list[str]) -> dict[str, Any]:
        op = _op("Read a file (raw bytes), list a directory (JSON) or stream it as tar "
                 "(format=tar or Accept: application/x-tar); format=stat: metadata only",
                 "200", params=path_params)
        op["parameters"].append({"name": "format", "in": "query", "required": False,
                                 "schema": {"enum": ["list", "tar", "stat"]}})
        op["responses"].update(extra)
        op["responses"]["200"] = {"description": "the file, listing or tar stream",
                                  "headers": meta, "content": {
                                      "application/octet-stream": binary,
                                      "application/x-tar": binary,
                                      "application/json": {"schema": {
                                          "$ref": "#/components/schemas/FileInfo"}}}}
        return op

    def write(path_params: list[str]) -> dict[str, Any]:
        op = _op("Write a file (streamed body; X-Stackspace-Mode, X-Stackspace-Mtime) or "
                 "unpack a tar body (Content-Type: application/x-tar) into a directory",
                 "201", params=path_params)
        op["requestBody"] = {"required": True, "content": {
            "application/octet-stream": binary, "application/x-tar": binary}}
        op["parameters"] += [{"name": h, "in": "header", "required": False,
                              "schema": {"type": "string"}}
                             for h in ("X-Stackspace-Mode", "X-Stackspace-Mtime")]
        op["responses"].update(extra)
        op["responses"]["201"] = {"description": "written", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/FileInfo"}}}}
        return op

    base = "/api/v1/workspaces/{name}/files/"
    return {base: {"get": read(ws), "put": write(ws)},
            base + "{path}": {"get": read([*ws, "path"]), "put": write([*ws, "path"])}}


_FILE_INFO = {"type": "object", "required": ["path"], "properties": {
    "path": {"type": "string"}, "type": {"enum": ["file", "dir", "symlink", "other"]},
    "size": {"type": "integer"}, "mode": {"type": "string"}, "mtime": {"type": "integer"},
    "unpacked": {"type": "boolean"},
    "entries": {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "type": {"enum": ["file", "dir", "symlink", "other"]},
        "size": {"type": "integer"}, "mode": {"type": "string"},
        "mtime": {"type": "integer"}}}}}}
_OPERATION = {"type": "object", "required": ["id", "kind", "status"], "properties": {
    "id": {"type": "string"}, "workspace": {"type": "string"}, "owner": {"type": "string"},
    "kind": {"enum": ["create", "start", "stop", "update", "delete", "refresh"]},
    "status": {"enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
    "created": {"type": "number"}, "started": {"type": ["number", "null"]},
    "ended": {"type": ["number", "null"]}, "timings": {"type": "object"},
    "error": {"type": ["string", "null"]}, "error_type": {"type": ["string", "null"]}}}
_WORKSPACE = {"type": "object", "required": ["name", "state", "spec"], "properties": {
    "name": {"type": "string"}, "owner": {"type": "string"}, "runtime": {"type": "string"},
    "stack": {"type": "string"}, "desired": {"enum": ["running", "stopped", "deleted"]},
    "state": {"enum": ["provisioning", "running", "stopping", "stopped", "starting",
                       "deleting", "failed"]},
    "last_error": {"type": ["string", "null"]},
    "spec": {"type": "object", "description": "the WorkspaceSpec as stored (under the rules of "
             "its time), each secret value shown as \"[secret]\""},
    "outputs": {"type": "object"},
    "code_version": {"type": ["string", "null"],
                     "description": "component code the last run applied: digest[@commit]"},
    "outdated": {"type": "boolean",
                 "description": "the service's own component code differs"},
    "last_operation": {"anyOf": [{"$ref": "#/components/schemas/Operation"},
                                 {"type": "null"}]},
    # GET /workspaces/{name} only (service.storage_usage): measured on Docker.
    "storage": {"type": "object", "properties": {
        "requested_bytes": {"type": "integer"}, "used_bytes": {"type": ["integer", "null"]},
        "over": {"type": "boolean"}, "measured_at": {"type": ["number", "null"]},
        "enforced": {"type": "boolean"}}}}}
SCHEMAS: dict[str, Any] = {
    # WorkspaceSpec, WorkspacePatch and the models they nest, from components.spec.
    **spec_schemas(),
    "Operation": _OPERATION,
    "RolloutOptions": {"type": "object", "additionalProperties": False, "properties": {
        "batch": {"type": ["integer", "string"], "pattern": "^[1-9][0-9]*%?$",
                  "description": "workspaces per batch: N or P%"},
        "max_failures": {"type": "integer", "minimum": 1},
        "skip_active_minutes": {"type": "number", "minimum": 0, "maximum": 1440},
        "stopped_too": {"type": "boolean"},
        "reviews": {"type": "object", "description": "owner/name -> {code, state} from "
                    "fleet preview --save-plans: each workspace must still match its review",
                    "additionalProperties": {"type": "object", "required": ["code", "state"],
                                             "properties": {"code": {"type": "string"},
                                                            "state": {"type": "string"}}}}}},
    "Rollout": {"type": "object", "required": ["id", "status", "items"], "properties": {
        "id": {"type": "string"},
        "status": {"enum": ["running", "finished", "stopped", "cancelled"]},
        "options": {"type": "object"}, "code_version": {"type": "string"},
        "created": {"type": "number"}, "updated": {"type": "number"},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "workspace": {"type": "string"}, "status": {"type": "string"},
            "operation": {"type": ["string", "null"]},
            "detail": {"type": ["string", "null"]}}}}}},
    "Workspace": _WORKSPACE,
    "WorkspaceList": {"type": "object", "required": ["items", "next"], "properties": {
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Workspace"}},
        "next": {"type": ["string", "null"],
                 "description": "the cursor of the next page; null on the last"}}},
    "FileInfo": _FILE_INFO,
    "Ticket": {"type": "object", "required": ["url", "ticket", "expires_at"], "properties": {
        "url": {"type": "string"}, "ticket": {"type": "string"},
        "expires_at": {"type": "number"}}},
    "Problem": {"type": "object", "required": ["type", "title", "status"], "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "errors": {"type": "array", "items": {
            "type": "object", "properties": {"field": {"type": "string"},
                                             "message": {"type": "string"}}}}}},
}
