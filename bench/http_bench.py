"""Benchmark: the HTTP server, werkzeug's development server (how the service
was served before; kept here only) against the embedded gunicorn of
`stackspace serve`, on one data dir with 200 stored workspaces, in one run.

ApacheBench (`ab`, no keep-alive) on loopback, for /healthz, one workspace and
a page of 50, at 16 and 64 concurrent clients; then the same with 256 slow
clients holding connections open (each sends half a request head and stalls,
and reconnects when cut off). Prints req/s, p50 and p99 for each: the servers
run side by side, each measurement runs on each in turn, and the median of
`--rounds` runs counts (this shared machine drifts by a third within minutes).

`--baseline REF` also serves the same data dir with the code of git ref REF
(e.g. main) under gunicorn, in the same run: before and after a change.

Run: scripts/setup && source ~/.cache/stackspace/toolchain.env && \
     .venv/bin/python bench/http_bench.py [--seconds 3] [--rounds 3] [--baseline main]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.runtime import parse_runtime, runtime_dict  # noqa: E402
from components.spec import WorkspaceSpec  # noqa: E402
from stacks.naming import stack_name  # noqa: E402

RUNTIME = {"name": "local", "type": "docker", "host": "unix:///nonexistent.sock"}
OWNER = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed(config: Path, count: int) -> str:
    """`count` settled workspaces of OWNER through the store; their token, and
    the id of an operation that stays running."""
    from service.config import load_config
    from service.store import open_store

    store = open_store(load_config(config))
    runtime = runtime_dict(parse_runtime(RUNTIME))
    for i in range(count):
        name = f"ws-{i:03d}"
        spec = WorkspaceSpec.parse({"name": name, "env": {"EDITOR": "vim", "N": str(i)}})
        store.create_workspace(OWNER, name, stack_name(OWNER, name), runtime,
                               spec.public_dict(), spec.secret_values(), quota=count)
    # Settled, so no server runs an engine for them; one stays running, leased
    # to a live replica elsewhere, for the event streams to follow.
    with store.tx() as db:
        db.execute("UPDATE operations SET status='succeeded', started=created, ended=created")
        db.execute("UPDATE workspaces SET state='running', outputs=?",
                   ('{"container": "c", "initialized": true}',))
    op = store.last_operation(OWNER, "ws-000")
    with store.tx() as db:
        db.execute("UPDATE operations SET status='running', ended=NULL, lease_owner=?,"
                   " lease_until=? WHERE id=?", ("elsewhere-1-abcdef", time.time() + 86400,
                                                 op["id"]))
    token = store.add_user(OWNER)
    store.close()
    return token, op["id"]


@dataclass(frozen=True)
class Live:
    """A server being measured."""

    kind: str
    port: int
    url: str
    config: Path
    token: str
    running_op: str
    pid: int


def werkzeug_main(config: str) -> None:
    """The service as it was served before: werkzeug's threaded dev server."""
    from werkzeug.serving import make_server

    from service.api import create_app
    from service.config import load_config
    from service.runner import OperationRunner
    from service.store import open_store
    from service.terminals import Terminals

    cfg = load_config(Path(config))
    store = open_store(cfg)
    runner = OperationRunner(store, cfg.pulumi_settings(), cfg.pool_size, runtimes=cfg.runtimes)
    runner.start()
    app = create_app(cfg, store, runner, Terminals(cfg.ticket_key, cfg.proxy_url, cfg.runtimes))
    host, _, port = cfg.listen.rpartition(":")
    server = make_server(host, int(port), app, threaded=True)
    try:
        server.serve_forever()
    finally:
        runner.shutdown()


