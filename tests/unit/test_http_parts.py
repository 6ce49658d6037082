"""The pure parts of the HTTP server: its settings, the 503 it writes itself,
list cursors, SSE stream slots and the activity signature."""

from __future__ import annotations

import json
import threading
import time

import pytest

from proxy import activity
from service import pagination
from service.http_server import HttpSettings, refusal
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


def test_refusal_is_a_whole_503_problem_response():
    raw = refusal("busy", retry_after=3)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Retry-After"] == "3" and headers["Connection"] == "close"
    assert headers["Content-Type"] == "application/problem+json"
    assert int(headers["Content-Length"]) == len(body)
    problem = json.loads(body)
    assert problem["status"] == 503 and problem["type"].endswith("/unavailable")


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


def test_at_most_n_requests_run_and_one_that_becomes_a_stream_gives_its_slot_back():
    gate = StreamGate(limit=4, requests=2)
    free = threading.Semaphore(0)
    results: list[str] = []

    def request(name: str, becomes_stream: bool) -> None:
        gate.begin_request()
        results.append(f"{name} runs")
        if becomes_stream:
            assert gate.enter()  # from here on it holds a stream slot, not a request's
        free.acquire()  # the request's work
        gate.end_request()
        gate.end_request()  # twice: harmless

    threads = [threading.Thread(target=request, args=(n, s)) for n, s in
               (("stream", True), ("a", False), ("b", False))]
    for t in threads:
        t.start()
    # The stream gave its slot back: a and b both run though 2 slots were taken by 3.
    deadline = time.monotonic() + 10
    while len(results) < 3:
        assert time.monotonic() < deadline, results
        time.sleep(0.01)
    assert gate._slots is not None and not gate._slots.acquire(blocking=False)  # a, b hold both
    free.release()
    free.release()
    free.release()
    for t in threads:
        t.join(timeout=10)
    assert gate._slots.acquire(blocking=False) and gate._slots.acquire(blocking=False)
    assert not gate._slots.acquire(blocking=False)  # never more than its 2 slots
    assert gate.active == 1  # the stream's slot goes back with its body (Held.close)


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
