"""Repair what a cut-off write leaves in a DIY backend's files for one stack,
before any engine run touches it, so a workspace never depends on a readable
checkpoint to get out of trouble.

What a kill -9 can leave (Pulumi CLI 3.259, gocloud's fileblob under file://):
- an empty or half-written `.attrs` sidecar: fileblob writes it in place,
  before it renames the data file into place; once it cannot be decoded every
  read of the blob fails ("failed to load checkpoint: EOF"). A missing
  sidecar is fine (defaults), so a bad one is removed;
- a `<blob>.<hex>.tmp` file: the data written before the rename;
- a torn or missing checkpoint: the CLI copies the checkpoint to `<ckpt>.bak`
  before each save and keeps a copy of every update under
  `.pulumi/backups/<project>/<stack>/`; it never falls back to either itself.
The postgres:// backend keeps each blob in one row (`key`, `data` =
`{"data": base64}`), written by one upsert: no sidecars or temp files, but a
row can be damaged or lost by hand or by a failed restore, with the same
`.bak` and backups beside it.

`plan_repairs` is the pure rule (blobs in, steps out); `FileBlobs` and
`PostgresBlobs` read and write one stack's blobs; `repair_stack_state` joins
them. A stack whose checkpoint cannot be read and has no readable copy is
reset to an empty checkpoint when the caller allows it: the caller then runs
its recovery, which finds the workspace's objects by their labels and names
(delete removes them; any other run adopts the storage and makes the rest
again).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# The forms the CLI writes a checkpoint in that this module can check
# (zstd, PULUMI_DIY_BACKEND_ZSTD, is left alone: stackspace never sets it).
CHECKPOINT_SUFFIXES = (".json", ".json.gz")
BACKUP = ".bak"
ATTRS = ".attrs"
TEMP = re.compile(r"\.[0-9a-f]+\.tmp$")


@dataclass(frozen=True)
class StackKeys:
    """Where a DIY backend keeps one stack's blobs, relative to its root."""

    project: str
    stack: str

    @property
    def checkpoint_base(self) -> str:
        return f".pulumi/stacks/{self.project}/{self.stack}"

    @property
    def backups_dir(self) -> str:
        return f".pulumi/backups/{self.project}/{self.stack}/"

    @property
    def prefixes(self) -> tuple[str, ...]:
        """Key prefixes of the stack's blobs that a run reads (a stack name ends
        at `.json` or at a `/`, so no other stack's): the checkpoint and its
        copies, and the locks. History is only ever added to."""
        return (f"{self.checkpoint_base}.json", self.backups_dir,
                f".pulumi/locks/organization/{self.project}/{self.stack}/")

    @property
    def history_dir(self) -> str:
        return f".pulumi/history/{self.project}/{self.stack}/"

    def empty_checkpoint(self) -> bytes:
        """What `stack init` writes: a stack with no deployment yet."""
        return json.dumps({"version": 3, "checkpoint": {
            "stack": f"organization/{self.project}/{self.stack}", "latest": None}},
            indent=4).encode()


@dataclass(frozen=True)
class Step:
    """One change to the backend: delete `key`, or write `data` to it."""

    action: str  # "delete" | "write"
    key: str
    reason: str
    data: bytes | None = None
    # The checkpoint now holds older or no state than the runtime may have:
    # the run must recover (refresh, adopt, sweep what is not recorded).
    rewinds_state: bool = False

    def describe(self) -> str:
        return f"{self.reason}: {self.key}"


class StateLost(Exception):
    """The checkpoint cannot be read and no readable copy of it exists."""


def checkpoint_readable(key: str, data: bytes | None) -> bool:
    """Whether `data` is a whole checkpoint (what `getCheckpoint` would load)."""
    if not data:
        return False
    try:
        raw = gzip.decompress(data) if key.endswith(".gz") else data
        doc = json.loads(raw)
    except (OSError, EOFError, ValueError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("checkpoint"), dict)


def attrs_readable(data: bytes | None) -> bool:
    try:
        return isinstance(json.loads(data or b""), dict)
    except ValueError:
        return False


