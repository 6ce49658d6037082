"""Shared secrets kept as files (passphrase, ticket-key, store.key).

Replicas share one directory of them (in Kubernetes a mounted Secret, read
only): a file is generated only when it is missing, and several processes
starting at once must all end up with the same value, never a half-written
one. So the value is written to a private temporary file and linked into
place, which fails if another process got there first; the loser reads the
winner's file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


class SecretUnavailable(Exception):
    """A secret file is missing and cannot be created (read-only directory)."""


def read_or_create(path: Path, generate: Callable[[], bytes]) -> bytes:
    """The file's content (stripped); generated (0600) first if it is missing."""
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise SecretUnavailable(f"secret file {path} cannot be read: {e.strerror}") from e
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # 0600
    except OSError as e:
        raise SecretUnavailable(
            f"secret file {path} is missing and cannot be created in {path.parent}: "
            f"{e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(generate())
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process won: use its value
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path.read_bytes().strip()
