"""Port forwarding's pure parts: forward tickets (what they grant and what they do
not), the port specs of `stackspace port-forward`, the service's validation of a
forward request, and the relay command."""

from __future__ import annotations

import asyncio
import time

import pytest

from components.runtime import DockerRuntime
from proxy.protocol import forward_url
from proxy.relay import relay_command
from proxy.tickets import TicketError, mint_ticket, verify_ticket
from service.forward_client import PortSpec, parse_port_spec
from service.problems import Problem
from service.store import User
from service.terminals import Terminals

KEY = b"k" * 32
TARGET = {"type": "docker", "container": "ws-alice-dev",
          "runtime": {"name": "local", "type": "docker", "host": "unix:///run/docker.sock"}}


def mint(**kw) -> str:
    args = {"user": "alice", "workspace": "alice/dev", "target": TARGET, "command": [],
            "tty": False, "kind": "forward", "port": 8080}
    return mint_ticket(KEY, **{**args, **kw})[0]


def test_forward_ticket_round_trip_names_its_port_and_no_command():
    claims = verify_ticket(KEY, mint())
    assert (claims.kind, claims.port, claims.command, claims.user) == (
        "forward", 8080, [], "alice")


def test_exec_tickets_keep_their_shape_and_kind():
    claims = verify_ticket(KEY, mint(kind="exec", port=0, command=["sh"]))
    assert (claims.kind, claims.port, claims.command) == ("exec", 0, ["sh"])


@pytest.mark.parametrize("bad", [{"port": 0}, {"port": 65536}, {"port": "80"}, {"port": True},
                                 {"command": ["sh"]}, {"kind": "tunnel"},
                                 {"kind": "exec", "command": ["sh"], "port": 80}])
def test_invalid_forward_claims_are_not_minted(bad):
    with pytest.raises(ValueError):
        mint(**bad)


def test_a_forged_kind_breaks_the_signature():
    import base64
    import json

    version, kid, body, sig = mint().split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(kind="exec", cmd=["sh"], port=0)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(TicketError, match="signature"):
        verify_ticket(KEY, f"{version}.{kid}.{forged}.{sig}")


@pytest.mark.parametrize("text,spec", [("8080:80", PortSpec(8080, 80)), ("80", PortSpec(80, 80)),
                                       (":80", PortSpec(0, 80)), ("0:5432", PortSpec(0, 5432)),
                                       ("65535:1", PortSpec(65535, 1))])
def test_port_specs(text, spec):
    assert parse_port_spec(text) == spec


@pytest.mark.parametrize("text", ["", ":", "0", "80:", "80:0", "a:80", "80:b", "-1:80",
                                  "70000:80", "80:70000", "1:2:3", " 80", "८०"])
def test_bad_port_specs_name_the_spec(text):
    with pytest.raises(ValueError, match="LOCAL:REMOTE"):
        parse_port_spec(text)


@pytest.mark.parametrize("exec_url,url", [
    ("ws://127.0.0.1:8081/exec", "ws://127.0.0.1:8081/forward"),
    ("wss://proxy.example/stackspace/exec", "wss://proxy.example/stackspace/forward"),
    ("wss://proxy.example/", "wss://proxy.example/forward")])
def test_forward_url_sits_next_to_the_exec_url(exec_url, url):
    assert forward_url(exec_url) == url


def test_relay_command_passes_the_port_as_an_argument():
    argv = relay_command(5432)
    assert argv[:2] == ["/bin/sh", "-c"] and argv[3:5] == ["relay", "5432"]
    with pytest.raises(ValueError):
        relay_command(0)


def terminals() -> Terminals:
    return Terminals(KEY, "ws://127.0.0.1:8081/exec",
                     [DockerRuntime(name="local", host="unix:///run/docker.sock")])


WS = {"runtime": "local", "owner": "alice", "name": "dev", "outputs": {"container": "c1"},
      "spec": {}}


def test_service_mints_a_forward_ticket_for_the_forward_endpoint():
    grant = terminals().mint(User("alice", False), WS, {"port": 3000})
    assert grant["url"] == "ws://127.0.0.1:8081/forward"
    claims = verify_ticket(KEY, grant["ticket"])
    assert (claims.kind, claims.port, claims.workspace, claims.target["container"]) == (
        "forward", 3000, "alice/dev", "c1")


