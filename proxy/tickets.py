"""Terminal tickets: short-lived, single-use, HMAC-signed grants for the exec proxy.

The service mints a ticket for one user, one workspace, one exec target and one
command; the proxy verifies it with the shared key and no database. Format::

    sst1.<kid>.<payload>.<sig>

``payload`` is base64url (no padding) of a JSON object, ``kid`` names the key
(a hash of it, so a ticket from another installation is told apart from a
tampered one) and ``sig`` is base64url HMAC-SHA256 over ``sst1.<kid>.<payload>``.
The payload is signed, not encrypted: it holds what the proxy needs to run the
command (target, command, env) and nothing else, no key material.

Single use is enforced by :class:`ReplayGuard`, an in-memory set of ticket ids
kept until the ticket expires. It also refuses tickets issued before the guard
was created, so restarting the proxy (which forgets the set) cannot reopen a
replay window.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from proxy.protocol import is_port

VERSION = "sst1"
DEFAULT_TTL = 60.0
MAX_TTL = 600.0  # a longer-lived ticket is refused even if correctly signed
CLOCK_SKEW = 5.0  # tolerated difference between the service's and the proxy's clocks
MIN_KEY_BYTES = 32
TARGET_TYPES = ("docker", "kubernetes")
# What a ticket grants: "exec" runs its command (GET /exec); "forward" opens one TCP
# connection to its port inside the workspace (GET /forward) and runs nothing else.
KINDS = ("exec", "forward")


class TicketError(Exception):
    """A ticket was refused; ``reason`` is safe to show to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TicketClaims:
    ticket_id: str
    user: str
    workspace: str
    target: dict[str, Any]
    command: list[str]
    tty: bool
    env: dict[str, str] = field(default_factory=dict)
    issued_at: float = 0.0
    expires_at: float = 0.0
    kind: str = "exec"
    port: int = 0  # the workspace port of a "forward" ticket
    # A session request (proxy.sessions): {"mode": "start"|"attach"|"list"|"kill",
    # "id": ...}; empty for a plain exec that ends with its connection.
    session: dict[str, Any] = field(default_factory=dict)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
        raise ValueError(f"ticket key must be at least {MIN_KEY_BYTES} bytes")


def key_id(key: bytes) -> str:
    """Short public name of a key: a domain-separated hash, not the key."""
    return hashlib.sha256(b"stackspace-ticket-kid\0" + key).hexdigest()[:12]


def _sign(key: bytes, signed: str) -> str:
    return _b64(hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest())


def _validate_claims(user: Any, workspace: Any, target: Any, command: Any, tty: Any,
                     env: Any, kind: Any = "exec", port: Any = 0,
                     session: Any = None) -> None:
    if not isinstance(user, str) or not user:
        raise ValueError("user must be a non-empty string")
    if not isinstance(workspace, str) or not workspace:
        raise ValueError("workspace must be a non-empty string")
    if not isinstance(target, dict) or target.get("type") not in TARGET_TYPES:
        raise ValueError(f"target must be a dict with type in {TARGET_TYPES}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if kind == "forward":
        if not is_port(port) or command:
            raise ValueError("a forward ticket names a port in 1..65535 and no command")
    elif (not isinstance(command, list) or not command
            or not all(isinstance(a, str) for a in command)) or port:
        raise ValueError("command must be a non-empty list of strings")
    if not isinstance(tty, bool):
        raise ValueError("tty must be a bool")
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("env must map strings to strings")
    if session is not None and (not isinstance(session, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in session.items())):
        raise ValueError("session must map strings to strings")


def mint_ticket(key: bytes, *, user: str, workspace: str, target: dict[str, Any],
                command: list[str], tty: bool, env: dict[str, str] | None = None,
                ttl: float = DEFAULT_TTL, now: float | None = None, kind: str = "exec",
                port: int = 0, session: dict[str, str] | None = None) -> tuple[str, float]:
    """Return ``(ticket, expires_at)``; expires_at is epoch seconds. A "forward"
    ticket has an empty command, no tty and the workspace ``port``."""
    _check_key(key)
    env = dict(env or {})
    _validate_claims(user, workspace, target, command, tty, env, kind, port, session)
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"ttl must be in (0, {MAX_TTL}] seconds")
    issued = time.time() if now is None else now
    expires = issued + ttl
    payload = {"jti": secrets.token_urlsafe(16), "sub": user, "ws": workspace,
               "target": target, "cmd": list(command), "tty": tty, "env": env,
               "iat": issued, "exp": expires}
    if kind != "exec":  # exec tickets keep their original shape
        payload.update(kind=kind, port=port)
    if session:
        payload["ses"] = dict(session)
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    signed = f"{VERSION}.{key_id(key)}.{body}"
    return f"{signed}.{_sign(key, signed)}", expires


