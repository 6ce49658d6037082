"""Frames between the exec proxy and the in-workspace session helper
(proxy/session_helper/frame.go is the other side): one kind byte, a big-endian
uint32 payload length, the payload.

proxy -> helper: ``A`` attach ``{"offset": N}`` (first), ``I`` stdin, ``C`` close
stdin, ``R`` resize ``{"Width", "Height"}``, ``D`` the exit reached the user (end
the session). helper -> proxy: ``H`` hello ``{"id", "offset", "tty", ...}``, ``O``
stdout, ``E`` stderr, ``X`` exit ``{"code": n}``.
"""

from __future__ import annotations

import json
import struct
from typing import Any

HEADER = struct.Struct(">cI")
MAX_PAYLOAD = 1 << 20

ATTACH, STDIN, CLOSE_STDIN, RESIZE, DONE = b"A", b"I", b"C", b"R", b"D"
HELLO, STDOUT, STDERR, EXIT = b"H", b"O", b"E", b"X"


def is_session_id(sid: object) -> bool:
    """The helper's rule for ids: 1-64 of [A-Za-z0-9_-] (they name a directory)."""
    return (isinstance(sid, str) and 0 < len(sid) <= 64
            and all(c.isascii() and (c.isalnum() or c in "-_") for c in sid))


class FrameError(Exception):
    """The helper's stream is not frames (a corrupt or foreign stream)."""


def encode(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def encode_json(kind: bytes, value: Any) -> bytes:
    return encode(kind, json.dumps(value, separators=(",", ":")).encode())


def split(data: bytes, kind: bytes, limit: int = MAX_PAYLOAD) -> list[bytes]:
    """``data`` as frames of at most ``limit`` payload bytes (stdin of any size)."""
    return [encode(kind, data[i:i + limit]) for i in range(0, len(data), limit)] or [
        encode(kind)]


class FrameReader:
    """Incremental decoder: feed bytes as they come, get whole frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buf += data
        frames: list[tuple[bytes, bytes]] = []
        pos = 0
        while len(self._buf) - pos >= HEADER.size:
            kind, size = HEADER.unpack_from(self._buf, pos)
            if size > MAX_PAYLOAD:
                raise FrameError(f"frame of {size} bytes")
            end = pos + HEADER.size + size
            if len(self._buf) < end:
                break
            frames.append((kind, bytes(self._buf[pos + HEADER.size:end])))
            pos = end
        del self._buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)
