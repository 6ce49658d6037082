"""``GET``/``PUT /workspaces/{name}/files/{path}`` (SPEC §4, §5): the exec proxy
carries the bytes.

The service mints a ticket bound to the user, the workspace and the one
operation on the one path (the argv of :data:`service.files.SCRIPT`), opens the
proxy's WebSocket itself and relays: request body -> stdin, stdout -> response
body, one bounded chunk at a time (constant memory, any size, binary-safe). The
proxy already execs on every runtime (local, TLS and SSH Docker hosts,
Kubernetes pods/exec) and holds the rights to (the service's Kubernetes Role has
no pods/exec), so files go wherever terminals go, as the workspace user.
"""

from __future__ import annotations

import contextlib
import json
import tarfile
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from typing import Any

from flask import Flask, Response, g, request
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from proxy.protocol import (
    CLOSE,
    MAX_MESSAGE,
    STATUS,
    STDIN,
    STDOUT,
    ExitStatusError,
    exit_code_of,
    subprotocols,
)
from service import files
from service.problems import Problem
from service.terminals import Terminals

CHUNK = MAX_MESSAGE - 1  # one stdin frame (channel byte + data) per read of the body
RECV_TIMEOUT = 120.0  # seconds without a frame from the proxy before the transfer fails
MAX_STDERR = 8192
TAR = "application/x-tar"
FORMATS = ("", "list", "tar", "stat")
# File bodies are streamed to the workspace, never held: their own limit, not
# the 1 MiB of JSON bodies (the workspace's storage is the real bound).
MAX_UPLOAD_BYTES = 1 << 40


START_ATTEMPTS = 3
FIRST_ANSWER_TIMEOUT = 30.0  # seconds from the exec's start to the script's first line


class ExecStartFailed(Exception):
    """The proxy could not start the exec (nothing ran): safe to try again."""


