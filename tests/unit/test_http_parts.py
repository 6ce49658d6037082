"""The pure parts of the HTTP server: its settings, the 503 it writes itself,
list cursors, SSE stream slots and the activity signature."""

from __future__ import annotations

import json

import pytest

from proxy import activity
from service import pagination
from service.http_server import (
    MAX_BODY_BYTES,
    HttpSettings,
    buffered_body_length,
    is_long_request,
    whole_response,
)
from service.streams import StreamGate

KEY = b"k" * 32


def test_http_settings_defaults_and_checked_values():
    assert HttpSettings.parse(None) == HttpSettings()
    s = HttpSettings.parse({"threads": 4, "header_timeout": 1.5, "io_timeout": 2})
    assert (s.threads, s.header_timeout, s.io_timeout) == (4, 1.5, 2.0)
    for bad, field in (({"threads": 0}, "http.threads"), ({"threads": 2.5}, "http.threads"),
                       ({"backlog": True}, "http.backlog"), ({"keepalive": "5"}, "http.keepalive"),
                       ({"header_timeout": -1}, "http.header_timeout"),
                       ({"thread": 4}, "http.thread")):
        with pytest.raises(ValueError, match=field):
            HttpSettings.parse(bad)


@pytest.mark.parametrize(("kind", "retry", "line"), [
    ("unavailable", 3, "HTTP/1.1 503 Service Unavailable"),
    ("timeout", None, "HTTP/1.1 408 Request Timeout"),
])
def test_event_loop_answers_are_whole_problem_responses(kind, retry, line):
    raw = whole_response(kind, "busy", retry)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == line
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers.get("Retry-After") == (str(retry) if retry else None)
    assert headers["Connection"] == "close"
    assert headers["Content-Type"] == "application/problem+json"
    assert int(headers["Content-Length"]) == len(body)
    problem = json.loads(body)
    assert problem["status"] == int(line.split()[1]) and problem["type"].endswith("/" + kind)
    assert problem["detail"] == "busy"


def test_cursor_round_trip_and_bad_input_names_the_field():
    for key in (("alice", "ws-1"), ("bob", ""), ("ü/=?&", "x y")):
        cursor = pagination.encode_cursor(key)
        assert "=" not in cursor and "&" not in cursor
        assert pagination.decode_cursor(cursor) == key
    assert pagination.decode_cursor(None) is None
    for bad in ("", "!!", "bm90IGpzb24", pagination.encode_cursor(("a", "b"))[:-2] + "x",
                "WzFd"):  # "[1]"
        with pytest.raises(pagination.PageError) as e:
            pagination.decode_cursor(bad)
        assert e.value.field == "cursor"
    assert pagination.parse_limit(None) == pagination.DEFAULT_LIMIT
    assert pagination.parse_limit("1") == 1
    assert pagination.parse_limit(str(pagination.MAX_LIMIT)) == pagination.MAX_LIMIT
    for bad in ("0", "-1", "1.5", "x", str(pagination.MAX_LIMIT + 1), ""):
        with pytest.raises(pagination.PageError) as e:
            pagination.parse_limit(bad)
        assert e.value.field == "limit"


def test_stream_slots_are_capped_and_given_back_once_even_if_never_iterated():
    gate = StreamGate(limit=2)
    first, second = gate.hold(iter(["a"])), gate.hold(iter(["b"]))
    assert gate.enter() and gate.enter() and not gate.enter()
    assert gate.active == 2
    first.close()
    first.close()
    assert gate.active == 1
    assert list(second) == ["b"]
    second.close()
    assert gate.active == 0 and gate.enter()


