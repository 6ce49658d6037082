"""Exec proxy overhead: keystroke echo latency and bulk throughput, through the
proxy (its own process, ``python -m proxy``) and through a direct Docker Engine
exec with the Docker SDK to the same host, in the same run on loopback.

    .venv/bin/python bench/exec_proxy.py [--host tls|local] [--keys 300] [--mib 128]

``tls`` (default): the remote test host from scripts/test-docker-host (TLS on
127.0.0.1), ``local``: DOCKER_HOST. Starts a throwaway workspace container and
the proxy process; prints a table with the targets (echo p50 within +1 ms of
direct, upload and download at least 50% of direct).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from components.clients import docker_client  # noqa: E402
from components.runtime import parse_runtime  # noqa: E402
from proxy.protocol import subprotocols  # noqa: E402
from proxy.server import ProxyConfig  # noqa: E402
from proxy.tickets import mint_ticket  # noqa: E402
from service.exec_client import run_exec  # noqa: E402
from tests.conftest import remote_runtime  # noqa: E402
from tests.e2e.exec_fixtures import ProxyProcess, workspace_container  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

MIB = 1024 * 1024
_keep: list[object] = []


class Sink(io.RawIOBase):
    def __init__(self) -> None:
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self.n += len(b)
        return len(b)


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


# --- direct Docker exec ------------------------------------------------------------

def direct_socket(api: docker.APIClient, container: str, cmd: list[str],
                  tty: bool) -> socket.socket:
    exec_id = api.exec_create(container, cmd, stdin=True, tty=tty, user="1000")["Id"]
    sockio = api.exec_start(exec_id, tty=tty, socket=True)
    sock: socket.socket = getattr(sockio, "_sock", sockio)  # an SSLSocket over TLS
    sock.settimeout(30)
    _keep.append(sockio)  # the SocketIO owns the HTTP response; keep it alive
    return sock


def direct_echo(api: docker.APIClient, container: str, keys: int) -> list[float]:
    sock = direct_socket(api, container, ["cat"], tty=True)
    times = []
    for _ in range(keys):
        t0 = time.perf_counter()
        sock.sendall(b"x")
        while b"x" not in sock.recv(4096):
            pass
        times.append(time.perf_counter() - t0)
    sock.close()
    return times


def direct_download(api: docker.APIClient, container: str, size: int) -> float:
    sock = direct_socket(api, container, ["head", "-c", str(size), "/dev/zero"], tty=False)
    t0 = time.perf_counter()
    got, buf = 0, b""
    while chunk := sock.recv(256 * 1024):
        buf += chunk
        while len(buf) >= 8:  # demultiplex, as the proxy must
            n = struct.unpack(">xxxxL", buf[:8])[0]
            if len(buf) < 8 + n:
                break
            got += n
            buf = buf[8 + n:]
    elapsed = time.perf_counter() - t0
    sock.close()
    assert got == size, (got, size)
    return elapsed


def direct_upload(api: docker.APIClient, container: str, size: int) -> float:
    sock = direct_socket(api, container, ["sh", "-c", "cat >/dev/null"], tty=False)
    block = b"\0" * (256 * 1024)
    t0 = time.perf_counter()
    for _ in range(size // len(block)):
        sock.sendall(block)
    if isinstance(sock, ssl.SSLSocket):
        # close_notify ends stdin (a bare FIN does not, over TLS); unwrap returns
        # once the engine closed its side, after the command exited.
        sock.unwrap()
    else:
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass
    elapsed = time.perf_counter() - t0
    sock.close()
    return elapsed


# --- through the proxy -------------------------------------------------------------

def proxy_echo(url: str, ticket: str, keys: int) -> list[float]:
    times = []
    with connect(url, subprotocols=subprotocols(ticket),  # type: ignore[arg-type]
                 compression=None, max_size=2**20) as ws:
        ws.send(b'\x04{"Width":80,"Height":24}')
        for _ in range(keys):
            t0 = time.perf_counter()
            ws.send(b"\x00x")
            while b"x" not in ws.recv(timeout=30)[1:]:
                pass
            times.append(time.perf_counter() - t0)
    return times


def proxy_download(url: str, ticket: str, size: int) -> float:
    sink = Sink()
    t0 = time.perf_counter()
    assert run_exec(url, ticket, io.BytesIO(), sink, sink) == 0  # type: ignore[arg-type]
    elapsed = time.perf_counter() - t0
    assert sink.n == size, (sink.n, size)
    return elapsed


def proxy_upload(url: str, ticket: str, size: int) -> float:
    data = io.BytesIO(b"\0" * size)
    t0 = time.perf_counter()
    assert run_exec(url, ticket, data, Sink(), Sink()) == 0  # type: ignore[arg-type]
    return time.perf_counter() - t0


def runtime_for(kind: str) -> dict[str, str]:
    if kind == "local":
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return {"name": "local", "type": "docker", "host": host}
    out = subprocess.run([str(REPO / "scripts" / "test-docker-host"), "up"], check=True,
                         capture_output=True, text=True).stdout
    details = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return remote_runtime(details, "tls")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", choices=["tls", "local"], default="tls")
    ap.add_argument("--keys", type=int, default=300)
    ap.add_argument("--mib", type=int, default=128)
    args = ap.parse_args()
    keys, size = min(args.keys, 10_000), min(args.mib, 2048) * MIB
    runtime = runtime_for(args.host)
    client = docker_client(parse_runtime(runtime))
    api = client.api
    key = os.urandom(32)
    rows: list[tuple[str, str, str, str]] = []
    with workspace_container(client) as ws, ProxyProcess.running(
            ProxyConfig(key=key, max_sessions_per_user=100)) as proxy:
        target = {"type": "docker", "runtime": runtime, "container": ws.name}

        def ticket(cmd: list[str], tty: bool = False) -> str:
            return mint_ticket(key, user="bench", workspace="bench/ws", target=target,
                               command=cmd, tty=tty, env={})[0]

        direct_echo(api, ws.name, 20)  # warm both paths (connections, version, TLS)
        proxy_echo(proxy.url, ticket(["cat"], tty=True), 20)
        d_echo = direct_echo(api, ws.name, keys)
        p_echo = proxy_echo(proxy.url, ticket(["cat"], tty=True), keys)
        for label, fn in (("p50", statistics.median), ("p99", lambda x: percentile(x, 99))):
            f: Callable[[list[float]], float] = fn  # type: ignore[assignment]
            d, p = f(d_echo) * 1e3, f(p_echo) * 1e3
            goal = f"{p - d:+.2f} ms" + (" (goal <= +1 ms)" if label == "p50" else "")
            rows.append((f"keystroke echo {label} (ms)", f"{d:.2f}", f"{p:.2f}", goal))
        mb = size / MIB
        d = mb / direct_download(api, ws.name, size)
        p = mb / proxy_download(proxy.url, ticket(["head", "-c", str(size), "/dev/zero"]), size)
        rows.append((f"download {mb:.0f} MiB (MiB/s)", f"{d:.0f}", f"{p:.0f}",
                     f"{p / d:.0%} of direct (goal >= 50%)"))
        d = mb / direct_upload(api, ws.name, size)
        p = mb / proxy_upload(proxy.url, ticket(["sh", "-c", "cat >/dev/null"]), size)
        rows.append((f"upload {mb:.0f} MiB (MiB/s)", f"{d:.0f}", f"{p:.0f}",
                     f"{p / d:.0%} of direct (goal >= 50%)"))
    client.close()
    header = ("metric", "direct docker", "via proxy", "proxy vs direct")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}")
    print(f"({keys} keystrokes; {os.cpu_count()} CPUs; {runtime['host']}; proxy as its own "
          "process; direct = Docker SDK exec to the same host)")


if __name__ == "__main__":
    main()
