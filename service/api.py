"""The HTTP API (SPEC §4) as a Flask app. Long work answers 202 with the
operation; the operation runner does the Pulumi work in worker processes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from functools import partial, wraps
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from components.runtime import runtime_dict
from components.spec import SpecError, WorkspaceSpec
from service import files_api, fleet_api, idempotency, lifecycle, openapi, pagination, token_api
from service.config import ServiceConfig
from service.http_server import MAX_BODY_BYTES
from service.metrics import metrics_for
from service.notify import feed_for
from service.problems import Problem
from service.replays import Replays
from service.runner import OperationRunner
from service.storage_usage import StorageUsage
from service.store import Conflict, QuotaExceeded, Store
from service.streams import StreamGate, follow, open_stream
from service.streams import event as sse_event
from service.terminals import Terminals
from service.views import ONE_COLUMNS, PAGE_COLUMNS, Rendered, op_view
from stacks.naming import stack_name

log = logging.getLogger("stackspace.api")
PREFIX = "/api/v1"


def create_app(cfg: ServiceConfig, store: Store, runner: OperationRunner,
               terminals: Terminals | None = None, streams: StreamGate | None = None) -> Flask:
    app = Flask("stackspace")
    streams = streams or StreamGate()
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # Refused with 413 before it is read whole (the activity endpoint, unauthenticated
    # until its signature is checked, included).
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    metrics = metrics_for(store)
    storage = StorageUsage(cfg.runtimes, cfg.storage_scan_seconds)
    metrics.report_storage(storage)
    rendered = Rendered()  # listed rows' JSON, rendered once per version

    @app.before_request
    def _clock() -> None:
        g.started = time.perf_counter()

    @app.errorhandler(Problem)
    def _problem(p: Problem) -> Response:
        return p.response()

    @app.errorhandler(idempotency.KeyReused)
    def _key_reused(e: idempotency.KeyReused) -> Response:
        return Problem("validation", str(e), {"Idempotency-Key": "already used with another "
                                              "request body"}).response()

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException) -> Response:
        kind = {404: "not-found", 405: "method-not-allowed", 413: "too-large",
                415: "unsupported-media-type"}.get(e.code or 400, "bad-request")
        # Keep the protocol headers werkzeug computed (Allow on 405).
        headers = {k: v for k, v in e.get_headers() if k.lower() == "allow"}
        return Problem(kind, e.description or kind, headers=headers).response()

    @app.errorhandler(ConnectionError)
    def _gone(e: ConnectionError) -> Response:
        # The server cut off a client that stalled (service.http_server): no bug.
        log.info("client stalled or went away", extra={"path": request.path})
        return Problem("bad-request", "the request body did not arrive in time").response()

    @app.errorhandler(Exception)
    def _internal(e: Exception) -> Response:
        log.exception("unhandled error", extra={"path": request.path})
        return Problem("internal", "unexpected error; see the service log").response()

    @app.before_request
    def _check_query() -> None:
        # `queue` is for requests that enqueue an operation: no GET does (a
        # method a path does not take still gets its 405).
        get = request.method in ("GET", "HEAD") and request.routing_exception is None
        unknown = set(request.args) - ({"owner", "format", "limit", "cursor"} if get
                                      else {"queue", "owner", "format"})
        if unknown:
            names = ", ".join(sorted(unknown))
            raise Problem("bad-request", f"unknown query parameter(s): {names}")
        if request.args.get("queue", "false") not in ("true", "false"):
            raise Problem("bad-request", "queue must be 'true' or 'false'")
        if len(request.headers.get("Idempotency-Key", "")) > 200:
            raise Problem("bad-request", "Idempotency-Key is longer than 200 characters")

    @app.after_request
    def _count(resp: Response) -> Response:
        # The route pattern, not the path: one series per endpoint, not per name.
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.observe_request(request.method, route, resp.status_code,
                                time.perf_counter() - g.get("started", time.perf_counter()))
        return resp

    def authed(fn: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            user = store.user_for_token(token.strip()) if scheme.lower() == "bearer" else None
            if user is None:
                raise Problem("unauthorized", "send Authorization: Bearer <token>",
                              headers={"WWW-Authenticate": "Bearer"})
            g.user = user
            return fn(*args, **kwargs)
        return wrapper

    def body() -> Any:
        if not request.is_json:
            raise Problem("unsupported-media-type", "send a JSON body (application/json)")
        data = request.get_json(silent=True)
        if data is None:
            raise Problem("bad-request", "the body is not valid JSON")
        return data

    def owner_scope() -> str:
        """Whose workspace a path names: the caller's, or ?owner= for admins."""
        owner = request.args.get("owner")
        if owner and owner != g.user.name:
            if not g.user.admin:
                raise Problem("not-found", "no such workspace")
            return owner
        return g.user.name

    def find_workspace(name: str) -> dict[str, Any]:
        ws = store.workspace(owner_scope(), name)
        if ws is None:  # another user's workspace looks exactly like a missing one
            raise Problem("not-found", f"no workspace named {name!r}")
        return ws

    def accepted(op: dict[str, Any]) -> Response:
        resp = app.response_class(json.dumps(op_view(op)), status=202,
                                  mimetype="application/json")
        resp.headers["Location"] = f"{PREFIX}/operations/{op['id']}"
        return resp

    def enqueue(ws: dict[str, Any], kind: str, spec: WorkspaceSpec | None = None,
                patch: dict[str, Any] | None = None) -> dict[str, Any]:
        """Persist the operation and the desired state it asks for (one transaction)."""
        queue = request.args.get("queue", "false") == "true"
        try:
            op, created = store.request_operation(
                ws["owner"], ws["name"], kind, queue=queue, idempotency_key=idempotency_key(),
                spec=spec.public_dict() if spec else None,
                secrets=spec.secret_values() if spec else None, patch=patch,
                request_digest=request_digest())
        except Conflict as e:
            raise Problem("conflict", f"{e}; retry later or add ?queue=true") from e
        except lifecycle.Refused as e:
            raise Problem("conflict", str(e)) from e
        except KeyError as e:
            raise Problem("not-found", f"no workspace named {ws['name']!r}") from e
        if created:
            runner.submit(op)
        return op

    def idempotency_key() -> str | None:
        """The client's Idempotency-Key, scoped to this method and path, so one
        key reused on another endpoint never replays a different operation."""
        key = request.headers.get("Idempotency-Key")
        return f"{request.method} {request.path} {key}" if key else None

    def request_digest() -> str | None:
        """The request body's digest, kept with an Idempotency-Key."""
        if not request.headers.get("Idempotency-Key"):
            return None
        return store.request_digest(request.get_json(silent=True) if request.is_json else None)

    def replay(owner: str) -> dict[str, Any] | None:
        """The operation an earlier request with this Idempotency-Key created
        (422 if that request's body was another)."""
        key = idempotency_key()
        op = store.operation_by_key(owner, key) if key else None
        if op is not None:
            idempotency.check(op.get("request_digest"), request_digest())
        return op

    # --- workspaces -----------------------------------------------------------
    @app.post(f"{PREFIX}/workspaces")
    @authed
    def create_workspace() -> Response:
        data = body()
        if (op := replay(g.user.name)) is not None:
            return accepted(op)
        try:
            spec = WorkspaceSpec.parse(data)
        except SpecError as e:
            raise Problem("validation", "the workspace spec is not valid", e.errors) from e
        runtime = cfg.runtime(spec.runtime)
        if runtime is None:
            raise Problem("validation", "unknown runtime",
                          {"runtime": f"no runtime named {spec.runtime!r}"})
        try:
            op, created = store.create_workspace(
                g.user.name, spec.name, stack_name(g.user.name, spec.name),
                runtime_dict(runtime), spec.public_dict(), spec.secret_values(),
                quota=cfg.quota, idempotency_key=idempotency_key(),
                request_digest=request_digest())
        except QuotaExceeded as e:
            raise Problem("quota-exceeded", str(e)) from e
        except Conflict as e:
            raise Problem("conflict", str(e)) from e
        if created:
            runner.submit(op)
        return accepted(op)

    @app.get(f"{PREFIX}/workspaces")
    @authed
    def list_workspaces() -> Response:
        owner = request.args.get("owner")
        if not g.user.admin:
            owner = g.user.name
        try:
            limit = pagination.parse_limit(request.args.get("limit"))
            after = pagination.decode_cursor(request.args.get("cursor"))
        except pagination.PageError as e:
            raise Problem("bad-request", f"bad {e.field}", {e.field: str(e)}) from e

        def read_page() -> tuple[str, str | None]:
            rows = store.page_rows(PAGE_COLUMNS, owner or None, after, limit)
            cursor = pagination.encode_cursor((rows[-1]["owner"], rows[-1]["name"])) \
                if len(rows) == limit else None
            return rendered.page(rows, cursor), cursor

        body, cursor = rendered.at_version(("page", owner or None, after, limit),
                                           store.listing_version(), read_page)
        resp = app.response_class(body, mimetype="application/json")
        if cursor:
            query = {k: v for k, v in request.args.items() if k != "cursor"}
            resp.headers["Link"] = f'<{request.path}?{urlencode({**query, "cursor": cursor})}>' \
                '; rel="next"'
        return resp

    @app.get(f"{PREFIX}/workspaces/<name>")
    @authed
    def get_workspace(name: str) -> Response:
        owner = owner_scope()

        def read_one() -> Any:
            rows = store.page_rows(ONE_COLUMNS, owner, None, 1, name=name)
            return rendered.one(rows[0], storage) if rows else None

        one = rendered.at_version(("one", owner, name), store.listing_version(), read_one)
        if one is None:  # another user's workspace looks exactly like a missing one
            raise Problem("not-found", f"no workspace named {name!r}")
        return app.response_class(rendered.with_storage(one, storage),
                                  mimetype="application/json")

    @app.patch(f"{PREFIX}/workspaces/<name>")
    @authed
    def update_workspace(name: str) -> Response:
        data = body()
        ws = find_workspace(name)
        if (op := replay(ws["owner"])) is not None:
            return accepted(op)
        # Validated against the spec the queued updates will have produced; the
        # run applies the PATCH itself to the spec it finds (PATCHes compose).
        current = WorkspaceSpec.from_public(*store.projected_spec(ws["owner"], name))
        try:
            # Until init has cloned once, a wrong URL or credential can be fixed.
            new = current.merged(data, repository_editable=not ws["outputs"].get("initialized"))
        except SpecError as e:
            raise Problem("validation", "the update is not valid", e.errors) from e
        return accepted(enqueue(ws, "update", new, patch=data))

    def lifecycle_route(name: str, kind: str) -> Response:
        ws = find_workspace(name)
        if (op := replay(ws["owner"])) is not None:
            return accepted(op)
        return accepted(enqueue(ws, kind))

    for kind, method, suffix in (("start", "POST", "/start"), ("stop", "POST", "/stop"),
                                 ("delete", "DELETE", "")):
        app.add_url_rule(f"{PREFIX}/workspaces/<name>{suffix}", f"{kind}_workspace",
                         authed(partial(lifecycle_route, kind=kind)), methods=[method])

    @app.post(f"{PREFIX}/workspaces/<name>/terminals")
    @authed
    def open_terminal(name: str) -> Response:
        ws = find_workspace(name)
        if terminals is None:
            raise Problem("conflict", "the exec proxy is not configured")
        if ws["state"] != "running" or not ws["outputs"]:
            raise Problem("conflict", f"workspace is {ws['state']}, not running")
        data = request.get_json(silent=True) or {}
        if not isinstance(data, dict):
            raise Problem("validation", "body must be an object")
        return app.response_class(json.dumps(terminals.mint(g.user, ws, data)), status=201,
                                  mimetype="application/json")

    files_api.register(app, PREFIX, authed, find_workspace, terminals)

    @app.post("/internal/activity")
    def terminal_activity() -> Response:
        """Signed reports from the exec proxy (terminal activity, for idle auto-stop)."""
        if terminals is None:
            raise Problem("not-found", "the exec proxy is not configured")
        # Authenticated from its headers before a byte of the body is read.
        owner, name, at = terminals.verify_activity(
            request.headers, request.content_length, request.get_data)
        store.touch_workspace(owner, name, at)
        return Response(status=204)

    # --- operations -----------------------------------------------------------
    def find_operation(op_id: str) -> dict[str, Any]:
        op = store.operation(op_id)
        if op is None or (op["owner"] != g.user.name and not g.user.admin):
            raise Problem("not-found", "no such operation")
        return op

    @app.get(f"{PREFIX}/operations/<op_id>")
    @authed
    def get_operation(op_id: str) -> Response:
        return app.response_class(json.dumps(op_view(find_operation(op_id))),
                                  mimetype="application/json")

    @app.post(f"{PREFIX}/operations/<op_id>/cancel")
    @authed
    def cancel_operation(op_id: str) -> Response:
        op = find_operation(op_id)
        if not runner.cancel(op_id):
            raise Problem("conflict", f"operation is already {op['status']}")
        return accepted(store.operation(op_id) or op)

    @app.get(f"{PREFIX}/operations/<op_id>/events")
    @authed
    def operation_events(op_id: str) -> Response:
        find_operation(op_id)
        try:
            last = int(request.headers.get("Last-Event-ID", "0") or 0)
        except ValueError as e:
            raise Problem("bad-request", "Last-Event-ID must be an event id (an integer)") from e

        # Streams have threads of their own, so many: beyond them, a retry later.
        return open_stream(streams, lambda gone: follow(
            feed_for(store), op_id, streams.stopping, partial(op_events, op_id, [last]),
            gone=gone))

    def op_events(op_id: str, after: list[int]) -> tuple[list[str], bool]:
        """The operation's events after `after[0]` (moved on), and whether it is over."""
        # Status first: every event written before it ended is then read below.
        op, out = store.operation(op_id), []
        for seq, event in store.events(op_id, after[0]):
            after[0] = seq
            out.append(sse_event(event["type"], json.dumps(event), seq))
            if event["type"] == "end":
                return out, True
        if op and op["status"] in ("succeeded", "failed", "cancelled"):
            # Its end event is gone (pruned, or never written): one made from the row.
            end = {"type": "end", "status": op["status"], "at": op["ended"] or time.time(),
                   **({"error": op["error"]} if op.get("error") else {})}
            out.append(sse_event("end", json.dumps(end), after[0]))
            return out, True
        return out, False

    # Idempotency-Key for the POSTs that make no operation (tokens, rollouts).
    replays = Replays(store)
    token_api.register(app, store, authed, PREFIX, replays)  # /tokens: list, mint, revoke

    # --- service --------------------------------------------------------------
    # Each at the root (probes, scrapers) and under the API's prefix (SPEC §4).
    @app.get("/healthz")
    @app.get(f"{PREFIX}/healthz")
    def healthz() -> Response:
        store.db.execute("SELECT 1")
        return app.response_class(json.dumps({"status": "ok"}), mimetype="application/json")

    @app.get("/metrics")
    @app.get(f"{PREFIX}/metrics")
    def metrics_endpoint() -> Response:
        data, content_type = metrics.exposition(request.headers.get("Accept"))
        return Response(data, content_type=content_type)

    fleet_api.register_fleet(app, store, runner, authed, streams, replays)

    @app.get("/openapi.json")
    @app.get(f"{PREFIX}/openapi.json")
    def openapi_json() -> Response:
        return app.response_class(json.dumps(openapi.document()), mimetype="application/json")

    return app
