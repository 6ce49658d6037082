"""Benchmark: create throughput with 1 vs 2 service replicas on one PostgreSQL,
and the latency of `GET /workspaces` under a steady 200 requests/s meanwhile.

Each replica is a real `stackspace serve` process; all share one PostgreSQL
store (a fresh database on the harness's server, `scripts/test-postgres`), one
Pulumi backend (`postgres://` DIY backend on the same server, or
`--backend file` for a shared directory) and one secrets directory. The
creates are spread round-robin over the replicas' APIs, as a load balancer
would; the reads are spread the same way.

This machine has 2 cores: the replicas, their engines and the load generator
share them, so a second replica adds parallel dispatch, not CPU. What the
table shows is whether replicas scale without contention in the shared state
(leases, row locks, the backend), not the throughput of 2 machines.

Run: scripts/setup && source ~/.cache/stackspace/toolchain.env && \
     DOCKER_HOST=$(scripts/docker-engine up | tail -1) .venv/bin/python bench/scale_bench.py
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from service_bench import free_port, pct, tree_rss  # noqa: E402


def postgres_server() -> str:
    out = subprocess.run([str(REPO / "scripts" / "test-postgres"), "up"], check=True,
                         capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def new_database(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def tree_cpu(pid: int) -> float:
    """CPU seconds used by a process and all its descendants so far, the exited
    ones included (a parent's cutime/cstime holds the children it waited for)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


def database_activity(url: str) -> tuple[int, int]:
    """(committed transactions, rows written) of one database so far."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit, tup_inserted + tup_updated + tup_deleted"
                           " FROM pg_stat_database WHERE datname = current_database()"
                           ).fetchone()
    return int(row[0]), int(row[1])


def backend_size(url: str) -> tuple[int, int]:
    """(rows, bytes) the postgres:// Pulumi backend holds in its table."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('pulumi_state')").fetchone()[0] is None:
            return 0, 0
        row = conn.execute("SELECT count(*), coalesce(sum(octet_length(data::text)), 0)"
                           " FROM pulumi_state").fetchone()
    return int(row[0]), int(row[1])


class Replica:
    """One `stackspace serve` process on the shared state."""

    def __init__(self, tmp: Path, index: int, shared: dict, token: str, pool: int):
        self.port = free_port()
        self.token = token
        data = tmp / f"replica-{index}"
        cfg = tmp / f"replica-{index}.yaml"
        cfg.write_text(yaml.safe_dump({
            **shared, "data_dir": str(data), "listen": f"127.0.0.1:{self.port}",
            "pool_size": pool, "quota": 1000}))
        env = {**os.environ, "STACKSPACE_ADMIN_TOKEN": token,
               "PULUMI_CONFIG_PASSPHRASE": "bench", "STACKSPACE_LOG_LEVEL": "WARNING",
               "STACKSPACE_REPLICA_ID": f"bench-{index}"}
        self.log = tmp / f"replica-{index}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve",
                                          "--config", str(cfg)], cwd=REPO, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"replica {index} did not answer /healthz:\n"
                           + self.log.read_text()[-3000:])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


class Session:
    """HTTP calls with one requests.Session per thread."""

    def __init__(self, token: str):
        self.auth = {"Authorization": f"Bearer {token}"}
        self.local = threading.local()

    def call(self, method: str, url: str, body: dict | None = None) -> requests.Response:
        if not hasattr(self.local, "s"):
            self.local.s = requests.Session()
        return self.local.s.request(method, url, json=body, headers=self.auth, timeout=30)

    def operation(self, method: str, url: str, api: str, body: dict | None = None) -> dict:
        op = self.call(method, url, body).json()
        while op.get("status") in ("queued", "running"):
            time.sleep(0.2)
            op = self.call("GET", f"{api}/operations/{op['id']}").json()
        return op


class ReadLoad:
    """Open-loop `GET /workspaces` at a fixed rate: a request is sent on schedule
    whether or not earlier ones have answered, so a slow server shows up as
    latency rather than as a lower rate."""

    def __init__(self, http: Session, urls: list[str], rate: float):
        self.http, self.urls, self.rate = http, urls, rate
        self.latencies: list[float] = []
        self.errors = 0
        self.sent = 0
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=64)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, url: str) -> None:
        t = time.monotonic()
        try:
            ok = self.http.call("GET", url).status_code == 200
        except requests.RequestException:
            ok = False
        if ok:
            self.latencies.append(time.monotonic() - t)
        else:
            self.errors += 1

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            due = start + self.sent / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._pool.submit(self._one, f"{self.urls[self.sent % len(self.urls)]}/workspaces")
            self.sent += 1

    def start(self) -> None:
        if self.rate > 0:  # --rate 0: creates alone, for their own cost
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._pool.shutdown(wait=True)


