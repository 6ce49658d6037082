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
    streamed: set[str] = set()  # an operation ends once its stream has been read

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
        status = "queued" if op_id not in streamed else ("failed" if op_id == "op2" else
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
        if op_id == "op3" and not request.headers.get("Last-Event-ID"):
            # The first stream breaks off after one event: the client resumes after it.
            return Response('id: 1\nevent: resource\ndata: {"urn": "u1"}\n\n',
                            mimetype="text/event-stream")
        streamed.add(op_id)
        body = ('id: 1\nevent: resource\ndata: {"urn": "u1"}\n\n'
                ': keep-alive\n\n'
                'id: 2\nevent: end\ndata: {"status": "succeeded"}\n\n')
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
    # The wait read the event stream, then the operation once it ended: no polling.
    paths = [p for _, p, _ in seen]
    assert paths.count("/api/v1/operations/op1/events") == 1
    assert paths.count("/api/v1/operations/op1") == 1
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
        client.wait(op)
    assert client.wait(op, check=False)["status"] == "failed"


def test_a_wait_resumes_a_broken_stream_after_the_last_event(fake):
    url, seen = fake
    client = sdk.Client(url, "t")
    statuses: list[str] = []
    op = client.wait({"id": "op3", "kind": "create", "workspace": "dev", "status": "queued"},
                     on_status=lambda o: statuses.append(o["status"]), timeout=10)
    assert op["status"] == "succeeded"
    assert statuses[-1] == "succeeded"
    # Resumed once, after event 1 (the fake ends only a stream that says so).
    assert [p for _, p, _ in seen].count("/api/v1/operations/op3/events") == 2


def test_events_stream_in_order_and_skip_comments(fake):
    url, _ = fake
    events = list(sdk.Client(url, "t").events("op1"))
    assert events == [{"event": "resource", "urn": "u1"}, {"event": "end",
                                                           "status": "succeeded"}]


def test_a_token_is_required(monkeypatch):
    monkeypatch.delenv("STACKSPACE_TOKEN", raising=False)
    with pytest.raises(ValueError, match="STACKSPACE_TOKEN"):
        sdk.Client("http://127.0.0.1:1")
