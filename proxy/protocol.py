"""The exec proxy's wire protocol, shared by the proxy and its clients (SPEC §5).

A WebSocket with subprotocol ``v5.channel.k8s.io``. The ticket travels in
``Sec-WebSocket-Protocol`` like a Kubernetes bearer token: the client offers
``v5.channel.k8s.io`` and ``base64url.bearer.authorization.k8s.io.<base64url(ticket)>``;
the server selects only the former. (Not the query string: URLs end up in
access logs; browsers cannot set Authorization on a WebSocket but can offer
subprotocols.)

Binary messages, first byte = channel: 0 stdin, 1 stdout, 2 stderr, 3 status (a
Kubernetes ``Status`` JSON, sent once before a normal close), 4 resize
``{"Width": w, "Height": h}``, 255 close (``[255, 0]``: the client half-closes stdin).
A session (proxy.sessions) adds channel 6 from the proxy, before any output:
``{"session": id, "offset": N, "tty": bool}``; reattach with ``?offset=N`` on the URL.
The client acknowledges a session's exit status with ``[255, 3]`` (the session ends).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

SUBPROTOCOL = "v5.channel.k8s.io"
BEARER_PREFIX = "base64url.bearer.authorization.k8s.io."
STDIN, STDOUT, STDERR, STATUS, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
SESSION = 6
PATH = "/exec"
FORWARD_PATH = "/forward"  # port forwarding: proxy.forward
MAX_MESSAGE = 1 << 20  # default largest frame either side accepts


class ExitStatusError(Exception):
    """A status that is not an exit code (the exec could not run, idle timeout...)."""


def subprotocols(ticket: str) -> list[str]:
    """What a client offers: the protocol and the ticket as a bearer token."""
    token = base64.urlsafe_b64encode(ticket.encode()).rstrip(b"=").decode()
    return [SUBPROTOCOL, BEARER_PREFIX + token]


def ticket_from_subprotocols(values: list[str]) -> str | None:
    """The ticket among offered subprotocols; None if absent, "" if undecodable."""
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if item.startswith(BEARER_PREFIX):
                raw = item[len(BEARER_PREFIX):]
                try:
                    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
                except (binascii.Error, UnicodeDecodeError):
                    return ""
    return None


def is_port(value: object) -> bool:
    """A TCP port to forward to: an int in 1..65535 (a bool is not one)."""
    return type(value) is int and 0 < value < 65536


def forward_url(exec_url: str) -> str:
    """The proxy's port-forward endpoint next to its exec endpoint (same host, and
    the same prefix behind a reverse proxy)."""
    base = exec_url[:-len(PATH)] if exec_url.endswith(PATH) else exec_url.rstrip("/")
    return base + FORWARD_PATH


def status_success() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def status_exit(code: int) -> dict[str, Any]:
    if code == 0:
        return status_success()
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def status_failure(reason: str, message: str) -> dict[str, Any]:
    return {"metadata": {}, "status": "Failure", "reason": reason, "message": message}


def exit_code_of(status: dict[str, Any]) -> int:
    """Exit code from a status; raises ExitStatusError for failures that are not an exit."""
    if status.get("status") == "Success":
        return 0
    if status.get("reason") == "NonZeroExitCode":
        for cause in status.get("details", {}).get("causes", []):
            if cause.get("reason") == "ExitCode":
                return int(cause["message"])
    raise ExitStatusError(status.get("message") or status.get("reason") or "exec failed")