def checkout(ref: str, into: Path) -> Path:
    """The code of git ref `ref` of this repository, exported to `into`."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


@contextlib.contextmanager
def server(kind: str, config: Path, url: str, log: Path, code: Path = REPO) -> Iterator[int]:
    """`kind` werkzeug or gunicorn serving `config`, with the code in `code`."""
    argv = [sys.executable, __file__, "--werkzeug-server", str(config)] if kind == "werkzeug" \
        else [sys.executable, "-m", "service.cli", "serve", "--config", str(config)]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=code, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONPATH": str(code)})
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"{kind} exited: see {log}"
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/healthz", timeout=2).ok:
                    break
            assert time.monotonic() < deadline, f"{kind} did not start: see {log}"
            time.sleep(0.2)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@contextlib.contextmanager
def slow_clients(port: int, count: int) -> Iterator[None]:
    """`count` connections that each send half a request head and stall;
    one cut off by the server is opened again at once."""
    stop = threading.Event()

    def run() -> None:
        sel = selectors.DefaultSelector()

        def open_one() -> None:
            with contextlib.suppress(OSError):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ)

        for _ in range(count):
            open_one()
        while not stop.is_set():
            for key, _ in sel.select(timeout=0.5):
                s = key.fileobj
                data = b""
                with contextlib.suppress(OSError):
                    data = s.recv(4096)
                if not data:
                    sel.unregister(s)
                    s.close()
                    open_one()
        for key in list(sel.get_map().values()):
            key.fileobj.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(1)
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def rss_mb(pid: int) -> float:
    """RSS of the server: the process started and its HTTP worker (not the
    runner's engine workers, which the streams do not touch)."""
    own = Path(f"/proc/{pid}/cmdline").read_bytes()
    pids = [pid] + [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                    and _read(p / "cmdline") == own and _parent(int(p.name)) == pid]
    total = 0
    for p in pids:
        status = _read(Path(f"/proc/{p}/status")).decode()
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total += int(found.group(1)) if found else 0
    return total / 1024


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _parent(pid: int) -> int:
    stat = _read(Path(f"/proc/{pid}/stat")).decode()
    return int(stat.rsplit(")", 1)[1].split()[1]) if stat else -1


def streams(port: int, config: Path, op_id: str, token: str, count: int, pid: int
            ) -> dict[str, float]:
    """`count` open SSE streams on one operation: how many the server took,
    its RSS, and how long a new event takes to reach every one of them."""
    from service.config import load_config
    from service.store import open_store

    sel = selectors.DefaultSelector()
    request = (f"GET /api/v1/operations/{op_id}/events HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode()
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(request)
        socks.append(s)
    refused, buf, ok = 0, {s: b"" for s in socks}, set()
    deadline = time.monotonic() + 60
    pending = set(socks)
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    while pending and time.monotonic() < deadline:  # every stream answered
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            with contextlib.suppress(BlockingIOError):
                buf[s] += s.recv(65536)
            if s in pending and b"\r\n" in buf[s]:
                pending.discard(s)
                if b" 200 " in buf[s].split(b"\r\n", 1)[0]:
                    ok.add(s)
                else:
                    refused += 1
    time.sleep(2)
    rss = rss_mb(pid)
    store = open_store(load_config(config))
    for s in socks:
        buf[s] = b""
    sent = time.monotonic()
    store.add_event(op_id, {"type": "diagnostic", "message": "fan-out"})
    waiting = set(ok)
    reached: list[float] = []
    deadline = time.monotonic() + 30
    while waiting and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            with contextlib.suppress(BlockingIOError, ConnectionError):
                buf[s] += s.recv(65536)
            if s in waiting and b"fan-out" in buf[s]:
                waiting.discard(s)
                reached.append(time.monotonic() - sent)
    store.close()
    for s in socks:
        sel.unregister(s)
        s.close()
    reached.sort()
    return {"opened": len(ok), "refused": refused, "rss": rss,
            "reached": len(reached),
            "p50": reached[len(reached) // 2] if reached else float("nan"),
            "max": reached[-1] if reached else float("nan")}


def ab(url: str, token: str | None, concurrency: int, seconds: float) -> dict[str, float]:
    argv = ["ab", "-q", "-t", str(seconds), "-n", "1000000", "-c", str(concurrency), "-s", "30"]
    if token:
        argv += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=False).stdout

    def number(pattern: str) -> float:
        found = re.search(pattern, out, re.MULTILINE)
        return float(found.group(1)) if found else float("nan")

    return {"rps": number(r"^Requests per second:\s+([\d.]+)"),
            "p50": number(r"^\s+50%\s+(\d+)"), "p99": number(r"^\s+99%\s+(\d+)"),
            "failed": number(r"^Failed requests:\s+(\d+)"),
            "non2xx": number(r"^Non-2xx responses:\s+(\d+)") if "Non-2xx" in out else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0, help="per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--streams", type=int, default=1000, help="open SSE streams")
    parser.add_argument("--baseline", help="also serve with the code of this git ref (before)")
    parser.add_argument("--werkzeug-server", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.werkzeug_server:
        werkzeug_main(args.werkzeug_server)
        return

    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="http-bench-"))
    os.environ.setdefault("PULUMI_CONFIG_PASSPHRASE", secrets.token_hex(8))
    # (label, server, code): the baseline is gunicorn with the ref's code.
    servers = [("werkzeug", "werkzeug", REPO), ("gunicorn", "gunicorn", REPO)]
    if args.baseline:
        servers.append((args.baseline[:9], "gunicorn", checkout(args.baseline,
                                                                tmp / "baseline")))
    rows: list[tuple[str, str, str, int, dict[str, float]]] = []
    fanout: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as running:
        # All servers at once, each on its own data dir with the same 200
        # workspaces; each measurement runs on every server in turn, `rounds`
        # times, and the median counts: a shared machine's drift weighs on
        # all of them alike.
        live: list[Live] = []
        for kind, program, code in servers:
            port = free_port()
            config = tmp / kind / "stackspace.yaml"
            config.parent.mkdir(parents=True)
            config.write_text(yaml.safe_dump({
                "data_dir": str(tmp / kind / "data"), "listen": f"127.0.0.1:{port}",
                "proxy_listen": f"127.0.0.1:{free_port()}", "runtimes": [RUNTIME],
                "pool_size": 1, "quota": 1000, "http": {"streams": args.streams}}))
            token, running_op = seed(config, 200)
            url = f"http://127.0.0.1:{port}"
            pid = running.enter_context(server(program, config, url, tmp / f"{kind}.log", code))
            live.append(Live(kind, port, url, config, token, running_op, pid))
        targets = [("/healthz", "/healthz", False),
                   ("one workspace", "/api/v1/workspaces/ws-123", True),
                   ("page of 50", "/api/v1/workspaces?limit=50", True)]
        for srv in live:  # warm: caches filled, threads made
            for _, path, auth in targets:
                ab(srv.url + path, srv.token if auth else None, 16, 1)
        for load in ("", "256 slow"):
            with contextlib.ExitStack() as slow:
                for srv in live if load else []:
                    slow.enter_context(slow_clients(srv.port, 256))
                for label, path, auth in targets:
                    for concurrency in (16, 64):
                        runs: dict[str, list[dict[str, float]]] = {srv.kind: [] for srv in live}
                        for _ in range(args.rounds):
                            for srv in live:
                                runs[srv.kind].append(ab(srv.url + path, srv.token if auth
                                                         else None, concurrency, args.seconds))
                        for srv in live:
                            r = sorted(runs[srv.kind], key=lambda x: x["rps"])[args.rounds // 2]
                            rows.append((srv.kind, load, label, concurrency, r))
                            print(f"{srv.kind:<9} {load:<9} {label:<14} c={concurrency:<3} "
                                  f"{r['rps']:8.0f} req/s (median of "
                                  f"{[round(x['rps']) for x in runs[srv.kind]]})",
                                  file=sys.stderr, flush=True)
        # Last, one server at a time: 1,000 streams leave a process busier for
        # a while after they end (their threads unwinding).
        for srv in live:
            fanout[srv.kind] = streams(srv.port, srv.config, srv.running_op, srv.token,
                                       args.streams, srv.pid)
            print(f"{srv.kind:<9} streams {fanout[srv.kind]}", file=sys.stderr, flush=True)

    print(f"\nHTTP serving, 200 workspaces stored, ab without keep-alive, "
          f"median of {args.rounds} runs of {args.seconds:.0f} s, servers in turn, "
          f"{os.cpu_count()} CPUs; load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (a shared machine)\n")
    print(f"{'server':<9} {'load':<9} {'endpoint':<14} {'c':>3} {'req/s':>8} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'failed':>7} {'non-2xx':>8}")
    for kind, load, label, concurrency, r in rows:
        print(f"{kind:<9} {load or '-':<9} {label:<14} {concurrency:>3} {r['rps']:>8.0f} "
              f"{r['p50']:>7.0f} {r['p99']:>7.0f} {r['failed']:>7.0f} {r['non2xx']:>8.0f}")
    print(f"\n{args.streams} SSE streams on one operation, then one new event:")
    print(f"{'server':<9} {'opened':>7} {'refused':>8} {'RSS MB':>7} {'reached':>8} "
          f"{'p50 s':>6} {'max s':>6}")
    for kind, f in fanout.items():
        print(f"{kind:<9} {f['opened']:>7.0f} {f['refused']:>8.0f} {f['rss']:>7.0f} "
              f"{f['reached']:>8.0f} {f['p50']:>6.2f} {f['max']:>6.2f}")
    by = {(k, ld, lb, c): r["rps"] for k, ld, lb, c, r in rows}
    for kind, _, _ in servers[1:]:
        for load in ("", "256 slow"):
            health = by[(kind, load, "/healthz", 64)]
            print(f"\ngoals, {kind} ({load or 'no slow clients'}, c=64): /healthz "
                  f"against werkzeug {health / by[('werkzeug', load, '/healthz', 64)]:.2f}x"
                  f" (>= 2); one workspace / its /healthz "
                  f"{by[(kind, load, 'one workspace', 64)] / health:.2f} (>= 0.7); "
                  f"page of 50 / its /healthz "
                  f"{by[(kind, load, 'page of 50', 64)] / health:.2f} (>= 0.35)")


if __name__ == "__main__":
    main()