def _backup_stamp(key: str) -> int:
    """The nanosecond stamp of a backup `<stack>.<unixnano>.json[.gz]` (0 if none)."""
    match = re.search(r"\.(\d+)\.json(\.gz)?$", key)
    return int(match.group(1)) if match else 0


def plan_repairs(blobs: Mapping[str, bytes | None], keys: StackKeys,
                 reset_if_lost: bool = False) -> list[Step]:
    """The steps that make the stack's blobs loadable again (none if they are).
    `blobs`: every blob under `keys.prefixes` (None: listed, content unread;
    sidecars, temp files and checkpoints must be read). Raises StateLost if
    the checkpoint is torn or missing with no readable copy, unless
    `reset_if_lost`, which writes an empty checkpoint instead."""
    steps: list[Step] = []
    doomed: set[str] = set()

    def delete(key: str, reason: str) -> None:
        if key in blobs and key not in doomed:
            doomed.add(key)
            steps.append(Step("delete", key, reason))

    for key in sorted(blobs):
        if key.endswith(ATTRS):
            if not attrs_readable(blobs[key]):
                delete(key, "removed an empty or torn attributes sidecar")
        elif TEMP.search(key):
            delete(key, "removed a temp file of a cut-off write")

    for suffix in CHECKPOINT_SUFFIXES:
        key = keys.checkpoint_base + suffix
        bak = key + BACKUP
        if key in blobs and checkpoint_readable(key, blobs[key]):
            continue
        if key not in blobs and bak not in blobs:
            continue  # this form is not in use (a missing stack stays missing)
        what = "torn" if key in blobs else "missing"
        backups = sorted((k for k in blobs if k.startswith(keys.backups_dir)
                          and k.endswith(suffix) and checkpoint_readable(k, blobs[k])),
                         key=_backup_stamp, reverse=True)
        sources = ([bak] if checkpoint_readable(key, blobs.get(bak)) else []) + backups
        if sources:
            source = sources[0]
            steps.append(Step("write", key, f"checkpoint {what}: restored from {source}",
                              blobs[source], rewinds_state=True))
        elif reset_if_lost:
            data = keys.empty_checkpoint()
            if suffix.endswith(".gz"):
                data = gzip.compress(data)
            steps.append(Step("write", key, f"checkpoint {what} and no readable copy: reset "
                                            "to an empty checkpoint", data, rewinds_state=True))
        else:
            raise StateLost(f"the checkpoint of stack {keys.stack} is {what} and no readable "
                            "copy of it exists")
        # The sidecar describes the old bytes; the new ones need none.
        delete(key + ATTRS, "removed the attributes sidecar of a restored checkpoint")
    return steps


class StateBlobs(Protocol):
    """One backend's blobs, by key relative to the backend's root."""

    def keys(self, prefixes: Iterable[str]) -> list[str]: ...
    def remove_folders(self, prefixes: Iterable[str]) -> None: ...
    def read(self, key: str) -> bytes: ...
    def write(self, key: str, data: bytes) -> None: ...
    def delete(self, key: str) -> None: ...


