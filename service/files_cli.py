"""``stackspace cp SRC DST``: files and directories to and from a workspace
(``WS:PATH`` names a path in workspace WS, as ``kubectl cp`` does), through the
file API. Directories travel as tar streams, files as raw bodies with mode and
mtime; nothing is held in memory whole. Progress shows only on a TTY."""

from __future__ import annotations

import os
import queue
import re
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import click
import requests

from service.sdk import CHUNK, Files, FilesError

_WS = re.compile(r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?")


def split_target(arg: str) -> tuple[str | None, str]:
    """``WS:PATH`` -> (WS, PATH); anything else is a local path (a leading ``/`` or
    ``.`` keeps a local name with a colon local)."""
    head, sep, tail = arg.partition(":")
    if sep and _WS.fullmatch(head) and not arg.startswith(("/", ".")):
        return head, tail
    return None, arg


class Progress:
    """A byte counter on stderr, only when stderr is a terminal."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total, self.done = label, total, 0
        self.show = sys.stderr.isatty()
        self.started = self.last = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.show and now - self.last > 0.2:
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.started, 1e-6) / (1 << 20)
        of = f" / {self.total / (1 << 20):.1f}" if self.total else ""
        sys.stderr.write(f"\r{self.label}: {self.done / (1 << 20):.1f}{of} MiB "
                         f"({rate:.1f} MiB/s)\x1b[K")
        sys.stderr.flush()

    def end(self) -> None:
        if self.show:
            self._draw(time.monotonic())
            sys.stderr.write("\n")


class _CountingReader:
    """A file body for requests (its length known: Content-Length) that counts."""

    def __init__(self, f: IO[bytes], size: int, progress: Progress) -> None:
        self.f, self.len, self.progress = f, size, progress

    def __len__(self) -> int:
        return self.len

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(CHUNK if n is None or n < 0 else max(n, CHUNK))
        self.progress.add(len(data))
        return data


class _PipeWriter:
    """tarfile writes here from a thread; the request body reads the chunks."""

    def __init__(self) -> None:
        self.q: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        if len(self.buf) >= CHUNK:
            self.q.put(bytes(self.buf))
            self.buf.clear()
        return len(data)

    def close(self) -> None:
        if self.buf:
            self.q.put(bytes(self.buf))
        self.q.put(None)


def tar_stream(source: Path, progress: Progress) -> Iterator[bytes]:
    """A directory as a tar stream, produced while it is sent."""
    pipe = _PipeWriter()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with tarfile.open(fileobj=pipe, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for child in sorted(source.iterdir()):
                    tar.add(str(child), arcname=child.name)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            failure.append(exc)
        finally:
            pipe.close()

    threading.Thread(target=produce, daemon=True).start()
    while (chunk := pipe.q.get()) is not None:
        progress.add(len(chunk))
        yield chunk
    if failure:
        raise FilesError(f"{source}: {failure[0]}")


def _join(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}" if path.strip("/") else name


def upload(api: Files, local: Path, ws: str, path: str) -> None:
    if not local.exists():
        raise FilesError(f"{local}: no such file or directory")
    remote = api.stat(ws, path) if path.strip("/") else {"type": "dir"}
    into = path.endswith("/") or (remote is not None and remote["type"] == "dir")
    if local.is_dir():
        dest = _join(path, local.resolve().name) if remote is not None else path
        progress = Progress(f"{local} -> {ws}:{dest}", None)
        api.write_tar(ws, dest, tar_stream(local, progress))
        progress.end()
        return
    dest = _join(path, local.name) if into else path
    st = local.stat()
    progress = Progress(f"{local} -> {ws}:{dest}", st.st_size)
    with local.open("rb") as f:
        api.write(ws, dest, _CountingReader(f, st.st_size, progress), mode=st.st_mode,
                  mtime=st.st_mtime)
    progress.end()


def download(api: Files, ws: str, path: str, local: Path) -> None:
    remote = api.stat(ws, path)
    if remote is None:
        raise FilesError(f"{ws}:{path}: no such file or directory")
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if remote["type"] == "dir":
        dest = local / name if local.is_dir() and name else local
        dest.mkdir(parents=True, exist_ok=True)
        progress = Progress(f"{ws}:{path} -> {dest}", None)
        with api.read_tar(ws, path) as resp:
            resp.raw.decode_content = True
            reader = _ResponseReader(resp, progress)
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                tar.extractall(dest, filter="data")
        progress.end()
        return
    dest = local / name if local.is_dir() else local
    part = dest.with_name(f".{dest.name}.part")
    progress = Progress(f"{ws}:{path} -> {dest}", remote["size"])
    with api.read(ws, path) as resp, part.open("wb") as out:
        for chunk in resp.iter_content(CHUNK):
            out.write(chunk)
            progress.add(len(chunk))
    if progress.done != remote["size"] and progress.done != int(
            resp.headers.get("Content-Length", -1)):
        part.unlink(missing_ok=True)
        raise FilesError(f"{ws}:{path}: the transfer broke off")
    os.chmod(part, int(resp.headers["X-Stackspace-Mode"], 8))
    mtime = int(resp.headers["X-Stackspace-Mtime"])
    os.utime(part, (mtime, mtime))
    part.replace(dest)
    progress.end()


class _ResponseReader:
    def __init__(self, resp: requests.Response, progress: Progress) -> None:
        self.raw, self.progress = resp.raw, progress

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n if n and n > 0 else CHUNK)
        self.progress.add(len(data))
        return data


def copy(api: Files, src: str, dst: str) -> None:
    (src_ws, src_path), (dst_ws, dst_path) = split_target(src), split_target(dst)
    if src_ws and dst_ws:
        raise FilesError("copying between two workspaces is not supported: copy through "
                         "a local directory")
    if not src_ws and not dst_ws:
        raise FilesError("one of SRC and DST must be WS:PATH (a path in a workspace)")
    if dst_ws:
        upload(api, Path(src_path), dst_ws, dst_path)
    else:
        assert src_ws is not None
        download(api, src_ws, src_path, Path(dst_path))


def register(main: click.Group, connection_options: Callable[[Any], Any],
             client: Callable[[str | None, str | None], Any]) -> None:
    @main.command()
    @click.argument("src")
    @click.argument("dst")
    @connection_options
    def cp(src: str, dst: str, url: str | None, token: str | None) -> None:
        """Copy a file or directory into or out of a workspace: `cp FILE WS:PATH`,
        `cp WS:PATH DIR`. WS:PATH names a path in workspace WS, relative to its root;
        directories are copied whole (as tar)."""
        c = client(url, token)
        try:
            copy(Files(c.url, c.token), src, dst)
        except (FilesError, OSError, tarfile.TarError) as exc:
            raise click.ClickException(str(exc)) from exc
