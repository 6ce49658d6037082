"""A hijacked Docker Engine connection (``POST /exec/{id}/start`` upgraded to a
raw stream) driven on the proxy's event loop, for every Docker host kind:

- ``unix://``: a non-blocking socket with ``loop.sock_*``;
- ``tcp://`` with TLS: the same socket under an ``ssl.SSLObject`` on memory BIOs,
  so encryption runs on the loop (asyncio refuses ``SSLSocket``; its own TLS
  transport cannot half-close);
- ``ssh://``: a channel on the runtime's SSH connection (the Docker SDK's
  paramiko transport, host key checked against the runtime's known_hosts)
  running ``docker system dial-stdio``, the Docker SSH convention.

Half-close matters: ``wc -c`` and ``cat`` see EOF on stdin only when the write
side ends. TLS ends it with a ``close_notify`` (the engine's Go TLS then reads a
clean EOF and closes the exec's stdin) and keeps reading the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
from abc import ABC, abstractmethod
from typing import Any
from urllib.parse import urlsplit

from components.runtime import DockerRuntime

READ_CHUNK = 256 * 1024
MAX_HEADER = 64 * 1024


class StreamError(Exception):
    """The engine refused the upgrade or the connection could not be made."""


class EngineStream(ABC):
    @abstractmethod
    async def recv(self) -> bytes:
        """Next bytes; b"" at end of stream."""

    @abstractmethod
    async def send(self, data: bytes) -> None: ...

    @abstractmethod
    async def shutdown_write(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


class SockStream(EngineStream):
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def recv(self) -> bytes:
        return await asyncio.get_running_loop().sock_recv(self.sock, READ_CHUNK)

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class TLSStream(SockStream):
    """TLS on memory BIOs over a non-blocking socket. Single-threaded (the loop), so
    one SSLObject serves reads and writes; a lock keeps outgoing records in order."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, hostname: str) -> None:
        super().__init__(sock)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=hostname)
        self._send_lock = asyncio.Lock()
        self._write_closed = False

    async def _flush(self) -> None:
        async with self._send_lock:
            while self.outgoing.pending:
                await asyncio.get_running_loop().sock_sendall(self.sock, self.outgoing.read())

    async def _fill(self) -> bool:
        data = await asyncio.get_running_loop().sock_recv(self.sock, READ_CHUNK)
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True

    async def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise StreamError("TLS handshake: connection closed") from None
        await self._flush()

    async def recv(self) -> bytes:
        """Everything decrypted so far (one read returns one record at most: gather
        them, fewer and larger frames downstream), waiting for the socket if none."""
        chunks: list[bytes] = []
        size = 0
        while size < READ_CHUNK:
            try:
                data = self.tls.read(READ_CHUNK - size)
            except ssl.SSLWantReadError:
                if self.outgoing.pending:  # e.g. a TLS 1.3 key update answer
                    await self._flush()
                if chunks:
                    break
                if not await self._fill():
                    return b""  # the peer closed without close_notify
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            if not data:
                break
            chunks.append(data)
            size += len(data)
        return b"".join(chunks)

    async def send(self, data: bytes) -> None:
        self.tls.write(data)
        await self._flush()

    async def shutdown_write(self) -> None:
        if self._write_closed:
            return
        self._write_closed = True
        # close_notify only: SSL_shutdown's wait for the peer's alert is skipped
        # (it would discard the output still coming), reading goes on.
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError):
            self.tls.unwrap()
        with contextlib.suppress(OSError):
            await self._flush()


