"""Terminal tickets: what the service mints is what the proxy accepts, once, in time."""

from __future__ import annotations

import base64
import json

import pytest

from proxy.tickets import (
    MAX_TTL,
    ReplayGuard,
    TicketError,
    mint_ticket,
    verify_ticket,
)

KEY = b"k" * 32
OTHER = b"o" * 32
TARGET = {"type": "docker", "container": "ws-alice-dev",
          "runtime": {"name": "local", "type": "docker", "host": "unix:///run/docker.sock"}}
NOW = 1_700_000_000.0


def mint(key: bytes = KEY, **kw) -> str:
    args = {"user": "alice", "workspace": "alice/dev", "target": TARGET,
            "command": ["bash", "-l"], "tty": True, "env": {"TERM": "xterm"}, "now": NOW}
    return mint_ticket(key, **{**args, **kw})[0]


def reason(key: bytes, ticket: str, now: float = NOW + 1) -> str:
    with pytest.raises(TicketError) as info:
        verify_ticket(key, ticket, now=now)
    return info.value.reason


def test_round_trip_binds_user_workspace_target_command():
    ticket, expires = mint_ticket(KEY, user="alice", workspace="alice/dev", target=TARGET,
                                  command=["bash", "-l"], tty=True, env={"TERM": "xterm"},
                                  now=NOW)
    assert expires == NOW + 60
    c = verify_ticket(KEY, ticket, now=NOW + 59)
    assert (c.user, c.workspace, c.target, c.command, c.tty, c.env) == (
        "alice", "alice/dev", TARGET, ["bash", "-l"], True, {"TERM": "xterm"})
    assert c.expires_at == expires and c.ticket_id


def test_every_ticket_has_its_own_id():
    assert verify_ticket(KEY, mint(), NOW).ticket_id != verify_ticket(KEY, mint(), NOW).ticket_id


def test_expired():
    assert reason(KEY, mint(ttl=10), now=NOW + 10) == "ticket expired"


def test_issued_in_the_future():
    assert reason(KEY, mint(now=NOW + 60), now=NOW) == "ticket not yet valid"


def test_other_key():
    assert reason(KEY, mint(OTHER)) == "ticket was signed with a different key"


@pytest.mark.parametrize("field,value", [("sub", "mallory"), ("ws", "bob/prod"),
                                         ("cmd", ["rm", "-rf", "/"]), ("exp", NOW + 10**6)])
def test_tampered_claims(field, value):
    version, kid, body, sig = mint().split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims[field] = value
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert reason(KEY, f"{version}.{kid}.{forged}.{sig}") == "ticket signature is invalid"


def test_tampered_signature_and_garbage():
    t = mint()
    assert reason(KEY, t[:-2] + ("AA" if not t.endswith("AA") else "BB")) == (
        "ticket signature is invalid")
    for junk in ("", "x", "sst1.a.b", "sst2" + t[4:], t + ".x"):
        assert reason(KEY, junk) in ("malformed ticket", "ticket was signed with a different key")


def test_lifetime_is_capped():
    with pytest.raises(ValueError):
        mint(ttl=MAX_TTL + 1)


def test_short_keys_are_refused():
    with pytest.raises(ValueError):
        mint(b"short")


@pytest.mark.parametrize("bad", [{"command": []}, {"command": "bash"}, {"tty": "yes"},
                                 {"target": {"type": "ssh"}}, {"env": {"A": 1}}, {"user": ""}])
def test_invalid_claims_are_not_minted(bad):
    with pytest.raises(ValueError):
        mint(**bad)


def test_replay_guard_single_use_until_expiry():
    guard = ReplayGuard(now=NOW - 100)
    claims = verify_ticket(KEY, mint(), now=NOW)
    guard.consume(claims, now=NOW)
    with pytest.raises(TicketError, match="already used"):
        guard.consume(claims, now=NOW + 1)
    other = verify_ticket(KEY, mint(), now=NOW)
    guard.check(other, now=NOW)  # check alone does not use the ticket up
    guard.consume(other, now=NOW)


def test_replay_guard_refuses_tickets_older_than_itself():
    # A restarted proxy has forgotten which tickets were used before.
    guard = ReplayGuard(now=NOW + 30)
    with pytest.raises(TicketError, match="before the proxy started"):
        guard.consume(verify_ticket(KEY, mint(), now=NOW + 31), now=NOW + 31)


def test_replay_guard_is_bounded_and_forgets_expired():
    guard = ReplayGuard(max_entries=3, now=NOW - 100)
    for _ in range(3):
        guard.consume(verify_ticket(KEY, mint(ttl=5), now=NOW), now=NOW)
    late = verify_ticket(KEY, mint(ttl=60), now=NOW)
    with pytest.raises(TicketError, match="too many"):
        guard.consume(late, now=NOW + 1)
    guard.consume(late, now=NOW + 6)  # the first three expired and were dropped
    assert len(guard) == 1


@pytest.fixture
def database_url(store_target) -> str:
    """The service's database on each backend: an SQLite file or a PostgreSQL URL."""
    return str(store_target)


def test_shared_guard_makes_a_ticket_single_use_across_proxies(database_url):
    from proxy.replay import SharedReplayGuard

    first, second = SharedReplayGuard(database_url), SharedReplayGuard(database_url)
    claims = verify_ticket(KEY, mint(), now=NOW)
    first.consume(claims, now=NOW)
    for guard in (second, first):  # replayed on the other proxy, or the same one
        with pytest.raises(TicketError, match="already used"):
            guard.consume(claims, now=NOW + 1)
    # A proxy started after the ticket was minted still takes a fresh one
    # (the database remembers what was used, unlike the in-memory guard).
    late = SharedReplayGuard(database_url)
    late.consume(verify_ticket(KEY, mint(), now=NOW), now=NOW + 2)
    for guard in (first, second, late):
        guard.close()


def test_shared_guard_forgets_expired_tickets(database_url):
    from proxy.replay import SharedReplayGuard

    guard = SharedReplayGuard(database_url)
    guard.consume(verify_ticket(KEY, mint(ttl=5), now=NOW), now=NOW)
    guard.consume(verify_ticket(KEY, mint(ttl=5), now=NOW), now=NOW + 61)  # purges the first
    assert guard.db.execute("SELECT COUNT(*) FROM consumed_tickets").fetchone()[0] == 1
    guard.close()