def verify_ticket(key: bytes, ticket: str, now: float | None = None) -> TicketClaims:
    """Check format, key, signature and lifetime; raise :class:`TicketError` if any fails.

    Single use is not checked here (that needs state): see :class:`ReplayGuard`.
    """
    _check_key(key)
    parts = ticket.split(".") if isinstance(ticket, str) else []
    if len(parts) != 4 or parts[0] != VERSION:
        raise TicketError("malformed ticket")
    _, kid, body, sig = parts
    if not hmac.compare_digest(kid, key_id(key)):
        raise TicketError("ticket was signed with a different key")
    if not hmac.compare_digest(sig, _sign(key, f"{VERSION}.{kid}.{body}")):
        raise TicketError("ticket signature is invalid")
    try:
        p = json.loads(_unb64(body))
        claims = TicketClaims(
            ticket_id=p["jti"], user=p["sub"], workspace=p["ws"], target=p["target"],
            command=p["cmd"], tty=p["tty"], env=p["env"],
            issued_at=float(p["iat"]), expires_at=float(p["exp"]),
            kind=p.get("kind", "exec"), port=p.get("port", 0), session=p.get("ses") or {})
        _validate_claims(claims.user, claims.workspace, claims.target, claims.command,
                         claims.tty, claims.env, claims.kind, claims.port, claims.session)
        if not isinstance(claims.ticket_id, str) or not claims.ticket_id:
            raise ValueError("jti")
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        # Correctly signed but unusable: a minting bug, not an attack.
        raise TicketError("malformed ticket") from exc
    now = time.time() if now is None else now
    if claims.expires_at <= now:
        raise TicketError("ticket expired")
    if claims.issued_at > now + CLOCK_SKEW:
        raise TicketError("ticket not yet valid")
    if claims.expires_at - claims.issued_at > MAX_TTL:
        raise TicketError("ticket lifetime too long")
    return claims


class ReplayGuard:
    """Remembers used ticket ids until they expire (a ticket is then refused anyway)."""

    def __init__(self, max_entries: int = 100_000, now: float | None = None) -> None:
        self._seen: dict[str, float] = {}
        self._max = max_entries
        # Tickets issued before we existed may have been used on a previous
        # instance whose seen-set is gone; refuse them (allowing for skew).
        self.not_before = (time.time() if now is None else now) - CLOCK_SKEW

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, claims: TicketClaims, now: float | None = None) -> None:
        """Raise TicketError if the ticket was used before; does not record it."""
        now = time.time() if now is None else now
        if claims.ticket_id in self._seen:
            raise TicketError("ticket already used")
        if claims.issued_at < self.not_before:
            raise TicketError("ticket issued before the proxy started; request a new one")
        self._purge(now)
        if len(self._seen) >= self._max:
            raise TicketError("too many outstanding tickets; try again shortly")

    def consume(self, claims: TicketClaims, now: float | None = None) -> None:
        """Check and record in one step (no await in between, so no race in asyncio)."""
        self.check(claims, now)
        self._seen[claims.ticket_id] = claims.expires_at

    def _purge(self, now: float) -> None:
        if len(self._seen) < 1024 and len(self._seen) < self._max:
            return  # cheap path: purge only when the set has grown
        for jti in [j for j, exp in self._seen.items() if exp <= now]:
            del self._seen[jti]
