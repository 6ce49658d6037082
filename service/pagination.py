"""List pagination (SPEC §4): `?limit=` and an opaque `?cursor=`.

A page is read in key order (owner, then name) strictly after the cursor's
key, so a walk sees every row that exists throughout it exactly once,
whatever is created or deleted meanwhile. The cursor is the last key of the
page, encoded: clients pass it back as they got it.
"""

from __future__ import annotations

import base64
import binascii
import json

DEFAULT_LIMIT = 100
MAX_LIMIT = 500


class PageError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def parse_limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise PageError("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


def encode_cursor(key: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        key = None
    if not (isinstance(key, list) and len(key) == 2 and all(isinstance(k, str) for k in key)):
        raise PageError("cursor", "not a cursor this service gave out (pass `next` as is)")
    return key[0], key[1]