class ProxyExec:
    """One exec through the proxy, driven synchronously from a request thread."""

    def __init__(self, url: str, ticket: str, stdin: bool) -> None:
        try:
            self.ws: ClientConnection = connect(
                url, subprotocols=subprotocols(ticket),  # type: ignore[arg-type]
                max_size=MAX_MESSAGE, compression=None, open_timeout=30, proxy=None,
                max_queue=4, legacy=True)  # at most ~4 MiB in flight per transfer
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise Problem("proxy-unavailable", f"cannot reach the exec proxy: {exc}") from exc
        self.buf = b""
        self.stderr = b""
        self.status: dict[str, Any] | None = None
        self.ended = False
        self.first: files.Answer | None = None
        self.send(files.PRELUDE)
        if not stdin:
            self.close_stdin()

    def _recv(self, timeout: float = RECV_TIMEOUT) -> bytes | None:
        """The next stdout bytes; None once the exec ended (its status is kept)."""
        while not self.ended:
            try:
                message = self.ws.recv(timeout=timeout)
            except ConnectionClosed:
                self.ended = True
                break
            except TimeoutError as exc:
                raise Problem("proxy-unavailable", "the workspace stopped answering") from exc
            if isinstance(message, str) or not message:
                continue
            channel, data = message[0], message[1:]
            if channel == STDOUT:
                return bytes(data)
            if channel == STATUS:
                self.status = json.loads(data)
            elif len(self.stderr) < MAX_STDERR:
                self.stderr += data[:MAX_STDERR - len(self.stderr)]
        return None

    def answer(self, starting: bool = False) -> files.Answer:
        """The script's next line (ERR/OK/READY). ``starting``: its first line, which
        comes quickly once the script ran; none means it never got its stdin (an
        exec that lost it), so nothing ran and the caller may try again."""
        if self.first is not None:
            first, self.first = self.first, None
            return first
        while b"\n" not in self.buf:
            try:
                data = self._recv(FIRST_ANSWER_TIMEOUT if starting else RECV_TIMEOUT)
            except Problem as exc:
                if starting:
                    raise ExecStartFailed(f"no answer from the workspace in "
                                          f"{FIRST_ANSWER_TIMEOUT:g}s") from exc
                raise
            if data is None:
                if (self.status or {}).get("reason") == "InternalError":
                    raise ExecStartFailed(self._failure())
                raise Problem("proxy-unavailable", self._failure())
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return files.parse_answer(line)

    def chunks(self) -> Iterator[bytes]:
        """Stdout after the answer line, as it arrives."""
        if self.buf:
            data, self.buf = self.buf, b""
            yield data
        while (data := self._recv()) is not None:
            yield data

    def _failure(self) -> str:
        """Why the exec ended without an answer: the proxy's status or close reason."""
        if self.status is not None:
            with contextlib.suppress(ExitStatusError):
                code = exit_code_of(self.status)
                return (f"the file operation failed in the workspace (exit {code}): "
                        + self.stderr.decode("utf-8", "replace").strip()[-300:])
            return f"exec proxy: {self.status.get('message') or self.status.get('reason')}"
        return f"exec proxy: {self.ws.close_reason or 'connection closed'}"

    def send(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):  # it refused or ended: its answer says why
            self.ws.send(bytes([STDIN]) + data)

    def close_stdin(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            self.ws.send(bytes([CLOSE, STDIN]))

    def finish(self) -> int:
        """Read to the end; the exit code (non-zero when no status came)."""
        while self._recv() is not None:
            pass
        if self.status is None:
            return 255
        try:
            return exit_code_of(self.status)
        except ExitStatusError:
            return 255

    def close(self) -> None:
        self.ws.close()


def _refusal(answer: files.Answer, path: str) -> Problem:
    kind, template = files.ERRORS.get(answer.error, ("internal", "{path}: " + answer.error))
    arg = answer.arg or path
    shown = arg if answer.error == "short" else "/" + arg.strip("./")
    return Problem(kind, template.format(path=shown))


def _headers(entry: files.Entry) -> dict[str, str]:
    view = entry.view()
    return {"X-Stackspace-Type": entry.type, "X-Stackspace-Mode": view["mode"],
            "X-Stackspace-Mtime": str(entry.mtime),
            "Last-Modified": formatdate(entry.mtime, usegmt=True)}


def _discard_body(limit: int = 64 << 20) -> None:
    """Read what the client still sends (up to ``limit``), so it gets our answer,
    not a reset."""
    with contextlib.suppress(Exception):
        while limit > 0 and (data := request.stream.read(CHUNK)):
            limit -= len(data)


def register(app: Flask, prefix: str, authed: Callable[..., Any],
             find_workspace: Callable[[str], dict[str, Any]],
             terminals: Terminals | None) -> None:
    base = f"{prefix}/workspaces/<name>/files"

    def open_exec(name: str, argv: list[str], stdin: bool = False) -> ProxyExec:
        ws = find_workspace(name)
        if terminals is None:
            raise Problem("conflict", "the exec proxy is not configured")
        if ws["state"] != "running" or not ws["outputs"]:
            raise Problem("conflict", f"workspace {name!r} is {ws['state']}, not running: "
                                      "start it to read or write its files")
        # A runtime that could not start the exec (an SSH host out of sessions, an
        # engine hiccup) is asked again: nothing ran, no byte of the body was read.
        failure = ""
        for attempt in range(START_ATTEMPTS):
            grant = terminals.mint(g.user, ws, {"command": argv, "tty": False}, kept=False,
                                   internal=True)
            ex = ProxyExec(grant["url"], grant["ticket"], stdin)
            try:
                ex.first = ex.answer(starting=True)
                return ex
            except ExecStartFailed as exc:
                ex.close()
                failure = str(exc)
                time.sleep(0.5 * (attempt + 1))  # back off before the next attempt
            except BaseException:
                ex.close()
                raise
        raise Problem("proxy-unavailable", failure)

    @contextlib.contextmanager
    def removed_on_failure(ex: ProxyExec, name: str, tmp: str) -> Iterator[None]:
        """A body that breaks off (the client went away) is never committed: the
        exec is ended and its temporary file removed."""
        try:
            yield
        except (files.TarRefused, tarfile.TarError):
            raise  # a refusal: the script's own answer cleans up
        except Exception:
            ex.close()
            if files.TMP_NAME.fullmatch(tmp):
                with contextlib.suppress(Exception):
                    cleanup = open_exec(name, files.command("abort", ".", tmp))
                    cleanup.answer()
                    cleanup.finish()
                    cleanup.close()
            raise

    def request_path(path: str) -> str:
        try:
            return files.normalize(path)
        except files.PathError as exc:
            raise Problem("bad-request", str(exc), {"path": str(exc)}) from exc

    def read(name: str, path: str = "") -> Response:
        rel = request_path(path)
        fmt = request.args.get("format", "")
        if not fmt and TAR in request.headers.get("Accept", ""):
            fmt = "tar"
        if fmt not in FORMATS:
            raise Problem("bad-request", "format must be list, tar or stat",
                          {"format": "one of list, tar, stat"})
        op = "stat" if fmt == "stat" else "get"
        ex = open_exec(name, files.command(op, rel or ".", "tar" if fmt == "tar" else "list"))
        streaming = False
        try:
            answer = ex.answer()
            if answer.status != "OK":
                raise _refusal(answer, rel)
            entry = answer.entry()
            headers = _headers(entry)
            shown = "/" + rel
            if fmt == "stat":
                return Response(json.dumps({"path": shown, **entry.view()}), headers=headers,
                                mimetype="application/json")
            if entry.type == "dir" and fmt != "tar":
                data = b"".join(_bounded(ex.chunks(), files.MAX_LISTING_BYTES))
                if ex.finish() != 0:
                    raise Problem("internal", f"{shown}: listing failed in the workspace")
                return Response(json.dumps({"path": shown, **entry.view(),
                                            "entries": files.parse_listing(data)}),
                                headers=headers, mimetype="application/json")
            if entry.type != "dir" and fmt in ("tar", "list"):
                raise Problem("conflict", f"{shown}: not a directory (format={fmt})")
            if entry.type == "dir":
                resp = Response(_stream_tar(ex, shown), headers=headers, mimetype=TAR,
                                direct_passthrough=True)
            else:
                headers["Content-Length"] = str(entry.size)
                resp = Response(_stream_file(ex, entry.size, shown), headers=headers,
                                mimetype="application/octet-stream", direct_passthrough=True)
            # The server closes the body when the request ends, even one never
            # iterated (HEAD, a client gone first): the proxy session ends with it.
            resp.call_on_close(ex.close)
            streaming = True
            return resp
        finally:
            if not streaming:
                ex.close()

    def write(name: str, path: str = "") -> Response:
        rel = request_path(path)
        request.max_content_length = MAX_UPLOAD_BYTES
        try:
            mode = files.parse_mode(request.headers.get("X-Stackspace-Mode"))
            mtime = files.parse_mtime(request.headers.get("X-Stackspace-Mtime"))
        except files.PathError as exc:
            raise Problem("bad-request", str(exc)) from exc
        size = request.content_length
        expected = "-" if size is None else str(size)
        if request.mimetype == TAR:
            return _write_tar(name, rel, expected)
        if not rel:
            raise Problem("conflict", "/: is a directory (send application/x-tar to unpack)")
        ex = open_exec(name, files.command("put", rel, mode, mtime, expected), stdin=True)
        try:
            answer = ex.answer()
            if answer.status != "READY" or not answer.words:
                _discard_body()
                raise _refusal(answer, rel)
            with removed_on_failure(ex, name, answer.words[0]):
                while chunk := request.stream.read(CHUNK):
                    ex.send(chunk)
            ex.close_stdin()
            answer = ex.answer()
            if answer.status != "OK":
                raise _refusal(answer, rel)
            ex.finish()
        finally:
            ex.close()
        entry = answer.entry()
        return Response(json.dumps({"path": "/" + rel, **entry.view()}), status=201,
                        headers=_headers(entry), mimetype="application/json")

    def _write_tar(name: str, rel: str, expected: str) -> Response:
        """Upload to a temporary file in the destination while checking the stream;
        unpack only if every member passed (else remove it: nothing is written)."""
        ex = open_exec(name, files.command("tarin", rel or ".", expected), stdin=True)
        refused: Problem | None = None
        try:
            answer = ex.answer()
            if answer.status != "READY" or not answer.words:
                _discard_body()
                raise _refusal(answer, rel)
            tmp = answer.words[0]
            tee = files.TeeReader(request.stream, ex.send, CHUNK)
            try:
                with removed_on_failure(ex, name, tmp):
                    with tarfile.open(fileobj=tee, mode="r|") as archive:  # type: ignore[call-overload]
                        files.check_tar(iter(archive))
                    tee.drain()
            except files.TarRefused as exc:
                refused = Problem("forbidden", f"{exc}; refused, nothing was written")
            except tarfile.TarError as exc:
                refused = Problem("bad-request", f"the body is not a tar archive ({exc}); "
                                                 "nothing was written")
            ex.close_stdin()
            answer = ex.answer()
            ex.finish()
        finally:
            ex.close()
        if refused is not None:
            _discard_body()
        if answer.status != "OK":
            raise refused or _refusal(answer, rel)
        if not files.TMP_NAME.fullmatch(tmp):
            raise Problem("internal", "unexpected answer from the workspace")
        ex = open_exec(name, files.command("untar", rel or ".", tmp,
                                           "abort" if refused else "extract"))
        try:
            answer = ex.answer()
            ex.finish()
        finally:
            ex.close()
        if refused is not None:
            raise refused
        if answer.status != "OK":
            raise _refusal(answer, rel)
        return Response(json.dumps({"path": "/" + rel, "unpacked": True}), status=201,
                        mimetype="application/json")

    # ".../files" (no slash) redirects here; a path may hold slashes (path converter).
    for rule, suffix in ((f"{base}/", "root"), (f"{base}/<path:path>", "path")):
        app.add_url_rule(rule, f"read_file_{suffix}", authed(read), methods=["GET"])
        app.add_url_rule(rule, f"write_file_{suffix}", authed(write), methods=["PUT"])


def _bounded(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise Problem("conflict", f"the directory listing exceeds {limit >> 20} MiB; "
                                      "ask for format=tar")
        yield chunk


def _stream_file(ex: ProxyExec, size: int, shown: str) -> Iterator[bytes]:
    """Exactly ``size`` bytes (the Content-Length); a short or failed read aborts the
    response so the client sees a truncated body, never a silently wrong one."""
    sent = 0
    try:
        for chunk in ex.chunks():
            take = chunk[:size - sent]
            if take:
                sent += len(take)
                yield take
            if sent >= size:
                ex.finish()  # the exit status, so the proxy ends the session cleanly
                break
        if sent < size:
            raise OSError(f"{shown}: read {sent} of {size} bytes from the workspace")
    finally:
        ex.close()


def _stream_tar(ex: ProxyExec, shown: str) -> Iterator[bytes]:
    try:
        yield from ex.chunks()
        if ex.finish() != 0:
            raise OSError(f"{shown}: tar failed in the workspace: "
                          + ex.stderr.decode("utf-8", "replace")[-300:])
    finally:
        ex.close()
