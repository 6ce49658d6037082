"""The pure parts of sessions that outlive their connection: the helper's frame
codec, the ticket's session claim, the service's validation of the request,
the proxy's reading of it, and the client's retry rule and list format."""

from __future__ import annotations

import os
import random

import pytest

from proxy import session_frames as sf
from proxy.sessions import requested_offset, session_mode
from proxy.tickets import TicketError, mint_ticket, verify_ticket
from service.exec_client import _retryable, _with_offset
from service.problems import Problem
from service.session_cli import format_sessions
from service.terminals import session_claim

KEY = os.urandom(32)
TARGET = {"type": "docker", "container": "c", "runtime": {"name": "l", "type": "docker"}}


def test_frames_survive_any_split_of_the_stream():
    frames = [(sf.HELLO, b'{"id":"a"}'), (sf.STDOUT, os.urandom(70_000)), (sf.STDERR, b""),
              (sf.EXIT, b'{"code":3}')]
    stream = b"".join(sf.encode(k, p) for k, p in frames)
    rng = random.Random(7)
    for _ in range(50):
        reader, got, pos = sf.FrameReader(), [], 0
        while pos < len(stream):
            step = rng.randint(1, 9000)
            got += reader.feed(stream[pos:pos + step])
            pos += step
        assert got == frames and reader.pending == 0


def test_an_oversized_frame_is_refused():
    with pytest.raises(sf.FrameError):
        sf.FrameReader().feed(sf.HEADER.pack(b"O", sf.MAX_PAYLOAD + 1))


def test_split_keeps_each_frame_under_the_limit():
    frames = sf.split(b"x" * 10, sf.STDIN, limit=4)
    assert [sf.FrameReader().feed(f)[0][1] for f in frames] == [b"xxxx", b"xxxx", b"xx"]
    assert sf.split(b"", sf.STDIN) == [sf.encode(sf.STDIN)]


@pytest.mark.parametrize("sid,ok", [("abc-_1", True), ("a" * 64, True), ("a" * 65, False),
                                    ("", False), ("../x", False), ("a b", False),
                                    ("é", False), (None, False), (3, False)])
def test_session_ids_name_a_directory_safely(sid, ok):
    assert sf.is_session_id(sid) is ok


def test_the_session_claim_is_signed_into_the_ticket():
    ticket, _ = mint_ticket(KEY, user="u", workspace="u/w", target=TARGET, command=["sh"],
                            tty=True, session={"mode": "attach", "id": "abc"})
    assert verify_ticket(KEY, ticket).session == {"mode": "attach", "id": "abc"}
    plain, _ = mint_ticket(KEY, user="u", workspace="u/w", target=TARGET, command=["sh"],
                           tty=True)
    assert verify_ticket(KEY, plain).session == {}
    with pytest.raises(ValueError, match="session"):
        mint_ticket(KEY, user="u", workspace="u/w", target=TARGET, command=["sh"], tty=True,
                    session={"mode": 1})  # type: ignore[dict-item]


def test_a_tampered_session_claim_breaks_the_signature():
    import base64
    import json

    ticket, _ = mint_ticket(KEY, user="u", workspace="u/w", target=TARGET, command=["sh"],
                            tty=True, session={"mode": "start"})
    v, kid, body, sig = ticket.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["ses"] = {"mode": "kill", "id": "other"}
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(TicketError, match="signature"):
        verify_ticket(KEY, f"{v}.{kid}.{forged}.{sig}")


@pytest.mark.parametrize("body,claim", [
    (None, {"mode": "start"}),
    ({"attach": "abc"}, {"mode": "attach", "id": "abc"}),
    ({"kill": "a-1"}, {"mode": "kill", "id": "a-1"}),
    ({"list": True}, {"mode": "list"}),
])
def test_the_service_turns_a_request_into_a_claim(body, claim):
    assert session_claim(body) == claim


@pytest.mark.parametrize("body,field", [
    ({"attach": "../etc"}, "session.attach"), ({"kill": ""}, "session.kill"),
    ({"attach": 3}, "session.attach"), ({"list": False}, "session"), ("abc", "session"),
    ({"attach": "a", "kill": "b"}, "session"), ({"start": "x"}, "session"), ({}, "session"),
])
def test_a_bad_session_request_is_a_validation_problem_naming_the_field(body, field):
    with pytest.raises(Problem) as info:
        session_claim(body)
    assert info.value.kind == "validation" and field in (info.value.errors or {})


def test_the_proxy_reads_the_mode_and_the_offset():
    assert session_mode({"mode": "start"}) == ("start", "")
    assert session_mode({"mode": "attach", "id": "x1"}) == ("attach", "x1")
    for bad in ({"mode": "attach"}, {"mode": "attach", "id": "a/b"}, {"mode": "exec"}, {}):
        with pytest.raises(ValueError):
            session_mode(bad)
    assert requested_offset("/exec?offset=1234") == 1234
    assert requested_offset("/exec") == 0
    assert requested_offset("/exec?offset=-5") == 0
    assert requested_offset("/exec?offset=abc") == 0


def test_the_client_retries_drops_not_refusals():
    assert _retryable(None, None) and _retryable(1006, "") and _retryable(1001, "going away")
    assert _retryable(1008, "ticket refused: ticket issued before the proxy started; "
                            "request a new one")
    assert not _retryable(1008, "ticket refused: ticket expired")
    assert not _retryable(1000, "")
    assert _with_offset("ws://h/exec", 0) == "ws://h/exec"
    assert _with_offset("ws://h/exec", 5) == "ws://h/exec?offset=5"
    assert _with_offset("ws://h/exec?a=1", 5) == "ws://h/exec?a=1&offset=5"


def test_the_session_list_format():
    assert format_sessions([]) == "no sessions"
    text = format_sessions([
        {"id": "abc", "started": 0, "running": True, "exit_code": None, "attached": 1,
         "command": ["bash", "-l"]},
        {"id": "def", "started": 60, "running": False, "exit_code": 3, "attached": 0,
         "command": ["sh", "-c", "exit 3"]}])
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "STARTED", "STATE", "CLIENTS", "COMMAND"]
    assert "abc" in lines[1] and "1970-01-01 00:00:00" in lines[1] and "running" in lines[1]
    assert "exit 3" in lines[2] and lines[2].endswith("sh -c exit 3")
