"""The SDK (service/sdk.py) against a fake service on loopback: how it reads
problems, waits for operations and streams events. The real service is in
tests/api/test_sdk_e2e.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from flask import Flask, Response, request
from werkzeug.serving import make_server

from service import sdk


@pytest.fixture
def fake() -> Iterator[tuple[str, list]]:
    app, seen = Flask("fake"), []
    polls = {"n": 0}

    @app.before_request
    def record() -> None:
        seen.append((request.method, request.full_path.rstrip("?"),
                     request.headers.get("Authorization")))

    @app.post("/api/v1/workspaces")
    def create() -> Response:
        if request.get_json()["name"] == "bad name":
            return Response(json.dumps({"type": "https://stackspace.dev/problems/validation",
                                        "detail": "the workspace spec is not valid",
                                        "errors": [{"field": "name",
                                                    "message": "must be a DNS label"}]}),
                            422, mimetype="application/problem+json")
        return Response(json.dumps({"id": "op1", "kind": "create", "workspace": "dev",
                                    "status": "queued"}), 202, mimetype="application/json")

    @app.get("/api/v1/operations/<op_id>")
    def operation(op_id: str) -> Response:
        polls["n"] += 1
        status = "running" if polls["n"] < 3 else ("failed" if op_id == "op2" else
                                                   "succeeded")
        return Response(json.dumps({"id": op_id, "kind": "create", "workspace": "dev",
                                    "status": status, "error": "boom" if op_id == "op2"
                                    else None}), mimetype="application/json")

    @app.get("/api/v1/workspaces/dev")
    def show() -> Response:
        return Response(json.dumps({"name": "dev", "owner": "alice", "state": "running"}),
                        mimetype="application/json")

    @app.get("/api/v1/operations/<op_id>/events")
    def events(op_id: str) -> Response:
        body = ('event: resource\ndata: {"urn": "u1"}\n\n'
                ': keep-alive\n\n'
                'event: end\ndata: {"status": "succeeded"}\n\n')
        return Response(body, mimetype="text/event-stream")

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()


def test_create_waits_for_the_operation_and_returns_the_workspace(fake):
    url, seen = fake
    ws = sdk.Client(url, "t0k").create({"name": "dev"})
    assert (ws.name, ws.owner, ws.state) == ("dev", "alice", "running")
    assert [p for _, p, _ in seen].count("/api/v1/operations/op1") == 3
    assert {auth for _, _, auth in seen} == {"Bearer t0k"}


def test_problems_become_api_errors_naming_the_field(fake):
    url, _ = fake
    with pytest.raises(sdk.ApiError) as e:
        sdk.Client(url, "t").create({"name": "bad name"})
    assert (e.value.status, e.value.type, e.value.errors) == (422, "validation",
                                                              {"name": "must be a DNS label"})
    assert "name: must be a DNS label" in str(e.value)


def test_a_failed_operation_raises_unless_unchecked(fake):
    url, _ = fake
    client = sdk.Client(url, "t")
    op = {"id": "op2", "kind": "create", "workspace": "dev", "status": "queued"}
    with pytest.raises(sdk.OperationFailed, match="failed \\(boom\\)"):
        client.wait(op, poll=0.01)
    assert client.wait(op, poll=0.01, check=False)["status"] == "failed"


def test_events_stream_in_order_and_skip_comments(fake):
    url, _ = fake
    events = list(sdk.Client(url, "t").events("op1"))
    assert events == [{"event": "resource", "urn": "u1"}, {"event": "end",
                                                           "status": "succeeded"}]


def test_a_token_is_required(monkeypatch):
    monkeypatch.delenv("STACKSPACE_TOKEN", raising=False)
    with pytest.raises(ValueError, match="STACKSPACE_TOKEN"):
        sdk.Client("http://127.0.0.1:1")
