"""The signature of the exec proxy's activity reports to the service, in its
one home (the proxy signs, the service checks).

The credential travels in headers, so the service authenticates a report
before reading its body: an HMAC over the time of sending and the body's
SHA-256, with the digest itself in a header. The service then reads at most
MAX_BODY bytes and checks that they hash to the signed digest.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

SIGNATURE = "X-Stackspace-Signature"
TIMESTAMP = "X-Stackspace-Timestamp"
DIGEST = "X-Stackspace-Content-SHA256"
MAX_BODY = 4096  # a report is about 100 bytes
MAX_AGE = 300.0  # seconds a signed report stays acceptable (clock skew included)


class ActivityRejected(Exception):
    """The headers do not carry a valid signature."""


def _mac(key: bytes, timestamp: str, digest: str) -> str:
    return "sha256=" + hmac.new(key, f"{timestamp}.{digest}".encode(),
                                hashlib.sha256).hexdigest()


def sign(key: bytes, body: bytes, now: float) -> dict[str, str]:
    """The headers that authenticate `body`, sent at `now`."""
    timestamp, digest = f"{now:.3f}", hashlib.sha256(body).hexdigest()
    return {SIGNATURE: _mac(key, timestamp, digest), TIMESTAMP: timestamp, DIGEST: digest}


def check_headers(key: bytes, headers: Mapping[str, str], now: float) -> str:
    """The body digest a correctly signed, fresh report promises; raises
    ActivityRejected otherwise. Needs no byte of the body."""
    named = {k.lower(): v for k, v in headers.items()}  # header names have no case
    timestamp, digest = named.get(TIMESTAMP.lower(), ""), named.get(DIGEST.lower(), "")
    if not hmac.compare_digest(_mac(key, timestamp, digest), named.get(SIGNATURE.lower(), "")):
        raise ActivityRejected("bad activity signature")
    try:
        sent = float(timestamp)
    except ValueError:
        raise ActivityRejected("bad activity timestamp") from None
    if abs(now - sent) > MAX_AGE:
        raise ActivityRejected("stale activity report")
    return digest


def check_body(digest: str, body: bytes) -> None:
    if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), digest):
        raise ActivityRejected("the body does not match its signed digest")
