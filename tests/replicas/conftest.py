"""N service replicas and N exec proxies on one database (SPEC §9), started as
an operator would: three `stackspace serve` processes sharing one store
(PostgreSQL, or one SQLite file), secrets and Pulumi backend, and two proxies
(`stackspace proxy` and `python -m proxy`) redeeming tickets in that same
database."""

from __future__ import annotations

import contextlib
import functools
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service.store import Store
from tests.conftest import create_database, drop_database
from tests.faults.conftest import cleanup
from tests.faults.engine import DockerView
from tests.faults.harness import REPO, LiveService, free_port

LEASE_SECONDS = 3.0  # short, so a dead replica's operation is taken over soon


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class ProxyReplica:
    """One exec proxy process on a loopback port."""

    args: list[str]
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/exec"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([*self.args, "--listen", f"127.0.0.1:{self.port}"],
                                         cwd=REPO, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not _accepts(self.port):
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "proxy did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Replicas:
    services: list[LiveService]
    proxies: list[ProxyReplica]
    database_url: str
    ids: list[str]

    @functools.cached_property
    def shared_store(self) -> Store:
        return Store(self.database_url)

    def store(self) -> Store:
        """The shared store, read the way a replica reads it."""
        return self.shared_store

    def api(self, i: int) -> LiveService:
        """Replica `i` (modulo their number): spreads requests like a load balancer."""
        return self.services[i % len(self.services)]

    def index_of(self, replica_id: str | None) -> int:
        return self.ids.index(replica_id or "")


@contextlib.contextmanager
def replica_set(tmp: Path, runtimes: list[dict], pulumi_bin: Path, pulumi_home: Path,
                engine: DockerView, database_url: str | None = None, n_services: int = 3
                ) -> Iterator[Replicas]:
    """`n_services` replicas on `database_url` (None: one SQLite file)."""
    shared = tmp / "shared"
    topic = secrets.token_hex(3)
    ids = [f"replicas-{topic}-{i}" for i in range(n_services)]
    token, passphrase = secrets.token_hex(16), "replicas-" + secrets.token_hex(8)
    proxy_port = free_port()
    store = {"database_url": database_url} if database_url else {}
    services = [LiveService(tmp / f"replica-{i}", runtimes, quota=40, pulumi_bin=pulumi_bin,
                            pulumi_home=pulumi_home, token=token, proxy_port=proxy_port,
                            settings={"data_dir": str(shared), "passphrase": passphrase,
                                      "replica_id": ids[i], "lease_seconds": LEASE_SECONDS,
                                      "pool_size": 2, **store})
                for i in range(n_services)]
    database_url = database_url or str(shared / "stackspace.db")
    proxies: list[ProxyReplica] = []
    try:
        for svc in services:
            svc.data_dir = shared  # what the operator's `pulumi` sees (LiveService.pulumi)
            svc.start("serve")
        env = {k: v for k, v in services[0].env.items() if k != "STACKSPACE_TICKET_KEY"}
        proxies = [
            ProxyReplica([sys.executable, "-m", "service.cli", "proxy", "--config",
                          str(services[0].config), "--database-url", database_url],
                         env, tmp / "proxy-0.log"),
            ProxyReplica([sys.executable, "-m", "proxy", "--key-file",
                          str(shared / "ticket-key"), "--database-url", database_url],
                         {**env, "PYTHONPATH": str(REPO)}, tmp / "proxy-1.log")]
        for proxy in proxies:
            proxy.start()
        replicas = Replicas(services, proxies, database_url, ids)
        yield replicas
        replicas.store().close()
    finally:
        for proxy in proxies:
            proxy.stop()
        with contextlib.suppress(Exception):
            cleanup(next(s for s in services if s.proc and s.proc.poll() is None), engine)
        for svc in services:
            svc.stop()


@pytest.fixture(scope="module")
def docker_view(docker_client) -> DockerView:
    return DockerView(docker_client)


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def replicas(request, tmp_path_factory, docker_host, pulumi_bin, pulumi_home, docker_provider,
             docker_view) -> Iterator[Replicas]:
    """The replica set on a fresh PostgreSQL database (dropped after), or on SQLite."""
    runtimes = [{"name": "local", "type": "docker", "host": docker_host,
                 "network_mode": "none"}]
    server = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    database_url = create_database(server, "replicas") if server else None
    try:
        with replica_set(tmp_path_factory.mktemp(f"replicas-{request.param}"), runtimes,
                         pulumi_bin, pulumi_home, docker_view, database_url) as rs:
            yield rs
    finally:
        if server and database_url:
            drop_database(server, database_url)
