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
from hypothesis import HealthCheck, given, settings
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
    yield _app.current, token, store
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
# A body over the size limit is a rejection too (413, refused unread).
schema.config.checks.negative_data_rejection.expected_statuses.append("413")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi(case, fuzz_app):
    # positive_data_acceptance is left out: some rules cannot live in a JSON
    # schema (a runtime must exist, memory >= 16Mi, a file's size in bytes, the
    # stack config budget), so a schema-valid body may rightly get a 422.
    case.call_and_validate(headers={"Authorization": f"Bearer {fuzz_app[1]}"},
                           excluded_checks=[positive_data_acceptance])


def _sent(value: Any, path: str = "") -> Iterator[str]:
    """Every property path a body carries ('files[].path'); map entries count
    as their map ('env')."""
    if path:
        yield path
    if isinstance(value, dict) and not path.endswith(("env", "secret_env")):
        for key, item in value.items():
            yield from _sent(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for item in value:
            yield from _sent(item, f"{path}[]")


def _documented(schemas: dict[str, Any], node: dict[str, Any], path: str = "") -> Iterator[str]:
    """Every property path of a schema in the document, nested ones too."""
    while "$ref" in node or "anyOf" in node:
        node = schemas[node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else next(
            n for n in node["anyOf"] if n.get("type") != "null")
    if path:
        yield path
    for key, sub in node.get("properties", {}).items():
        yield from _documented(schemas, sub, f"{path}.{key}" if path else key)
    if node.get("type") == "array":
        items = node.get("items", {})
        resolved = schemas[items["$ref"].rsplit("/", 1)[-1]] if "$ref" in items else items
        if "properties" in resolved:
            yield from _documented(schemas, items, f"{path}[]")


@pytest.mark.parametrize("method,path,schema_name", [
    ("POST", "/api/v1/workspaces", "WorkspaceSpec"),
    ("PATCH", "/api/v1/workspaces/{name}", "WorkspacePatch")])
def test_the_fuzzer_sends_every_spec_field(fuzz_app, method, path, schema_name):
    """The fuzzer's spec bodies carry every documented field, the secret
    ones (secret_env, image_credentials, repository.credential) included,
    each sent to the app and its answer checked against the document."""
    app, _, store = fuzz_app
    # A user of its own: the other cases may have used up the fuzzer's quota.
    headers = {"Authorization": f"Bearer {store.add_user(f'fz{secrets.token_hex(3)}')}"}
    target = "target"
    created = app.test_client().post("/api/v1/workspaces", json={"name": target},
                                     headers=headers)
    assert created.status_code == 202, created.text
    seen: set[str] = set()

    @given(case=schema[path][method].as_strategy())
    @settings(max_examples=120, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def send(case: Any) -> None:
        if method == "PATCH":
            case.path_parameters = {"name": target}
        seen.update(_sent(case.body))
        case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

    send()
    documented = set(_documented(document()["components"]["schemas"],
                                 document()["components"]["schemas"][schema_name]))
    assert {"secret_env", "image_credentials.password", "repository.credential",
            "files[].content"} <= documented
    assert documented - seen == set()