class LazyBlobs(Mapping[str, bytes]):
    """Listed keys whose content is read on first access: a stack's backups
    are read only when its checkpoint needs one."""

    def __init__(self, store: StateBlobs, keys: Iterable[str]):
        self.store = store
        self._keys = sorted(set(keys))
        self._read: dict[str, bytes] = {}

    def __getitem__(self, key: str) -> bytes:
        if key not in self._keys:
            raise KeyError(key)
        if key not in self._read:
            self._read[key] = self.store.read(key)
        return self._read[key]

    def __contains__(self, key: object) -> bool:  # listed, without reading it
        return key in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class FileBlobs:
    """A file:// backend: blobs are files under the root directory."""

    def __init__(self, root: Path):
        self.root = root

    def keys(self, prefixes: Iterable[str]) -> list[str]:
        found = []
        for prefix in prefixes:
            folder, _, start = prefix.rpartition("/")
            base = self.root / folder
            if base.is_dir():
                found += [p.relative_to(self.root).as_posix()
                          for p in base.glob(f"{start}*" if start else "**/*") if p.is_file()]
        return found

    def remove_folders(self, prefixes: Iterable[str]) -> None:
        """Remove the folders named by `prefixes` ending in "/" once empty."""
        for prefix in prefixes:
            if prefix.endswith("/"):
                with contextlib.suppress(OSError):  # gone, or not empty
                    (self.root / prefix).rmdir()

    def read(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return b""

    def write(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{time.time_ns():x}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # whole or not at all

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / key).unlink()


class PostgresBlobs:
    """A postgres:// backend (Pulumi's DIY driver): one row per blob in its table,
    `data` = {"data": base64}. Like every non-file DIY backend, the CLI keeps
    its keys under the URL's path (the database name): `<db>/.pulumi/...`."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        self.table = query.pop("table", "pulumi_state")
        self.dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
        folder = parts.path.strip("/")
        self.prefix = f"{folder}/" if folder else ""

    def _execute(self, statement: str, params: tuple) -> list[tuple]:
        import psycopg
        from psycopg import sql

        query = sql.SQL(statement).format(table=sql.Identifier(self.table))
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def keys(self, prefixes: Iterable[str]) -> list[str]:
        found = []
        for prefix in prefixes:
            like = (self.prefix + prefix).replace("\\", "\\\\").replace("%", r"\%")
            like = like.replace("_", r"\_") + "%"  # left-anchored: the key index serves it
            found += [key[len(self.prefix):] for (key,) in self._execute(
                "SELECT key FROM {table} WHERE key LIKE %s", (like,))]
        return found

    def remove_folders(self, prefixes: Iterable[str]) -> None:
        """Rows have no folders."""

    def read(self, key: str) -> bytes:
        rows = self._execute("SELECT data::text FROM {table} WHERE key = %s",
                             (self.prefix + key,))
        return _row_bytes(rows[0][0]) if rows else b""

    def write(self, key: str, data: bytes) -> None:
        row = json.dumps({"data": base64.b64encode(data).decode()})
        self._execute("INSERT INTO {table} (key, data) VALUES (%s, %s::json) ON CONFLICT (key) "
                      "DO UPDATE SET data = EXCLUDED.data, updated_at = now()",
                      (self.prefix + key, row))

    def delete(self, key: str) -> None:
        self._execute("DELETE FROM {table} WHERE key = %s", (self.prefix + key,))


def _row_bytes(data: str | None) -> bytes:
    """A row's blob bytes; a damaged row reads as empty (unreadable)."""
    try:
        return base64.b64decode(json.loads(data or "")["data"], validate=True)
    except (ValueError, KeyError, TypeError):
        return b""


def blobs_for(backend_url: str) -> StateBlobs | None:
    """The blob access for a backend URL stackspace can repair (file://,
    postgres://); None for others (object stores write whole objects)."""
    if backend_url.startswith("file://"):
        return FileBlobs(Path(urlsplit(backend_url).path))
    if backend_url.startswith("postgres://"):
        return PostgresBlobs(backend_url)
    return None


def repair_stack_state(backend_url: str, keys: StackKeys, reset_if_lost: bool = False
                       ) -> list[Step]:
    """Check one stack's blobs and repair them; returns the steps taken."""
    blobs = blobs_for(backend_url)
    if blobs is None:
        return []
    steps = plan_repairs(LazyBlobs(blobs, blobs.keys(keys.prefixes)), keys, reset_if_lost)
    for step in steps:
        if step.action == "write":
            assert step.data is not None
            blobs.write(step.key, step.data)
        else:
            blobs.delete(step.key)
    return steps


def forget_stack(backend_url: str, keys: StackKeys) -> int:
    """Remove what `pulumi stack rm` leaves of a removed stack (its `.bak`,
    backups, history, sidecars): a workspace made again under the same name
    must never be "repaired" from a deleted one's copies, and nothing of a
    deleted workspace's (encrypted) config stays behind, nor its folders.
    Returns the count of blobs removed."""
    blobs = blobs_for(backend_url)
    if blobs is None:
        return 0
    prefixes = (*keys.prefixes, keys.history_dir)
    found = blobs.keys(prefixes)
    for key in found:
        blobs.delete(key)
    blobs.remove_folders(prefixes)  # the stack's own, never a shared one
    return len(found)
