"""The production HTTP server (SPEC §4), a real `stackspace serve` over
loopback: gunicorn, not werkzeug's development server; slow clients (heads
and JSON bodies) hold no thread and are answered 408 while others are served;
503 when saturated, not a hang; the exec proxy's
activity endpoint judged on its headers before its body is read."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from proxy import activity
from tests.faults.harness import LiveService, process_tree

HTTP = {"threads": 2, "backlog": 2, "streams": 1, "header_timeout": 2, "io_timeout": 2}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[LiveService]:
    svc = LiveService(tmp_path_factory.mktemp("http"),
                      [{"name": "local", "type": "docker", "host": "unix:///nonexistent.sock"}],
                      settings={"http": HTTP, "pool_size": 1})
    svc.start("serve")
    try:
        yield svc
    finally:
        svc.stop()


def connect(svc: LiveService) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
    return s


def response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one whole response (the server closes or sends Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        body += s.recv(65536)
    return int(lines[0].split()[1]), headers, body


def closed_within(s: socket.socket, seconds: float) -> float:
    """Seconds until the server closed `s` (fails if it takes longer)."""
    start = time.monotonic()
    s.settimeout(seconds)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def healthy_fast(svc: LiveService, times: int = 10) -> None:
    for _ in range(times):
        start = time.monotonic()
        r = requests.get(f"{svc.url}/healthz", timeout=5)
        assert r.status_code == 200 and time.monotonic() - start < 1.0


def test_the_api_is_served_by_gunicorn_in_one_worker_process(served):
    r = requests.get(f"{served.url}/healthz", timeout=5)
    assert r.status_code == 200
    assert r.headers["Server"].startswith("gunicorn")
    assert "werkzeug" not in r.headers["Server"].lower()
    assert served.proc is not None
    own = Path(f"/proc/{served.proc.pid}/cmdline").read_bytes()
    server = [p for p in process_tree(served.proc.pid)
              if Path(f"/proc/{p}/cmdline").read_bytes() == own]
    assert len(server) == 2, "the arbiter and exactly one worker (one operation runner)"


def post_head(svc: LiveService, body: bytes, *, chunked: bool = False) -> socket.socket:
    """A POST /workspaces whose body starts with `body` and then stops arriving."""
    s = connect(svc)
    length = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: 1000"
    s.sendall(b"POST /api/v1/workspaces HTTP/1.1\r\nHost: x\r\n"
              b"Authorization: Bearer " + svc.token.encode() + b"\r\n"
              b"Content-Type: application/json\r\n" + length + b"\r\n\r\n" + body)
    return s


def test_slow_clients_hold_no_thread_and_are_answered_408(served):
    # Half the headers, then nothing; and whole heads whose bodies stop
    # arriving: more of each than the request threads and their backlog.
    crowd = HTTP["threads"] + HTTP["backlog"] + 1
    slow_heads = []
    for _ in range(crowd):
        s = connect(served)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        slow_heads.append(s)
    slow_bodies = [post_head(served, b'{"na') for _ in range(crowd)]
    healthy_fast(served)  # none of them holds a thread: no 503, no wait
    for group, timeout in ((slow_heads, HTTP["header_timeout"]),
                           (slow_bodies, HTTP["io_timeout"])):
        for s in group:
            s.settimeout(timeout + 3)
            status, headers, body = response(s)
            assert status == 408 and headers["content-type"] == "application/problem+json", body
            assert closed_within(s, 3) < 3
            s.close()
    healthy_fast(served)
    assert served.call("GET", "/workspaces").json()["items"] == []  # nothing half-created


def test_clients_that_never_close_hold_up_no_one(served):
    """A client that reads its answer and keeps its end open (or never reads
    it) does not make others wait: the server closes without lingering for
    its FIN (gunicorn's graceful close waited up to 2 s each, on the loop)."""
    held = []
    for _ in range(HTTP["threads"] + HTTP["backlog"]):  # as many as are served at once
        s = connect(served)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        held.append(s)
    try:
        assert response(held[0])[0] == 200  # one reads its answer; the rest never do
        healthy_fast(served)
        for s in held:  # every one was answered and closed by the server
            status, _, _ = response(s) if s is not held[0] else (200, {}, b"")
            assert status == 200
            assert closed_within(s, 2) < 2
    finally:
        for s in held:
            s.close()


def test_saturation_is_answered_503_at_once_not_a_hang(served):
    # Chunked bodies are read by the request threads: these stall every
    # thread and backlog place.
    hold = [post_head(served, b"1\r\n{", chunked=True)
            for _ in range(HTTP["threads"] + HTTP["backlog"])]
    deadline = time.monotonic() + 1.5
    while True:
        start = time.monotonic()
        r = requests.get(f"{served.url}/healthz", timeout=5)
        took = time.monotonic() - start
        if r.status_code == 503 or time.monotonic() > deadline:
            break
    assert r.status_code == 503, "saturated, yet not refused"
    assert took < 1.0, f"the refusal took {took:.2f}s"
    assert r.headers["Content-Type"] == "application/problem+json"
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["status"] == 503
    for s in hold:  # once the stalled bodies are cut off, the API answers again
        closed_within(s, HTTP["io_timeout"] + 5)
        s.close()
    deadline = time.monotonic() + 5
    while requests.get(f"{served.url}/healthz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "still refusing after the slow clients left"
    healthy_fast(served)


def test_activity_reports_are_judged_on_their_headers_before_the_body(served):
    def post_head(headers: dict[str, str], length: int) -> tuple[int, float]:
        s = connect(served)
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        s.sendall(f"POST /internal/activity HTTP/1.1\r\nHost: x\r\n{lines}"
                  f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
                  .encode())  # and never a byte of the body
        start = time.monotonic()
        status, headers_back, body = response(s)
        s.close()
        assert headers_back["content-type"] == "application/problem+json", body
        return status, time.monotonic() - start

    # 64 MiB announced, nothing sent: refused from the headers alone.
    status, took = post_head({activity.SIGNATURE: "sha256=0"}, 64 << 20)
    assert status == 413 and took < 1.0
    # Unsigned, or signed with another key: 401 without waiting for the body.
    status, took = post_head({}, 200)
    assert status == 401 and took < 1.0
    body = json.dumps({"user": "admin", "workspace": "admin/none", "timestamp": time.time()})
    forged = activity.sign(b"x" * 32, body.encode(), time.time())
    status, took = post_head(forged, len(body))
    assert status == 401 and took < 1.0

    # A report signed with the service's key is recorded.
    key = bytes.fromhex((served.data_dir / "ticket-key").read_text())
    r = requests.post(f"{served.url}/internal/activity", data=body, timeout=5,
                      headers={"Content-Type": "application/json",
                               **activity.sign(key, body.encode(), time.time())})
    assert r.status_code == 204, r.text
    # The same headers with another body: refused by the digest.
    r = requests.post(f"{served.url}/internal/activity", data=body.replace("none", "nope"),
                      timeout=5, headers={"Content-Type": "application/json",
                                          **activity.sign(key, body.encode(), time.time())})
    assert r.status_code == 401


def test_event_streams_have_their_own_capped_threads_and_are_pushed(served):
    from service.store import Store

    r = served.call("POST", "/workspaces", json={"name": "streamed"})
    assert r.status_code == 202, r.text
    op_id = r.json()["id"]
    deadline = time.monotonic() + 120
    while served.op(op_id)["status"] in ("queued", "running"):  # no engine here: it fails
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # Running again, leased to a live replica elsewhere: its stream stays open.
    store = Store(served.data_dir / "stackspace.db", key_file=served.data_dir / "store.key")
    with store.tx() as db:
        db.execute("UPDATE operations SET status='running', ended=NULL, lease_owner=?,"
                   " lease_until=? WHERE id=?", ("elsewhere-1-abcdef", time.time() + 3600, op_id))
        db.execute("DELETE FROM events WHERE op=?", (op_id,))  # its end, too
    request = (f"GET /api/v1/operations/{op_id}/events HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: Bearer {served.token}\r\n\r\n").encode()
    first = connect(served)
    first.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        head += first.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head
    try:
        # One stream is all this server allows (streams: 1): the next is refused...
        second = connect(served)
        second.sendall(request)
        status, headers, body = response(second)
        second.close()
        assert status == 503 and headers["content-type"] == "application/problem+json", body
        assert int(headers["retry-after"]) >= 1
        # ... while the API keeps its threads.
        healthy_fast(served, 5)
        # An event written by another process reaches the open stream at once.
        first.settimeout(5)
        start = time.monotonic()
        store.add_event(op_id, {"type": "diagnostic", "message": "pushed-now"})
        got = b""
        while b"pushed-now" not in got:
            chunk = first.recv(65536)
            assert chunk, "the stream closed"
            got += chunk
        assert time.monotonic() - start < 1.0
    finally:
        first.close()
        with store.tx() as db:
            db.execute("UPDATE operations SET status='failed', ended=? WHERE id=?",
                       (time.time(), op_id))
        store.close()
