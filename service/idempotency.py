"""Idempotency-Key replays (IETF draft-ietf-httpapi-idempotency-key-header):
a key reused with a different request body is refused with 422, so a client
bug never passes for a replay of what it sent first."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any


class KeyReused(Exception):
    """The Idempotency-Key was first used with a different request body."""

    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was used with a different request body")


def body_digest(key: bytes, body: Any) -> str:
    """A keyed digest of a JSON body, the same for the same JSON whatever its
    spacing or key order; keyed (the store's key) because bodies hold secrets
    that a plain hash of a short password would give away."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def check(stored: str | None, sent: str | None) -> None:
    """Raise KeyReused when both digests are known and differ (operations
    stored before digests existed replay as before)."""
    if stored and sent and not hmac.compare_digest(stored, sent):
        raise KeyReused()
