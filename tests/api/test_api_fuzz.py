"""Property-based API test from /openapi.json (schemathesis): whatever the
input, no 5xx and every response conforms to the documented schema.

The app is built once per store backend on a throw-away store, with the
operation runner's dispatcher not started: the fuzzer exercises the HTTP
layer, the lifecycle tests exercise the engine."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from components.runtime import parse_runtime
from service.api import create_app
from service.config import ServiceConfig
from service.openapi import document
from service.runner import OperationRunner
from service.store import open_store
from stacks.settings import PulumiSettings


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory, store_backend) -> Iterator[tuple[Any, str]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    cfg = ServiceConfig(data_dir=tmp, quota=5, database_url=store_backend("fuzz"),
                        runtimes=[parse_runtime({"name": "local", "type": "docker",
                                                 "host": "unix:///nonexistent.sock"})])
    store = open_store(cfg)
    token = store.add_user("fuzzer")
    runner = OperationRunner(store, PulumiSettings(backend_url=f"file://{tmp}",
                                                   passphrase=secrets.token_hex(8),
                                                   pulumi_home=tmp), pool_size=1)
    _app.current = create_app(cfg, store, runner)
    yield _app.current, token
    _app.current = None
    store.close()


class _BackendApp:
    """WSGI: forwards to the app of the store backend under test (fuzz_app),
    so one schema, loaded at import, serves both backends' runs in-process."""

    current: Any = None

    def __call__(self, environ: dict, start_response: Any) -> Any:
        return self.current(environ, start_response)


_app = _BackendApp()
schema = schemathesis.openapi.from_dict(document())  # what the app serves at /openapi.json
schema.app = _app  # as schemathesis.openapi.from_wsgi does


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi(case, fuzz_app):
    # positive_data_acceptance is left out: some rules cannot live in a JSON
    # schema (a runtime must exist, memory >= 16Mi, paths may not contain '..'),
    # so a schema-valid body may rightly get a 422.
    case.call_and_validate(headers={"Authorization": f"Bearer {fuzz_app[1]}"},
                           excluded_checks=[positive_data_acceptance])
