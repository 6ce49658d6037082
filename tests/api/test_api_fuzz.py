"""Property-based API test from /openapi.json (schemathesis): whatever the
input, no 5xx and every response conforms to the documented schema.

The app is built at import time (schemathesis loads the schema then) on a
throw-away store, with the operation runner's dispatcher not started: the
fuzzer exercises the HTTP layer, the lifecycle tests exercise the engine."""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from components.runtime import parse_runtime
from service.api import create_app
from service.config import ServiceConfig
from service.runner import OperationRunner
from service.store import Store
from stacks.automation import PulumiSettings

_tmp = Path(tempfile.mkdtemp(prefix="stackspace-fuzz-"))
_cfg = ServiceConfig(data_dir=_tmp, quota=5, runtimes=[parse_runtime(
    {"name": "local", "type": "docker", "host": "unix:///nonexistent.sock"})])
_store = Store(_cfg.store_path)
_token = _store.add_user("fuzzer")
_runner = OperationRunner(_store, PulumiSettings(backend_url=f"file://{_tmp}",
                                                 passphrase=secrets.token_hex(8),
                                                 pulumi_home=_tmp), pool_size=1)
app = create_app(_cfg, _store, _runner)
schema = schemathesis.openapi.from_wsgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi(case):
    # positive_data_acceptance is left out: some rules cannot live in a JSON
    # schema (a runtime must exist, memory >= 16Mi, paths may not contain '..'),
    # so a schema-valid body may rightly get a 422.
    case.call_and_validate(headers={"Authorization": f"Bearer {_token}"},
                           excluded_checks=[positive_data_acceptance])