class ChannelStream(EngineStream):
    """A paramiko channel; its calls block, so they run on threads."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    async def recv(self) -> bytes:
        return await asyncio.to_thread(self.channel.recv, READ_CHUNK)

    async def send(self, data: bytes) -> None:
        await asyncio.to_thread(self.channel.sendall, data)

    async def shutdown_write(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            await asyncio.to_thread(self.channel.shutdown_write)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.channel.close)


def tls_context(rt: DockerRuntime) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=rt.ca_file)
    ctx.load_cert_chain(str(rt.cert_file), str(rt.key_file))
    return ctx


async def _connect(rt: DockerRuntime, api: Any) -> EngineStream:
    loop = asyncio.get_running_loop()
    url = urlsplit(rt.host)
    if url.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, url.path)
        except OSError:
            sock.close()
            raise
        return SockStream(sock)
    if url.scheme == "tcp":
        host, port = url.hostname or "", url.port or 2376
        sock = await asyncio.to_thread(socket.create_connection, (host, port), 30)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not rt.ca_file:
            return SockStream(sock)
        stream = TLSStream(sock, tls_context(rt), host)
        try:
            await stream.handshake()
        except (ssl.SSLError, StreamError, OSError):
            sock.close()
            raise
        return stream
    if url.scheme == "ssh":
        return ChannelStream(await asyncio.to_thread(_ssh_channel, rt))
    raise StreamError(f"unsupported Docker host {rt.host!r}")


# sshd caps the sessions (channels) of one SSH connection (MaxSessions, 10 by
# default), and each attached exec stream holds one for its whole life. So the
# streams never share the API client's connection (its pooled requests would be
# refused once the streams fill it): they go on connections of their own, made
# like the API client's (same identity, same strict host keys), a new one only
# when every one is full.
MAX_STREAM_CONNECTIONS = 16
_stream_connections: dict[DockerRuntime, list[Any]] = {}
_stream_lock = threading.Lock()


def _ssh_channel(rt: DockerRuntime) -> Any:
    import paramiko

    from components.clients import docker_client

    with _stream_lock:
        apis = list(_stream_connections.get(rt, []))
    for api in apis:
        try:
            return _dial_stdio(api)
        except paramiko.ChannelException:
            continue  # this connection is full (or its server side still closing)
    with _stream_lock:
        if len(_stream_connections.get(rt, [])) >= MAX_STREAM_CONNECTIONS:
            raise StreamError(f"runtime {rt.name!r}: every SSH connection to the host is "
                              "full (sshd MaxSessions); retry when a terminal has ended")
    api = docker_client(rt).api
    with _stream_lock:
        _stream_connections.setdefault(rt, []).append(api)
    return _dial_stdio(api)


def _dial_stdio(api: Any) -> Any:
    adapter = api.get_adapter(api.base_url)
    transport = adapter.ssh_client.get_transport()
    if transport is None or not transport.is_active():
        adapter._connect()  # the SDK's own reconnect path, same strict host-key policy
        transport = adapter.ssh_client.get_transport()
    channel = transport.open_session(timeout=30)
    channel.exec_command("docker system dial-stdio")
    return channel


async def open_upgraded(rt: DockerRuntime, api: Any, path: str, body: dict[str, Any]
                        ) -> tuple[EngineStream, bytes]:
    """POST ``path`` on the engine with ``Upgrade: tcp``; return the raw stream and any
    stream bytes that arrived with the response head."""
    stream = await _connect(rt, api)
    try:
        payload = json.dumps(body).encode()
        head = (f"POST /v{api.api_version}{path} HTTP/1.1\r\nHost: docker\r\n"
                "User-Agent: stackspace-proxy\r\nContent-Type: application/json\r\n"
                "Connection: Upgrade\r\nUpgrade: tcp\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        await stream.send(head + payload)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = await stream.recv()
            if not chunk or len(buf) > MAX_HEADER:
                raise StreamError("the engine closed the connection during the upgrade")
            buf += chunk
        response, _, rest = buf.partition(b"\r\n\r\n")
        status_line = response.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if code not in (101, 200):
            raise StreamError(_error_message(code, rest))
        return stream, rest
    except BaseException:
        await stream.close()
        raise


def _error_message(code: int, body: bytes) -> str:
    start, end = body.find(b"{"), body.rfind(b"}")  # the body may be chunked
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return str(json.loads(body[start:end + 1].decode())["message"])
    return f"the engine answered HTTP {code}"
