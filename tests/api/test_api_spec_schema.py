"""The OpenAPI document's spec schemas, held to the running app: every
property of WorkspaceSpec and WorkspacePatch (nested ones too) is driven
through real HTTP requests. Its documented examples must be accepted; values
the document itself refuses must be refused with a 422 naming that property,
changing nothing; written secrets never come back. The values are derived
from the document as a client reads it, never compared with the document."""

from __future__ import annotations

import copy
import itertools
import secrets
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest

from tests.api.conftest import Service, start_service

pytestmark = pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)

# Values of every JSON type and strings that break the usual rules; each
# property is sent those its schema refuses (and the boundary cases below).
POOL: list[Any] = [None, 0, 1.5, True, [], {}, "", " ", "\n", "x\n", "a b", "x\x00y", "UPPER",
                   "-x", "../x", "/abs", "a//b", ".", "a..b", "$(id)", "http://h.test/r",
                   "https://u:p@h.test/r", "STACKSPACE_X", "0", "-1Gi", "1Mi", "1.5.5",
                   ".stackspace/x", "x:", "9999", ["x"], [""], {"a-b": "x"}, {"A": 1},
                   {"STACKSPACE_A": "x"}, {"A": "x\x00"}]


@pytest.fixture(scope="module")
def svc(tmp_path_factory, store_backend) -> Iterator[Service]:
    """The app over HTTP with its dispatcher stopped (operations stay queued:
    the rules under test end at admission) and room for many workspaces."""
    from stacks.settings import PulumiSettings

    tmp = tmp_path_factory.mktemp("schema")
    settings = PulumiSettings(backend_url=f"file://{tmp}", passphrase=secrets.token_hex(8),
                              pulumi_home=tmp)
    yield from start_service(tmp, "unix:///nonexistent.sock", settings, quota=10_000,
                             dispatch=False, database_url=store_backend("schema"))


class Document:
    """The served /openapi.json, read as a client reads it."""

    def __init__(self, doc: dict[str, Any]):
        self.doc = doc
        self.schemas = doc["components"]["schemas"]

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node or "anyOf" in node:
            if "$ref" in node:
                node = {**self.schemas[node["$ref"].rsplit("/", 1)[-1]],
                        **{k: v for k, v in node.items() if k != "$ref"}}
            else:
                node = next(n for n in node["anyOf"] if n.get("type") != "null")
        return node

    def refuses(self, schema: dict[str, Any], value: Any) -> bool:
        return not jsonschema_rs.is_valid({**schema, "components": {"schemas": self.schemas}},
                                          value)

    def properties(self, node: dict[str, Any], path: tuple = ()) -> Iterator[tuple]:
        """(path, schema) of every property, depth first; a list of objects
        is entered through its first item."""
        for key, sub in self.resolve(node).get("properties", {}).items():
            yield (*path, key), sub
            inner = self.resolve(sub)
            if inner.get("type") == "object" and "properties" in inner:
                yield from self.properties(inner, (*path, key))
            elif inner.get("type") == "array" and "properties" in self.resolve(
                    inner.get("items", {})):
                yield from self.properties(inner["items"], (*path, key, 0))


def dotted(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p)
                   for i, p in enumerate(path))