def run_round(tmp: Path, server: str, replicas: int, creates: int, pool: int, rate: float,
              backend: str, docker_host: str) -> dict:
    db_name = f"bench_{secrets.token_hex(4)}"
    url = new_database(server, db_name)
    backend_url = (url.replace("postgresql://", "postgres://", 1) + "?sslmode=disable"
                   if backend == "postgres" else f"file://{tmp / 'state'}")
    (tmp / "state").mkdir(exist_ok=True)
    shared = {"database_url": url, "secrets_dir": str(tmp / "secrets"),
              "backend_url": backend_url,
              "runtimes": [{"name": "local", "type": "docker", "host": docker_host,
                            "network_mode": "none"}]}
    token = secrets.token_hex(16)
    procs: list[Replica] = []
    try:
        for i in range(replicas):
            procs.append(Replica(tmp, i, shared, token, pool))
        http = Session(token)
        apis = [r.url for r in procs]
        peak = 0
        sampling = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not sampling.is_set():
                peak = max(peak, sum(tree_rss(r.proc.pid)[0] for r in procs))
                time.sleep(0.2)

        threading.Thread(target=sample, daemon=True).start()
        load = ReadLoad(http, apis, rate)
        load.start()
        names = [f"s{replicas}-{i}" for i in range(creates)]
        cpu0 = sum(tree_cpu(r.proc.pid) for r in procs)
        db0 = database_activity(url)
        t = time.monotonic()
        with ThreadPoolExecutor(max_workers=creates) as ex:
            ops = list(ex.map(lambda i: http.operation(
                "POST", f"{apis[i % len(apis)]}/workspaces", apis[i % len(apis)],
                {"name": names[i]}), range(creates)))
        wall = time.monotonic() - t
        cpu = sum(tree_cpu(r.proc.pid) for r in procs) - cpu0
        db1 = database_activity(url)
        state_rows, state_bytes = backend_size(url)
        load.stop()
        sampling.set()
        failed = [op for op in ops if op.get("status") != "succeeded"]
        for op in failed:
            print(f"failed: {op.get('status')} {op.get('error_type')}: "
                  f"{str(op.get('error'))[:300]}", file=sys.stderr)
        with ThreadPoolExecutor(max_workers=creates) as ex:
            list(ex.map(lambda i: http.operation(
                "DELETE", f"{apis[i % len(apis)]}/workspaces/{names[i]}",
                apis[i % len(apis)]), range(creates)))
        lat = load.latencies
        return {"replicas": replicas, "wall": wall, "per_min": creates / wall * 60,
                "failed": len(failed), "sent": load.sent, "errors": load.errors,
                "p50": pct(lat, 0.50) if lat else float("nan"),
                "p99": pct(lat, 0.99) if lat else float("nan"),
                "rate": load.sent / wall, "peak": peak / 2**20,
                # Per create; the reads' share is in these too (same processes, same DB).
                "cpu": cpu / creates, "xacts": (db1[0] - db0[0]) / creates,
                "rows": (db1[1] - db0[1]) / creates,
                "state_kb": state_bytes / creates / 1024, "state_rows": state_rows / creates}
    finally:
        for r in procs:
            r.close()
        drop_database(server, db_name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--creates", type=int, default=16)
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--pool", type=int, default=2, help="worker pool size per replica")
    parser.add_argument("--rate", type=float, default=200.0, help="GET /workspaces per second")
    parser.add_argument("--backend", choices=("postgres", "file"), default="postgres")
    args = parser.parse_args()
    docker_host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    server = postgres_server()
    rows = []
    for n in [int(x) for x in args.replicas.split(",")]:
        with tempfile.TemporaryDirectory(prefix="stackspace-scale-") as tmp:
            rows.append(run_round(Path(tmp), server, n, args.creates, args.pool, args.rate,
                                  args.backend, docker_host))
    print(f"\n{args.creates} creates spread over N replicas (pool {args.pool} each, "
          f"{args.backend} backend, {os.cpu_count()} CPUs), GET /workspaces at "
          f"{args.rate:.0f}/s meanwhile")
    print(f"{'replicas':<10}{'wall':>8}{'creates/min':>13}{'failed':>8}"
          f"{'GET sent/s':>12}{'GET p50':>9}{'GET p99':>9}{'GET errs':>10}{'peak RSS':>10}")
    for r in rows:
        print(f"{r['replicas']:<10}{r['wall']:>7.1f}s{r['per_min']:>13.1f}{r['failed']:>8}"
              f"{r['rate']:>12.0f}{r['p50'] * 1000:>7.0f}ms{r['p99'] * 1000:>7.0f}ms"
              f"{r['errors']:>10}{r['peak']:>8.0f}MB")
    print("\nper create, same runs (the reads' share included): CPU of the replica trees, "
          "database transactions and rows written (store + backend), backend state kept")
    print(f"{'replicas':<10}{'CPU-s':>8}{'DB xacts':>10}{'DB rows':>9}{'state rows':>12}"
          f"{'state KB':>10}")
    for r in rows:
        print(f"{r['replicas']:<10}{r['cpu']:>8.1f}{r['xacts']:>10.0f}{r['rows']:>9.0f}"
              f"{r['state_rows']:>12.1f}{r['state_kb']:>10.1f}")


if __name__ == "__main__":
    main()
