"""Port forwarding through the exec proxy against the raw floor, in the same run.

A BusyBox workspace container on local Docker (bridge network, so the floor, a
direct connection to the container's IP, exists) serves a file over httpd and
echoes over ``nc -ll -e cat``. The same requests go directly to the container
IP and through ``stackspace port-forward``'s client (service.forward_client)
-> the proxy (its own process) -> the relay exec'd in the workspace. Tickets
are minted locally (the service's POST adds one HTTP round trip per new
connection, and the client fetches one ahead).

    DOCKER_HOST=unix://... .venv/bin/python bench/portforward_bench.py [--mib 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402

from proxy.protocol import forward_url  # noqa: E402
from proxy.server import ProxyConfig  # noqa: E402
from proxy.tickets import mint_ticket  # noqa: E402
from service.forward_client import PortSpec, serve_forwards  # noqa: E402
from tests.e2e.busybox_image import busybox_image  # noqa: E402
from tests.e2e.exec_fixtures import ProxyProcess, docker_target  # noqa: E402

HTTP, ECHO = 8080, 7007
SERVE = (f"mkdir -p /tmp/www && head -c $(($1 * 1048576)) /dev/urandom > /tmp/www/big && "
         f"echo hi > /tmp/www/small && httpd -p {HTTP} -h /tmp/www && "
         f"exec nc -ll -p {ECHO} -e cat")


def p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as resp:  # noqa: S310 - http:// only
        return resp.read()


def throughput(host: str, port: int, size: int, runs: int) -> float:
    best = 0.0
    for _ in range(runs):
        t = time.perf_counter()
        assert len(get(f"http://{host}:{port}/big")) == size
        best = max(best, size / (time.perf_counter() - t) / 2**20)
    return best


def connect_latency(host: str, port: int, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        assert get(f"http://{host}:{port}/small") == b"hi\n"
        times.append(time.perf_counter() - t)
    return times


def echo_latency(host: str, port: int, n: int) -> list[float]:
    times = []
    with socket.create_connection((host, port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = b"x" * 64
        for _ in range(n + 20):
            t = time.perf_counter()
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += s.recv(4096)
            times.append(time.perf_counter() - t)
    return times[20:]  # the first round trips include the relay's start


def exec_floor(container: str, size: int) -> float:
    """The same GET through `docker exec -i CONTAINER nc` (the relay without the proxy)."""
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        out = subprocess.run(["docker", "exec", "-i", container, "nc", "127.0.0.1", str(HTTP)],
                             input=b"GET /big HTTP/1.0\r\n\r\n", capture_output=True,
                             check=True).stdout
        assert len(out) > size
        best = max(best, size / (time.perf_counter() - t) / 2**20)
    return best


def start_forwarder(key: bytes, url: str, target: dict) -> dict[int, int]:
    """The CLI's forwarding loop in a thread; returns {remote: local port}."""
    ports: dict[int, int] = {}
    ready = threading.Event()

    def fetch(remote: int):
        return lambda: dict(zip(("ticket", "expires_at"), mint_ticket(
            key, user="bench", workspace="bench/pf", target=target, command=[], tty=False,
            kind="forward", port=remote), strict=True), url=forward_url(url))

    def announce(line: str) -> None:
        local, remote = line.split("127.0.0.1:")[1].split(" -> ")
        ports[int(remote)] = int(local)
        if len(ports) == 2:
            ready.set()

    specs = [(PortSpec(0, r), fetch(r)) for r in (HTTP, ECHO)]
    threading.Thread(target=lambda: asyncio.run(serve_forwards(
        "127.0.0.1", specs, announce, print)), daemon=True).start()
    assert ready.wait(30)
    return ports


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    client = docker.DockerClient(base_url=host)
    key = os.urandom(32)
    container = client.containers.run(
        busybox_image(client), ["sh", "-c", SERVE, "sh", str(args.mib)],
        name=f"stackspace-pf-bench-{secrets.token_hex(3)}", user="1000", init=True,
        cap_drop=["ALL"], detach=True, labels={"stackspace.dev/test": "pf-bench"})
    try:
        container.reload()
        ip = container.attrs["NetworkSettings"]["IPAddress"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                get(f"http://{ip}:{HTTP}/small")
                break
            except OSError:
                time.sleep(0.2)
        with ProxyProcess.running(ProxyConfig(key=key)) as proxy:
            ports = start_forwarder(key, proxy.url, docker_target(host, container))
            size = args.mib * 2**20
            rows = []
            for label, h, http, echo in (("direct (container IP)", ip, HTTP, ECHO),
                                         ("port-forward", "127.0.0.1", ports[HTTP], ports[ECHO])):
                mib_s = throughput(h, http, size, 3)
                conn = connect_latency(h, http, args.requests)
                rtt = echo_latency(h, echo, 1000)
                rows.append((label, mib_s, statistics.median(conn) * 1000, p(conn, 0.99),
                              statistics.median(rtt) * 1000, p(rtt, 0.99)))
            relay = exec_floor(container.name, size) if shutil.which("docker") else None
        print(f"\nport forward, local Docker, {args.mib} MiB GET (best of 3), "
              f"{args.requests} new-connection GETs, 1000 echo round trips (64 B)")
        print(f"{'path':<24}{'MiB/s':>9}{'conn p50':>10}{'conn p99':>10}"
              f"{'rtt p50':>9}{'rtt p99':>9}   (ms)")
        for label, mib_s, c50, c99, r50, r99 in rows:
            print(f"{label:<24}{mib_s:>9.1f}{c50:>10.2f}{c99:>10.2f}{r50:>9.3f}{r99:>9.3f}")
        if relay is not None:  # what the relay's own exec stream carries, no proxy
            print(f"{'docker exec -i nc (CLI)':<24}{relay:>9.1f}")
    finally:
        container.remove(force=True)


if __name__ == "__main__":
    main()
