"""Benchmark: workspace lifecycle through the stackspace service vs. the raw floor.

Measured in one run, on the local Docker Engine (DOCKER_HOST):
  - raw floor: the same Docker objects (volume, init container run to exit,
    workspace container) made directly with the Docker SDK;
  - empty `pulumi up`: an up of an unchanged workspace stack (the engine's
    fixed cost per operation);
  - stackspace: create / stop / start through the HTTP API until the
    operation has succeeded;
  - N concurrent creates (N = 1, 4, 16): wall time, p50/p95 per workspace,
    peak RSS of the service process tree.
Run: scripts/setup && source ~/.cache/stackspace/toolchain.env && \
     DOCKER_HOST=$(scripts/docker-engine up | tail -1) .venv/bin/python bench/service_bench.py
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import docker
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.docker import INIT_INPUT_PREFIX  # noqa: E402
from components.init_script import INIT_SCRIPT, init_inputs  # noqa: E402
from components.spec import DEFAULT_IMAGE, WorkspaceSpec  # noqa: E402
from service.store import Store  # noqa: E402
from stacks.automation import StackRunner  # noqa: E402
from stacks.settings import PulumiSettings, StackFiles  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss(pid: int) -> tuple[int, dict[str, int], int]:
    """RSS in bytes of a process and all its descendants, RSS by program name,
    and PSS (shared pages, e.g. the text of concurrent CLI processes, counted
    once across the tree rather than once per process)."""
    total, stack, by_name, pss = 0, [pid], {}, 0
    while stack:
        p = stack.pop()
        try:
            name = Path(f"/proc/{p}/comm").read_text().strip()
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                    total += rss
                    by_name[name] = by_name.get(name, 0) + rss
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total, by_name, pss


class Service:
    def __init__(self, tmp: Path, docker_host: str, pool: int,
                 runtimes: list[dict] | None = None):
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.last_op: dict = {}  # the operation `run` waited for last
        cfg = tmp / "stackspace.yaml"
        cfg.write_text(yaml.safe_dump({
            "data_dir": str(tmp / "data"), "listen": f"127.0.0.1:{self.port}",
            "pool_size": pool, "quota": 100,
            "runtimes": runtimes or [{"name": "local", "type": "docker", "host": docker_host,
                                      "network_mode": "none"}]}))
        env = {**os.environ, "STACKSPACE_ADMIN_TOKEN": self.token,
               "PULUMI_CONFIG_PASSPHRASE": "bench", "STACKSPACE_LOG_LEVEL": "WARNING"}
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--config",
                                      str(cfg)], cwd=REPO, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.data = tmp / "data"
        for _ in range(200):
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        self.peak = 0
        self.peak_by_name: dict[str, int] = {}
        self.peak_pss = 0
        self.poll = 0.1  # seconds between status polls of one operation
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            total, by_name, pss = tree_rss(self.proc.pid)
            self.peak_pss = max(self.peak_pss, pss)
            if total > self.peak:
                self.peak, self.peak_by_name = total, by_name
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def run(self, method: str, path: str, body: dict | None = None) -> float:
        """Send one request and wait for its operation; seconds until it succeeded."""
        t = time.monotonic()
        auth = {"Authorization": f"Bearer {self.token}"}
        op = requests.request(method, self.url + path, json=body, headers=auth, timeout=30).json()
        while op["status"] in ("queued", "running"):
            time.sleep(self.poll)
            op = requests.get(f"{self.url}/operations/{op['id']}", headers=auth,
                              timeout=30).json()
        self.last_op = op
        if op["status"] != "succeeded":
            raise RuntimeError(f"{method} {path}: {op['status']} {op.get('error')}")
        return time.monotonic() - t

    def close(self) -> None:
        self._stop.set()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def raw_floor(client: docker.DockerClient) -> dict[str, float]:
    """The same objects the Docker component makes, straight through the Docker SDK."""
    name = f"raw-{secrets.token_hex(3)}"
    hardening = {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"],
                 "user": "1000:1000", "network_mode": "none"}
    mounts = [docker.types.Mount("/workspace", f"{name}-home", type="volume")]
    t = time.monotonic()
    client.volumes.create(f"{name}-home")
    init = client.containers.run(DEFAULT_IMAGE, ["/bin/sh", "-c", INIT_SCRIPT], detach=True,
                                 environment=init_inputs(WorkspaceSpec.parse({"name": name}),
                                                         INIT_INPUT_PREFIX, True).env,
                                 mounts=mounts,
                                 name=f"{name}-init", **hardening)
    assert init.wait()["StatusCode"] == 0

    def start() -> None:
        client.containers.run(DEFAULT_IMAGE, ["sleep", "infinity"], detach=True, init=True,
                              mounts=mounts, name=name, mem_limit="1g", **hardening)

    start()
    out = {"create": time.monotonic() - t}
    t = time.monotonic()
    client.containers.get(name).remove(force=True)
    out["stop"] = time.monotonic() - t
    t = time.monotonic()
    start()
    out["start"] = time.monotonic() - t
    client.containers.get(name).remove(force=True)
    init.remove()
    client.volumes.get(f"{name}-home").remove()
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--pool", type=int, default=None, help="worker pool size")
    args = parser.parse_args()
    docker_host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    client = docker.DockerClient(base_url=docker_host)
    rows: list[tuple[str, str, str]] = []
    pool = args.pool or max(2, os.cpu_count() or 2)

    with tempfile.TemporaryDirectory(prefix="stackspace-bench-") as tmp:
        floor = raw_floor(client)
        svc = Service(Path(tmp), docker_host, pool)
        try:
            name = "bench-one"
            timing, phases = {}, {}
            for kind, path, body in (("create", "/workspaces", {"name": name}),
                                     ("stop", f"/workspaces/{name}/stop", None),
                                     ("start", f"/workspaces/{name}/start", None)):
                timing[kind] = svc.run("POST", path, body)
                phases[kind] = dict(svc.last_op.get("timings") or {})
                op = svc.last_op
                phases[kind]["queued"] = op["started"] - op["created"]
            # Empty up: the same stack, nothing to change.
            settings = PulumiSettings(
                backend_url=f"file://{svc.data / 'state'}", passphrase="bench",
                pulumi_home=Path(os.environ.get("PULUMI_HOME", "")),
                bin_dir=Path(os.environ["STACKSPACE_PULUMI_BIN"]))
            runner = StackRunner(settings)
            # The stack's settings live in the service's store, not the checkout.
            ws = Store(svc.data / "stackspace.db").workspace("admin", name)
            stack = ws["stack"]
            runner.use(StackFiles(settings.pulumi_home, stack, ws["stack_settings"]))
            t = time.monotonic()
            # The operator's `pulumi up` of the same stack (local program, no changes).
            runner.stack(stack).up(color="never", suppress_progress=True)
            empty_up = time.monotonic() - t
            for kind in ("create", "stop", "start"):
                goal = {"create": 1.3, "stop": 1.15, "start": 1.15}[kind]
                moon = {"create": 2.0, "stop": 1.5, "start": 1.5}[kind]
                rows.append((f"{kind} (time to done)", f"{floor[kind]:.2f}s",
                             f"{timing[kind]:.2f}s = {timing[kind] / empty_up:.2f} x empty up"
                             f" {empty_up:.2f}s (goal <= {goal}x; moonshot <= {moon:.1f}s)"))
            svc.run("DELETE", f"/workspaces/{name}")

            conc_rows = []
            for n in [int(x) for x in args.concurrency.split(",")]:
                svc.peak = svc.peak_pss = 0
                # n clients polling every 0.1 s would load the service more than
                # the runs do: poll as often as the SSE stream reports (0.5 s).
                svc.poll = 0.1 if n == 1 else 0.5
                times: list[float] = []
                names = [f"c{n}-{i}" for i in range(n)]
                t = time.monotonic()
                threads = [threading.Thread(target=lambda w=w, out=times: out.append(
                    svc.run("POST", "/workspaces", {"name": w}))) for w in names]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                wall = time.monotonic() - t
                conc_rows.append((n, wall, statistics.median(times), pct(times, 0.95),
                                  svc.peak / 2**20, dict(svc.peak_by_name),
                                  svc.peak_pss / 2**20))
                svc.poll = 0.1
                for th in [threading.Thread(target=lambda w=w: svc.run(
                        "DELETE", f"/workspaces/{w}")) for w in names]:
                    th.start()
                    th.join()
        finally:
            svc.close()

    print(f"\nstackspace service vs raw floor (Docker Engine, pool={pool}, {os.cpu_count()} CPUs)")
    print(f"{'operation':<24}{'raw Docker SDK':>16}   {'stackspace service'}")
    for op, raw, ours in rows:
        print(f"{op:<24}{raw:>16}   {ours}")
    print("\nwhere the worker spent it (operation timings, seconds)")
    for kind, t in phases.items():
        print(f"  {kind:<8}" + "  ".join(f"{k} {v:.2f}" for k, v in t.items()))
    print(f"\n{'concurrent creates':<20}{'wall':>9}{'p50':>9}{'p95':>9}{'peak RSS':>12}")
    for n, wall, p50, p95, peak, by_name, pss in conc_rows:
        print(f"{n:<20}{wall:>8.1f}s{p50:>8.1f}s{p95:>8.1f}s{peak:>10.0f}MB   "
              f"(goal: wall <= 8 x single create = {8 * timing['create']:.1f}s, RSS <= 600MB)")
        parts = sorted(by_name.items(), key=lambda kv: -kv[1])
        print(f"    peak PSS {pss:.0f}MB; RSS at peak: "
              + ", ".join(f"{k} {v / 2**20:.0f}MB" for k, v in parts))


if __name__ == "__main__":
    main()