def put(body: dict[str, Any], path: tuple, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    node = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return out


def invalid_values(document: Document, schema: dict[str, Any], path: tuple,
                   current: Any) -> Iterator[tuple[Any, str]]:
    """(value, the field its error must name) for each value the document
    refuses at `path` (where the valid body has `current`): the pool, the
    boundaries of its limits, an unknown key."""
    node = document.resolve(schema)
    here = dotted(path)
    candidates: list[Any] = list(POOL)
    example = (node.get("examples") or schema.get("examples") or [None])[0]
    if "maxLength" in node:
        candidates.append("a" * (node["maxLength"] + 1))
    if "maxItems" in node and isinstance(example, list):
        candidates.append(example * (node["maxItems"] // max(len(example), 1) + 1))
    if "maxProperties" in node:
        candidates.append({f"K{i}": "v" for i in range(node["maxProperties"] + 1)})
    if node.get("type") == "object" and "properties" in node:
        yield {**(current or {}), "zz_unknown": 1}, f"{here}.zz_unknown"
    items = document.resolve(node.get("items", {}))
    for value in candidates:
        if not document.refuses(schema, value):
            continue
        # An object or list of objects given a wrong object: the error names
        # what is wrong inside it (driven as a property of its own).
        if (isinstance(value, dict) and "properties" in node) or (
                isinstance(value, list) and value and "properties" in items):
            continue
        field = here
        if isinstance(value, dict) and node.get("type") == "object" and "propertyNames" in node:
            # a map: the bad entry is the field (env.NAME)
            bad = [k for k, v in value.items()
                   if document.refuses({"type": "object", "propertyNames":
                                        node["propertyNames"],
                                        "additionalProperties": node["additionalProperties"]},
                                       {k: v})]
            if len(bad) == 1 and len(value) <= node.get("maxProperties", len(value)):
                field = f"{here}.{bad[0]}"
        yield value, field


def secret_values(document: Document, body: Any, schema: dict[str, Any]) -> list[str]:
    """The values of `body` the document marks writeOnly (and secret files')."""
    node = document.resolve(schema)
    if schema.get("writeOnly") or node.get("writeOnly"):
        if isinstance(body, dict):
            return [v for v in body.values() if isinstance(v, str) and len(v) > 3]
        return [body] if isinstance(body, str) and len(body) > 3 else []
    out: list[str] = []
    if isinstance(body, dict):
        for k, v in body.items():
            if k in node.get("properties", {}):
                out += secret_values(document, v, node["properties"][k])
        if body.get("secret") is True and isinstance(body.get("content"), str):
            out.append(body["content"])
    elif isinstance(body, list) and "items" in node:
        for item in body:
            out += secret_values(document, item, node["items"])
    return out


def test_every_spec_field_of_the_document_is_enforced_by_the_app(svc):
    document = Document(svc.call("GET", "/openapi.json", None).json())
    spec_schema = document.schemas["WorkspaceSpec"]
    base = spec_schema["examples"][0]  # a full spec, as the document gives it
    assert not document.refuses(spec_schema, base)
    names = (f"s{i}" for i in itertools.count())
    alice = svc.alice
    created: list[str] = []

    def create(body: dict[str, Any]) -> Any:
        return svc.call("POST", "/api/v1/workspaces", alice, json=body)

    def accepted(r: Any, body: dict[str, Any], what: str) -> None:
        assert r.status_code == 202, (what, r.text)
        shown = svc.call("GET", f"/api/v1/workspaces/{r.json()['workspace']}", alice).text
        for secret in secret_values(document, body, spec_schema):
            assert secret not in shown, (what, "a written secret came back")

    def fresh() -> str:
        body = {**base, "name": next(names)}
        accepted(create(body), body, "the example")
        created.append(body["name"])
        return body["name"]

    def refused(r: Any, field: str, what: str) -> None:
        assert r.status_code == 422, (what, r.status_code, r.text)
        assert r.headers["Content-Type"] == "application/problem+json"
        fields = {e["field"] for e in r.json()["errors"]}
        assert fields == {field}, (what, fields)

    driven: dict[str, set[str]] = {"WorkspaceSpec": set(), "WorkspacePatch": set()}
    for path, schema in document.properties(spec_schema):
        where = dotted(path)
        driven["WorkspaceSpec"].add(where)
        examples = schema.get("examples") or document.resolve(schema).get("examples")
        if examples is None:  # an object property: its example is the base's
            examples = [_at(base, path)]
        for value in examples:
            assert not document.refuses(schema, value), (where, value)
            body = put({**base, "name": next(names)}, path, value)
            accepted(create(body), body, f"{where}={value!r}")
            created.append(body["name"])
        bad = list(invalid_values(document, schema, path, _at(base, path)))
        assert bad, f"{where}: nothing the document refuses"
        for value, field in bad:
            refused(create(put({**base, "name": "never"}, path, value)), field,
                    f"create {where}={value!r}")

    patch_schema = document.schemas["WorkspacePatch"]
    target = fresh()
    for path, schema in document.properties(patch_schema):
        where = dotted(path)
        driven["WorkspacePatch"].add(where)
        top = path[0]
        examples = schema.get("examples") or document.resolve(schema).get("examples") \
            or [_at(base, path)]
        for value in examples:
            patch = put({top: copy.deepcopy(base[top])}, path, value)
            assert not document.refuses(patch_schema, patch), (where, patch)
            r = svc.call("PATCH", f"/api/v1/workspaces/{fresh()}?queue=true", alice, json=patch)
            accepted(r, patch, f"patch {where}={value!r}")
        for value, field in invalid_values(document, schema, path, _at(base, path)):
            patch = put({top: copy.deepcopy(base[top])}, path, value)
            r = svc.call("PATCH", f"/api/v1/workspaces/{target}?queue=true", alice, json=patch)
            refused(r, field, f"patch {where}={value!r}")

    # Every field of the spec, the secret ones included, was driven.
    for field in ("name", "image", "runtime", "repository.url", "repository.ref",
                  "repository.credential", "repository.username", "env", "files[0].path",
                  "files[0].content", "files[0].mode", "files[0].secret", "resources.cpu",
                  "resources.memory", "resources.storage", "command", "secret_env",
                  "image_credentials.username", "image_credentials.password"):
        assert field in driven["WorkspaceSpec"], field
    assert driven["WorkspacePatch"] == {f for f in driven["WorkspaceSpec"]
                                        if f not in ("name", "runtime")}
    # Refusals changed nothing: only the accepted creates exist, and the
    # target of every refused PATCH has its create alone.
    listed = svc.store.workspaces("alice")
    assert sorted(w["name"] for w in listed) == sorted(created)
    ops = svc.call("GET", f"/api/v1/workspaces/{target}", alice).json()["last_operation"]
    assert ops["kind"] == "create"


def _at(body: Any, path: tuple) -> Any:
    """The value at `path`, None where the body has none."""
    for p in path:
        if not isinstance(body, (dict, list)) or (isinstance(body, dict) and p not in body):
            return None
        body = body[p]
    return copy.deepcopy(body)
