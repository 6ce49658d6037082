"""The spec models' rules, one by one (components.spec): each field's valid
and invalid values, the error paths and messages, the Kubernetes quantity
grammar, the PATCH model derived from the spec, reading stored rows without
judging them, and secrets kept out of reprs and error messages."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes.utils import parse_quantity

from components.spec import (
    MAX_CONFIG_BYTES,
    MAX_FILE_BYTES,
    QUANTITY,
    SpecError,
    WorkspacePatch,
    WorkspaceSpec,
    quantity_value,
    spec_schemas,
    validate_name,
)
from stacks.config import StackConfig


def errors(**fields) -> dict[str, str]:
    with pytest.raises(SpecError) as exc:
        WorkspaceSpec.parse({"name": "dev", **fields})
    return exc.value.errors


def ok(**fields) -> WorkspaceSpec:
    return WorkspaceSpec.parse({"name": "dev", **fields})


REPO = {"url": "https://h.test/r"}
# (fields to set, the one path its error must name)
REFUSED = [
    ({"name": "dev\n"}, "name"),  # a '$' match would let the newline through
    ({"name": "a" * 41}, "name"),
    ({"name": None}, "name"),
    ({"image": "x" * 256}, "image"),
    ({"image": "debian:é"}, "image"),  # tags are ASCII
    ({"image": "debian:12\n"}, "image"),
    ({"image": 12}, "image"),
    ({"runtime": "Local"}, "runtime"),
    ({"repository": {"url": "git@h.test:a b"}}, "repository.url"),
    ({"repository": {"url": "https://h.test/" + "a" * 2048}}, "repository.url"),
    ({"repository": {"url": "https://h.test/r\n"}}, "repository.url"),
    ({"repository": {**REPO, "ref": "a//b"}}, "repository.ref"),
    ({"repository": {**REPO, "ref": "a" * 201}}, "repository.ref"),
    ({"repository": {**REPO, "credential": ""}}, "repository.credential"),
    ({"repository": {**REPO, "credential": "x" * 16385}}, "repository.credential"),
    ({"repository": {**REPO, "credential": "a\x00b"}}, "repository.credential"),
    ({"repository": {**REPO, "username": ""}}, "repository.username"),
    ({"repository": {"ref": "main"}}, "repository.url"),
    ({"repository": []}, "repository"),
    ({"env": {"A": "x" * 32769}}, "env.A"),
    ({"env": {"A": "a\x00"}}, "env.A"),
    ({"env": {"A": None}}, "env.A"),
    ({"env": {f"K{i}": "v" for i in range(129)}}, "env"),
    ({"env": "A=1"}, "env"),
    ({"env": None}, "env"),
    ({"secret_env": {"1A": "x"}}, "secret_env.1A"),
    ({"files": [{"path": "a"}] * 65}, "files"),
    ({"files": [{"path": "a"}, {"path": "a"}]}, "files[1].path"),
    ({"files": [{"path": "a/"}]}, "files[0].path"),
    ({"files": [{"path": "a" * 256}]}, "files[0].path"),
    ({"files": [{"path": "a\x7fb/\x1f"}]}, "files[0].path"),
    ({"files": [{"path": ".stackspace"}]}, "files[0].path"),
    ({"files": [{"content": "x"}]}, "files[0].path"),
    ({"files": [{"path": "a", "content": "é" * (MAX_FILE_BYTES // 2 + 1)}]}, "files[0].content"),
    ({"files": [{"path": "a", "content": 1}]}, "files[0].content"),
    ({"files": [{"path": "a", "mode": "0800"}]}, "files[0].mode"),
    ({"files": [{"path": "a", "mode": 644}]}, "files[0].mode"),
    ({"files": [{"path": "a", "secret": "yes"}]}, "files[0].secret"),
    ({"files": [{"path": "a", "secret": 1}]}, "files[0].secret"),
    ({"files": [{"path": "a", "owner": "x"}]}, "files[0].owner"),
    ({"files": ["a"]}, "files[0]"),
    ({"files": {"path": "a"}}, "files"),
    ({"resources": {"cpu": "0"}}, "resources.cpu"),
    ({"resources": {"cpu": "0.0m"}}, "resources.cpu"),
    ({"resources": {"cpu": "1 "}}, "resources.cpu"),
    ({"resources": {"cpu": "NaN"}}, "resources.cpu"),
    ({"resources": {"cpu": "1_000"}}, "resources.cpu"),
    ({"resources": {"cpu": 2}}, "resources.cpu"),
    ({"resources": {"cpu": "2ki"}}, "resources.cpu"),
    ({"resources": {"memory": "15Mi"}}, "resources.memory"),
    ({"resources": {"storage": "1023Ki"}}, "resources.storage"),
    ({"resources": "big"}, "resources"),
    ({"command": []}, "command"),
    ({"command": ["sleep", ""]}, "command"),
    ({"command": ["a\x00"]}, "command"),
    ({"command": ["x"] * 65}, "command"),
    ({"command": "sleep infinity"}, "command"),
    ({"image_credentials": {"username": "a b", "password": "p"}}, "image_credentials.username"),
    ({"image_credentials": {"username": "u", "password": "p\x00"}}, "image_credentials.password"),
    ({"image_credentials": {"username": "u", "password": 7}}, "image_credentials.password"),
]


@pytest.mark.parametrize("fields,path", REFUSED)
def test_each_rule_refuses_naming_exactly_its_field(fields, path):
    assert set(errors(**fields)) == {path}


@pytest.mark.parametrize("fields", [
    {"name": "a" * 40}, {"name": "0"}, {"runtime": None}, {"runtime": "k8s-2"},
    {"image": "localhost:5000/a/b_c__d-e:1.2-x"}, {"repository": None},
    {"repository": {"url": "https://h.test/a@b"}},  # '@' in the path is no credential
    {"repository": {**REPO, "ref": "feature/x+y", "username": "x-token-auth",
                    "credential": None}},
    {"env": {"_A1": "", "a": "x" * 32768}}, {"env": {f"K{i}": "v" for i in range(128)}},
    {"files": [{"path": "..a/b..", "content": "a" * MAX_FILE_BYTES}]},
    {"files": [{"path": "a/.stackspace"}, {"path": "x.stackspace"}]},
    {"files": [{"path": "a", "mode": "755", "secret": True}]},
    {"resources": {"cpu": "1E", "memory": "1Pi", "storage": "1Ei"}},
    {"resources": {"cpu": "500u", "memory": "16Mi", "storage": "1Mi"}},
    {"resources": {"cpu": "1e3", "memory": "1.5Gi", "storage": ".5Gi"}},
    {"resources": {"cpu": "+2", "memory": "17e6", "storage": "2E+6"}},
    {"command": ["x"] * 64}, {"image_credentials": None},
])
def test_values_each_rule_allows(fields):
    spec = ok(**fields)
    assert WorkspaceSpec.stored(spec.to_dict()) == spec


def test_messages_are_the_documented_descriptions_and_never_carry_the_value():
    schemas = spec_schemas()
    errs = errors(image_credentials={"username": "u", "password": "hunter2\x00"},
                  repository={"url": "https://user:hunter2@h.test/r"})
    assert errs["image_credentials.password"] == \
        schemas["ImageCredentials"]["properties"]["password"]["description"]
    assert "credential" in errs["repository.url"]
    assert "hunter2" not in repr(errs)
    with pytest.raises(SpecError) as exc:
        WorkspaceSpec.parse({"name": "dev", "secret_env": {"A": 5}, "colour": "hunter2"})
    assert "hunter2" not in str(exc.value)
    assert exc.value.errors["colour"] == "unknown field"
    assert WorkspaceSpec.parse.__doc__ and errors(name="x", files=[{"path": "a"},
                                                              {"path": "a"}]) == \
        {"files[1].path": "duplicate path"}


def test_a_body_that_is_not_an_object():
    for body in (None, [], "dev", 3):
        with pytest.raises(SpecError) as exc:
            WorkspaceSpec.parse(body)
        assert exc.value.errors == {"body": "must be an object"}
        with pytest.raises(SpecError) as exc:
            WorkspaceSpec.check_patch(body)
        assert exc.value.errors == {"body": "must be an object"}


def test_a_name_in_both_env_maps_is_named_where_it_was_sent():
    assert errors(env={"A": "1"}, secret_env={"A": "2"}) == {"secret_env.A": "already set in env"}
    spec = ok(secret_env={"A": "s"})
    with pytest.raises(SpecError) as exc:
        spec.merged({"env": {"A": "1"}})
    assert exc.value.errors == {"env.A": "already set in secret_env"}
    with pytest.raises(SpecError) as exc:
        ok(env={"B": "1"}).merged({"secret_env": {"B": "1"}})
    assert exc.value.errors == {"secret_env.B": "already set in env"}


def test_the_config_budget_holds_at_create_and_for_any_patch():
    spec = ok(files=[{"path": "a", "content": "a" * MAX_FILE_BYTES}])
    with pytest.raises(SpecError) as exc:  # each value within its limit, the sum over
        spec.merged({"secret_env": {"B": "b" * 30_000}})
    assert list(exc.value.errors) == ["files[0].content"]  # the largest value
    assert "too large" in exc.value.errors["files[0].content"]
    # The budget is the engine's hard limit: a row stored over it takes no patch.
    half = "a" * (MAX_CONFIG_BYTES // 2)
    legacy = WorkspaceSpec.stored({"name": "dev", "env": {"A": half, "B": half}})
    with pytest.raises(SpecError) as exc:
        legacy.merged({"image": "debian:12"})
    assert "too large" in next(iter(exc.value.errors.values()))


def test_a_patch_validates_what_it_sends_and_keeps_the_rest_as_stored():
    legacy = WorkspaceSpec.stored({"name": "dev", "image": "Not Valid Today",
                                   "resources": {"cpu": "1", "memory": "1Mi", "storage": "1Gi"}})
    patched = legacy.merged({"env": {"A": "1"}})
    assert (patched.image, patched.env, patched.resources.memory) == \
        ("Not Valid Today", {"A": "1"}, "1Mi")
    with pytest.raises(SpecError) as exc:
        legacy.merged({"image": "Not Valid Today"})
    assert set(exc.value.errors) == {"image"}
    with pytest.raises(SpecError) as exc:
        legacy.merged({"env": {"A": "1"}, "colour": "red", "name": "x", "runtime": "y",
                       "command": []})
    assert exc.value.errors == {"colour": "unknown field", "name": "cannot be changed after "
                                "create", "runtime": "cannot be changed after create",
                                "command": exc.value.errors["command"]}
    # A field sent as null where the spec has no null is refused, not emptied.
    with pytest.raises(SpecError) as exc:
        ok().merged({"env": None})
    assert set(exc.value.errors) == {"env"}
    assert ok(repository=REPO).merged({"repository": None},
                                      repository_editable=True).repository is None
    # Top-level keys replace: resources not sent fall back to their defaults.
    grown = ok(resources={"cpu": "4", "storage": "2Gi"}).merged({"resources": {"storage": "3Gi"}})
    assert grown.resources.cpu == "1" and grown.resources.storage == "3Gi"
    assert ok().merged({"files": [{"path": "a", "mode": "600"}]}).files[0].mode == "0600"


def test_the_patch_model_is_the_spec_s_mutable_fields():
    spec, patch = spec_schemas()["WorkspaceSpec"], spec_schemas()["WorkspacePatch"]
    assert set(WorkspacePatch.model_fields) == set(WorkspaceSpec.model_fields) - {"name",
                                                                                  "runtime"}
    for key, prop in patch["properties"].items():
        assert "default" not in prop  # absent means unchanged
        assert {k: v for k, v in spec["properties"][key].items() if k != "default"} == prop
    assert patch.get("required", []) == [] and patch["additionalProperties"] is False


def test_stored_rows_are_read_without_judging_them():
    row = {"name": "Old_Name", "image": "", "files": [{"path": "/abs", "mode": "9",
                                                      "secret": False}],
           "resources": {"cpu": "lots"}, "command": [], "env": {"bad name": 1}}
    spec = WorkspaceSpec.stored(row)
    assert spec.name == "Old_Name" and spec.files[0].content == ""
    assert spec.resources.memory == "1Gi"  # defaults still apply
    assert spec.command == () and isinstance(spec.files, tuple)


def test_reprs_and_stack_config_carry_no_secret():
    spec = ok(repository={**REPO, "credential": "tok-123"},
              secret_env={"T": "ws-token-456"},
              image_credentials={"username": "u", "password": "pull-789"},
              files=[{"path": "k", "content": "key-body", "secret": True}])
    from components.runtime import parse_runtime
    cfg = StackConfig(owner="alice", spec=spec,
                      runtime=parse_runtime({"name": "local", "type": "docker"}), running=True)
    for text in (repr(spec), str(spec), repr(cfg), repr(spec.repository),
                 repr(spec.image_credentials), repr(spec.files)):
        for secret in ("tok-123", "ws-token-456", "pull-789", "key-body"):
            assert secret not in text
    assert spec.repository.credential == "tok-123"  # the program still reads them


def test_validate_name_for_other_names():
    assert validate_name("ns-1", "runtime.namespace") == "ns-1"
    with pytest.raises(SpecError) as exc:
        validate_name("NS", "runtime.namespace")
    assert set(exc.value.errors) == {"runtime.namespace"}


@pytest.mark.parametrize("text,value", [
    ("2Gi", 2 * 2**30), ("500m", 0.5), ("1k", 1000), ("1E", 10**18), ("1Ei", 2**60),
    ("2P", 2 * 10**15), ("1Pi", 2**50), ("5n", 5e-9), ("7u", 7e-6), ("1e3", 1000),
    ("1.5", 1.5), (".5", 0.5), ("5.", 5), ("+1", 1), ("2E-3", 0.002)])
def test_kubernetes_quantities(text, value):
    assert quantity_value(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "1 ", " 1", "NaN", "inf", "1_0", "1ki", "1Ki ", "e3",
                                  "1e", "1.2.3", "-", "0x10", "1KiB", "1m\n"])
def test_not_quantities(text):
    with pytest.raises(ValueError, match="not a quantity"):
        quantity_value(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789.+-eEnumkMGTPKi", max_size=8))
def test_the_quantity_grammar_is_within_what_kubernetes_parses(text):
    import re

    if re.fullmatch(QUANTITY, text):
        assert quantity_value(text) == float(parse_quantity(text))