@pytest.mark.parametrize("body,field", [({"port": 0}, "port"), ({"port": 65536}, "port"),
                                        ({"port": "80"}, "port"), ({"port": None}, "port"),
                                        ({"port": 80.0}, "port"),
                                        ({"port": 80, "tty": False}, "tty")])
def test_service_refuses_bad_forward_requests_naming_the_field(body, field):
    with pytest.raises(Problem) as info:
        terminals().mint(User("alice", False), WS, body)
    assert list(info.value.errors) == [field]


def test_the_proxy_accepts_each_ticket_kind_on_its_own_endpoint_only():
    """A forward ticket cannot run a command on /exec, nor an exec ticket open a port;
    the refusal (1008) comes before anything reaches a runtime."""
    import asyncio

    from websockets.asyncio.client import connect

    from proxy.protocol import subprotocols
    from proxy.server import ProxyConfig, start_proxy

    async def close_of(base: str, path: str, ticket: str) -> tuple[int | None, str]:
        async with connect(base + path, subprotocols=subprotocols(ticket)) as ws:  # type: ignore[arg-type]
            await ws.wait_closed()
            return ws.close_code, ws.close_reason

    async def main() -> list[tuple[int | None, str]]:
        proxy = await start_proxy(ProxyConfig(key=KEY, port=0))
        base = f"ws://127.0.0.1:{proxy.port}"
        try:
            return [await close_of(base, "/exec", mint()),
                    await close_of(base, "/forward", mint(kind="exec", port=0,
                                                          command=["sh"]))]
        finally:
            await proxy.close()

    refused = "ticket refused: a {} ticket is not valid on this path"
    assert asyncio.run(main()) == [(1008, refused.format("forward")),
                                   (1008, refused.format("exec"))]


class _EchoOnceTunnel:
    """Stands in for the workspace side: answers once the client half-closes and
    ends in the same instant (the race between the server's end and the
    client's EOF)."""

    def __init__(self) -> None:
        self.got = b""
        self.answer: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed: list[bool] = []

    async def open(self) -> None: ...

    async def send(self, data: bytes) -> None:
        self.got += data

    async def close_write(self) -> None:
        self.answer.put_nowait(self.got.upper())
        self.answer.put_nowait(None)

    async def recv(self) -> bytes | None:
        return await self.answer.get()

    async def failure(self) -> str | None:
        return None

    async def close(self, abort: bool) -> None:
        self.closed.append(abort)


def test_a_session_ends_when_the_server_ends_as_the_client_half_closes(monkeypatch):
    from websockets.asyncio.client import connect

    import proxy.forward
    from proxy.protocol import CLOSE, STATUS, STDIN, STDOUT, subprotocols
    from proxy.server import ProxyConfig, start_proxy

    tunnels: list[_EchoOnceTunnel] = []

    async def fake_open(target, port):
        tunnels.append(_EchoOnceTunnel())
        return tunnels[-1]

    monkeypatch.setattr(proxy.forward, "open_tunnel", fake_open)

    async def one(base: str) -> list[bytes]:
        async with connect(base + "/forward", subprotocols=subprotocols(mint())) as ws:  # type: ignore[arg-type]
            await ws.send(bytes([STDIN]) + b"ping")
            await ws.send(bytes([CLOSE, STDIN]))
            return [m async for m in ws]  # type: ignore[misc]

    async def main() -> tuple[list[list[bytes]], int]:
        p = await start_proxy(ProxyConfig(key=KEY, port=0, idle_timeout=30))
        try:
            got = await asyncio.wait_for(asyncio.gather(
                *(one(f"ws://127.0.0.1:{p.port}") for _ in range(20))), 10)
            deadline = time.monotonic() + 5  # the slots go back as each handler unwinds
            while p.forwards.users and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return got, sum(p.forwards.users.values())
        finally:
            await p.close()

    got, open_forwards = asyncio.run(main())
    assert all(m[0] == bytes([STDOUT]) + b"PING" and m[-1][:1] == bytes([STATUS])
               and b"Success" in m[-1] for m in got)
    assert open_forwards == 0 and all(t.closed == [False] for t in tunnels)


@pytest.mark.parametrize("value,ok", [(1, True), (65535, True), (0, False), (65536, False),
                                      (-1, False), (True, False), (80.0, False), ("80", False),
                                      (None, False)])
def test_is_port(value, ok):
    from proxy.protocol import is_port

    assert is_port(value) is ok
