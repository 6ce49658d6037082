"""A live stackspace service on 127.0.0.1 for API tests: real store, real
operation runner (worker processes driving the Pulumi CLI), real Docker Engine.
Every test of a module that uses these services runs on both stores: the
embedded SQLite and a real PostgreSQL server (store_backend)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from components.runtime import parse_runtime
from proxy.server import ProxyConfig
from service.api import create_app
from service.config import ServiceConfig
from service.runner import OperationRunner
from service.session_activity import in_use_check
from service.store import Store, open_store
from service.terminals import Terminals
from tests.conftest import create_database, drop_database
from tests.e2e.exec_fixtures import ProxyProcess


@dataclass
class Service:
    url: str
    store: Store
    admin: str
    alice: str
    bob: str
    runner: OperationRunner
    app: object
    terminals: Terminals | None = None

    def call(self, method: str, path: str, token: str | None, **kw) -> requests.Response:
        headers = kw.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kw)


StoreBackend = Callable[[str], "str | None"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_backend(request: pytest.FixtureRequest) -> Iterator[StoreBackend]:
    """`store_backend(prefix) -> database_url` for each service a test starts:
    None (SQLite in the service's data dir), or a fresh PostgreSQL database,
    dropped when the module is done."""
    if request.param == "sqlite":
        yield lambda prefix: None
        return
    server = request.getfixturevalue("postgres_url")
    made: list[str] = []

    def make(prefix: str) -> str:
        made.append(create_database(server, f"api_{prefix}"))
        return made[-1]

    yield make
    for url in made:
        drop_database(server, url)


def start_service(tmp: Path, docker_host: str, pulumi_settings, quota: int = 10,
                  dispatch: bool = True, idle_stop_after: float | None = None,
                  timeout: float = 600, runtimes: list[dict] | None = None,
                  database_url: str | None = None,
                  storage_scan_seconds: float = 60.0) -> Iterator[Service]:
    runtimes = runtimes or [
        {"name": "local", "type": "docker", "host": docker_host, "network_mode": "none"}]
    cfg = ServiceConfig(data_dir=tmp, quota=quota, database_url=database_url,
                        runtimes=[parse_runtime(r) for r in runtimes],
                        storage_scan_seconds=storage_scan_seconds)
    store = open_store(cfg)
    runner = OperationRunner(store, pulumi_settings, pool_size=2, timeout=timeout,
                             idle_stop_after=idle_stop_after)
    if dispatch:
        runner.start()
    key = secrets.token_bytes(32)
    server = make_server("127.0.0.1", 0, None, threaded=True)  # app set below
    proxy = ProxyProcess(ProxyConfig(
        key=key, port=0,
        activity_url=f"http://127.0.0.1:{server.server_port}/internal/activity",
        activity_interval=0.5))
    terminals = Terminals(key, proxy.url, cfg.runtimes)
    runner.in_use = in_use_check(store, terminals)
    app = create_app(cfg, store, runner, terminals)
    server.app = app
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    svc = Service(url=f"http://127.0.0.1:{server.server_port}", store=store,
                  admin=store.add_user("root", admin=True), alice=store.add_user("alice"),
                  bob=store.add_user("bob"), runner=runner, app=app)
    svc.terminals = terminals
    svc.proxy = proxy
    yield svc
    server.shutdown()
    svc.proxy.stop()  # a test may have restarted it
    runner.shutdown()
    store.close()


@contextmanager
def custom_service(tmp: Path, docker_host: str, pulumi_settings, **options) -> Iterator[Service]:
    """A live service with non-default options, for one test."""
    gen = start_service(tmp, docker_host, pulumi_settings, **options)
    try:
        yield next(gen)
    finally:
        next(gen, None)


@pytest.fixture
def offline_service(tmp_path, store_backend: StoreBackend) -> Iterator[Service]:
    """The API without an engine behind it: for auth, validation and schema tests."""
    from stacks.settings import PulumiSettings

    settings = PulumiSettings(backend_url=f"file://{tmp_path}", passphrase=secrets.token_hex(8),
                              pulumi_home=tmp_path)
    yield from start_service(tmp_path, "unix:///nonexistent.sock", settings,
                             database_url=store_backend("offline"))


@pytest.fixture
def idle_service(tmp_path, store_backend: StoreBackend) -> Iterator[Service]:
    """The API with its dispatcher stopped: operations stay queued."""
    from stacks.settings import PulumiSettings

    settings = PulumiSettings(backend_url=f"file://{tmp_path}", passphrase=secrets.token_hex(8),
                              pulumi_home=tmp_path)
    yield from start_service(tmp_path, "unix:///nonexistent.sock", settings, dispatch=False,
                             database_url=store_backend("idle"))


@pytest.fixture(scope="module")
def service(tmp_path_factory, docker_host, pulumi_settings, docker_provider,
            store_backend: StoreBackend) -> Iterator[Service]:
    yield from start_service(tmp_path_factory.mktemp("svc"), docker_host, pulumi_settings,
                             database_url=store_backend("svc"))