@pytest.mark.parametrize(("head", "long"), [
    (b"GET /api/v1/operations/abc/events HTTP/1.1\r\nHost: x\r\n\r\n", True),
    (b"GET /api/v1/operations/abc/events?after=3 HTTP/1.1\r\n\r\n", True),
    (b"GET /api/v1/rollouts/r1/events HTTP/1.1\r\n\r\n", True),
    (b"GET /api/v1/operations/abc HTTP/1.1\r\n\r\n", False),
    (b"GET /api/v1/workspaces/events HTTP/1.1\r\n\r\n", True),  # a workspace named so: harmless
    (b"POST /api/v1/operations/abc/events HTTP/1.1\r\n\r\n", False),
    (b"GET /api/v1/workspaces/ws/files/events.log HTTP/1.1\r\n\r\n", True),
    (b"GET /api/v1/workspaces/ws/files/ HTTP/1.1\r\n\r\n", True),
    (b"GET /api/v1/workspaces/ws/files?owner=bob HTTP/1.1\r\n\r\n", True),
    (b"PUT /api/v1/workspaces/ws/files/a/b.tar HTTP/1.1\r\n\r\n", True),
    (b"PATCH /api/v1/workspaces/ws HTTP/1.1\r\n\r\n", False),
    (b"GET /api/v1/workspaces/files HTTP/1.1\r\n\r\n", False),
    (b"DELETE /api/v1/workspaces/ws/files/x HTTP/1.1\r\n\r\n", False),
    (b"GET /healthz HTTP/1.1\r\nX-Path: /a/events \r\n\r\n", False),
    (b"", False),
])
def test_long_requests_are_told_by_their_request_line(head, long):
    """Event streams and file transfers run on threads of their own;
    everything else on the request threads."""
    assert is_long_request(head) is long


@pytest.mark.parametrize(("head", "length"), [
    (b"POST /x HTTP/1.1\r\nContent-Length: 12\r\n", 12),
    (b"POST /x HTTP/1.1\r\nHost: y\r\ncontent-length:7 \r\nA: b\r\n", 7),
    (b"GET /x HTTP/1.1\r\nHost: y\r\n", 0),  # no body
    (b"POST /x HTTP/1.1\r\nContent-Length: %d\r\n" % MAX_BODY_BYTES, MAX_BODY_BYTES),
    # The app refuses it (413) from its length, unread.
    (b"POST /x HTTP/1.1\r\nContent-Length: %d\r\n" % (MAX_BODY_BYTES + 1), 0),
    # Chunked: read by the request thread.
    (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n", 0),
    # Two lengths, or one that is no number: gunicorn answers 400.
    (b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n", 0),
    (b"POST /x HTTP/1.1\r\nContent-Length: -5\r\n", 0),
    (b"POST /x HTTP/1.1\r\nX-Content-Length: 5\r\n", 0),
])
def test_the_event_loop_reads_only_bodies_of_a_known_bounded_length(head, length):
    assert buffered_body_length(head + b"Authorization: Bearer t\r\n\r\n") == length
    # Without credentials the app judges the request by its headers first
    # (401; the exec proxy's signed reports): its thread reads the body.
    assert buffered_body_length(head + b"X-Stackspace-Signature: s\r\n\r\n") == 0


def test_activity_signature_is_checked_from_headers_then_the_body_by_digest():
    body = b'{"workspace": "alice/ws"}'
    headers = activity.sign(KEY, body, now=1000.0)
    digest = activity.check_headers(KEY, headers, now=1001.0)
    # urllib sends "X-stackspace-signature": names are matched without case
    assert activity.check_headers(KEY, {k.capitalize(): v for k, v in headers.items()},
                                  now=1001.0) == digest
    activity.check_body(digest, body)
    with pytest.raises(activity.ActivityRejected):
        activity.check_body(digest, body + b" ")
    with pytest.raises(activity.ActivityRejected):
        activity.check_headers(b"x" * 32, headers, now=1000.0)  # another key
    with pytest.raises(activity.ActivityRejected):
        activity.check_headers(KEY, headers, now=1000.0 + activity.MAX_AGE + 1)  # stale
    with pytest.raises(activity.ActivityRejected):
        activity.check_headers(KEY, {}, now=1000.0)  # unsigned
    forged = {**headers, activity.DIGEST: "0" * 64}
    with pytest.raises(activity.ActivityRejected):
        activity.check_headers(KEY, forged, now=1000.0)
