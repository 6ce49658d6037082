"""A live stackspace service on 127.0.0.1 for API tests: real store, real
operation runner (worker processes driving the Pulumi CLI), real Docker Engine."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
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
from service.store import Store
from service.terminals import Terminals
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


def start_service(tmp: Path, docker_host: str, pulumi_settings, quota: int = 10,
                  dispatch: bool = True, idle_stop_after: float | None = None,
                  timeout: float = 600, runtimes: list[dict] | None = None
                  ) -> Iterator[Service]:
    runtimes = runtimes or [
        {"name": "local", "type": "docker", "host": docker_host, "network_mode": "none"}]
    cfg = ServiceConfig(data_dir=tmp, quota=quota,
                        runtimes=[parse_runtime(r) for r in runtimes])
    store = Store(cfg.store_path)
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
    app = create_app(cfg, store, runner, terminals)
    server.app = app
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    svc = Service(url=f"http://127.0.0.1:{server.server_port}", store=store,
                  admin=store.add_user("root", admin=True), alice=store.add_user("alice"),
                  bob=store.add_user("bob"), runner=runner, app=app)
    svc.terminals = terminals
    yield svc
    server.shutdown()
    proxy.stop()
    runner.shutdown()


@contextmanager
def custom_service(tmp: Path, docker_host: str, pulumi_settings, **options) -> Iterator[Service]:
    """A live service with non-default options, for one test."""
    gen = start_service(tmp, docker_host, pulumi_settings, **options)
    try:
        yield next(gen)
    finally:
        next(gen, None)


@pytest.fixture
def offline_service(tmp_path) -> Iterator[Service]:
    """The API without an engine behind it: for auth, validation and schema tests."""
    from stacks.automation import PulumiSettings

    settings = PulumiSettings(backend_url=f"file://{tmp_path}", passphrase=secrets.token_hex(8),
                              pulumi_home=tmp_path)
    yield from start_service(tmp_path, "unix:///nonexistent.sock", settings)


@pytest.fixture
def idle_service(tmp_path) -> Iterator[Service]:
    """The API with its dispatcher stopped: operations stay queued."""
    from stacks.automation import PulumiSettings

    settings = PulumiSettings(backend_url=f"file://{tmp_path}", passphrase=secrets.token_hex(8),
                              pulumi_home=tmp_path)
    yield from start_service(tmp_path, "unix:///nonexistent.sock", settings, dispatch=False)


@pytest.fixture(scope="module")
def service(tmp_path_factory, docker_host, pulumi_settings, docker_provider
            ) -> Iterator[Service]:
    yield from start_service(tmp_path_factory.mktemp("svc"), docker_host, pulumi_settings)
