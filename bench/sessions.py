"""Reconnect-to-first-byte of a session after a dropped connection, against the
raw floor in the same run (loopback, local Docker Engine or the TLS test host).

    .venv/bin/python bench/sessions.py [--host local|tls] [--rounds 30]

Each round: a line is sent to a session running ``cat`` and the connection is
dropped before its echo is read (a TCP shutdown, no close frame); then the
client reattaches with a new ticket at its offset, and the time to the first
replayed byte is measured. Rows:

- reattach (session): new WebSocket + the proxy's exec of the helper's attach +
  the replay (the client's HTTP ticket request is not included);
- fresh exec through the proxy (a plain exec, no session);
- raw floor: a direct Docker Engine exec (Docker SDK) to its first byte.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from websockets.sync.client import connect  # noqa: E402

from bench.exec_proxy import direct_socket, percentile, runtime_for  # noqa: E402
from components.clients import docker_client  # noqa: E402
from components.runtime import parse_runtime  # noqa: E402
from proxy.protocol import SESSION, STDIN, STDOUT, subprotocols  # noqa: E402
from proxy.server import ProxyConfig  # noqa: E402
from proxy.tickets import mint_ticket  # noqa: E402
from tests.e2e.exec_fixtures import ProxyProcess, workspace_container  # noqa: E402

KEY = b"k" * 32


def open_ws(url: str, ticket: str, offset: int = 0):
    return connect(f"{url}?offset={offset}" if offset else url,
                   subprotocols=subprotocols(ticket),  # type: ignore[arg-type]
                   max_size=2**20, compression=None, legacy=True, open_timeout=30)


def first_output(ws) -> tuple[dict, bytes]:
    """The session info (if any) and the first output bytes."""
    info: dict = {}
    while True:
        msg = ws.recv(timeout=30)
        if msg[0] == SESSION:
            info = json.loads(msg[1:])
        elif msg[0] == STDOUT:
            return info, msg[1:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", choices=["local", "tls"], default="local")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    runtime = runtime_for(args.host)
    client = docker_client(parse_runtime(runtime))
    with workspace_container(client) as container, \
            ProxyProcess.running(ProxyConfig(key=KEY)) as proxy:
        target = {"type": "docker", "runtime": runtime, "container": container.name}

        def ticket(command: list[str], session: dict | None = None) -> str:
            return mint_ticket(KEY, user="bench", workspace="bench/ws", target=target,
                               command=command, tty=False, session=session)[0]

        ws = open_ws(proxy.url, ticket(["sh", "-c", "echo ready; exec cat"],
                                       {"mode": "start"}))
        info, data = first_output(ws)
        sid, received = info["session"], info["offset"] + len(data)
        reattach: list[float] = []
        for i in range(args.rounds + 3):
            line = f"ping-{i}\n".encode()
            ws.send(bytes([STDIN]) + line)
            ws.socket.shutdown(socket.SHUT_RDWR)  # dropped: no close frame
            ws.close()
            t0 = time.perf_counter()
            ws = open_ws(proxy.url, ticket(["attach"], {"mode": "attach", "id": sid}),
                         received)
            info, data = first_output(ws)
            elapsed = time.perf_counter() - t0
            assert info["offset"] == received, (info, received)
            while len(data) < len(line):  # the echo may come in two frames
                data += first_output(ws)[1]
            assert data == line, data
            received += len(data)
            if i >= 3:  # the first rounds warm the helper install and the pools
                reattach.append(elapsed)
        ws.close()

        fresh: list[float] = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            with open_ws(proxy.url, ticket(["echo", "x"])) as plain:
                first_output(plain)
            fresh.append(time.perf_counter() - t0)

        api = client.api
        direct: list[float] = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            sock = direct_socket(api, container.name, ["echo", "x"], tty=False)
            sock.recv(64)
            direct.append(time.perf_counter() - t0)
            sock.close()

    print(f"\nreconnect-to-first-byte, {args.host} Docker, {args.rounds} rounds (ms)\n")
    print(f"{'path':<44} {'p50':>8} {'p90':>8} {'mean':>8}")
    for name, xs in (("reattach a dropped session (replay)", reattach),
                     ("fresh exec through the proxy (no session)", fresh),
                     ("raw floor: direct Docker exec (SDK)", direct)):
        print(f"{name:<44} {percentile(xs, 50) * 1e3:8.1f} {percentile(xs, 90) * 1e3:8.1f} "
              f"{statistics.mean(xs) * 1e3:8.1f}")


if __name__ == "__main__":
    main()
