"""Validation of the workspace spec: every field, bad values named, secrets kept apart."""

import pytest

from components.spec import MAX_FILE_BYTES, SpecError, WorkspaceSpec, quantity_value
from stacks.naming import resource_base, stack_name


def parse(**fields):
    return WorkspaceSpec.parse({"name": "dev", **fields})


def errors_of(**fields) -> dict[str, str]:
    with pytest.raises(SpecError) as exc:
        WorkspaceSpec.parse(fields)
    return exc.value.errors


def test_defaults_keep_workspace_alive_with_default_image():
    spec = parse()
    assert spec.image == "stackspace/workspace:bookworm"
    assert spec.command == ("sleep", "infinity")
    assert spec.resources.storage == "1Gi"


@pytest.mark.parametrize("name", ["", "Dev", "-dev", "dev-", "a" * 41, "d_v", "dév", 7])
def test_bad_names_are_rejected(name):
    assert "name" in errors_of(name=name)


def test_unknown_fields_are_rejected_with_their_path():
    errs = errors_of(name="dev", colour="red", repository={"url": "https://x.test/r", "depth": 1})
    assert errs == {"colour": "unknown field", "repository.depth": "unknown field"}


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x", "a//b", ".", "a/./b",
                                  ".stackspace/initialized", "a\nb", ""])
def test_file_paths_cannot_escape_the_workspace_root(path):
    errs = errors_of(name="dev", files=[{"path": path, "content": "x"}])
    assert "files[0].path" in errs


@pytest.mark.parametrize("url", ["http://x.test/r", "https://user:tok@x.test/r", "ftp://x/r",
                                 "https://x.test/r;rm -rf /", "$(id)", "file:///r`id`"])
def test_repository_urls_are_validated(url):
    assert "repository.url" in errors_of(name="dev", repository={"url": url})


@pytest.mark.parametrize("url", ["https://git.example.test/team/app.git", "ssh://git@h.test/a.git",
                                 "git@h.test:team/app.git", "file:///srv/repos/app"])
def test_good_repository_urls(url):
    assert parse(repository={"url": url}).repository.url == url


@pytest.mark.parametrize("ref", ["-x", "a..b", "a b", "$(x)"])
def test_bad_refs(ref):
    errs = errors_of(name="dev", repository={"url": "https://h.test/a", "ref": ref})
    assert "repository.ref" in errs


@pytest.mark.parametrize("image", ["UPPER:tag", "a b", "x:", "-x", "a:b:c"])
def test_bad_images(image):
    assert "image" in errors_of(name="dev", image=image)


def test_good_images():
    for image in ["debian:12", "registry.test:5000/team/ws:v1", "a/b@sha256:" + "0" * 64]:
        assert parse(image=image).image == image


@pytest.mark.parametrize("env", [{"1X": "v"}, {"A-B": "v"}, {"STACKSPACE_ROOT": "/"}, {"A": 1}])
def test_bad_env(env):
    assert any(k.startswith("env") for k in errors_of(name="dev", env=env))


@pytest.mark.parametrize("res", [{"cpu": "lots"}, {"memory": "1Mi"}, {"storage": "0"},
                                 {"storage": "-1Gi"}, {"gpu": "1"}])
def test_bad_resources(res):
    assert any(k.startswith("resources") for k in errors_of(name="dev", resources=res))


def test_quantities():
    assert quantity_value("2Gi") == 2 * 2**30
    assert quantity_value("500m") == 0.5
    assert quantity_value("1k") == 1000


def test_secrets_are_redacted_and_kept_out_of_public_form():
    spec = parse(repository={"url": "https://h.test/a", "credential": "tok-123"},
                 files=[{"path": ".netrc", "content": "pw-456", "secret": True, "mode": "600"},
                        {"path": "README", "content": "hi"}])
    assert "tok-123" not in str(spec.to_dict(redact=True))
    assert "pw-456" not in str(spec.to_dict(redact=True))
    public = spec.public_dict()
    assert "tok-123" not in str(public) and "pw-456" not in str(public)
    assert spec.secret_values() == {"credential": "tok-123", "file:.netrc": "pw-456"}
    assert WorkspaceSpec.from_public(public, spec.secret_values()) == spec
    assert spec.files[0].mode == "0600"


def test_patch_cannot_change_identity_or_shrink_storage():
    spec = parse(resources={"storage": "2Gi"})
    with pytest.raises(SpecError) as exc:
        spec.merged({"name": "other", "repository": {"url": "https://h.test/b"}})
    assert set(exc.value.errors) == {"name", "repository"}
    with pytest.raises(SpecError) as exc:
        spec.merged({"resources": {"storage": "1Gi"}})
    assert "resources.storage" in exc.value.errors
    grown = spec.merged({"resources": {"storage": "4Gi"}, "env": {"A": "1"}})
    assert grown.resources.storage == "4Gi" and grown.env == {"A": "1"}


def test_stack_names_are_stable_valid_and_collision_free():
    a = stack_name("al-ice", "app")
    assert a == stack_name("al-ice", "app")
    assert stack_name("al", "ice-app") != a
    assert len(stack_name("o" * 40, "n" * 40)) <= 100
    base = resource_base("o" * 40, "n" * 40)
    assert len(base) + len("-init-01234567") <= 63


def test_incomplete_stack_config_names_the_missing_keys():
    from stacks.config import IncompleteConfig, StackConfig

    with pytest.raises(IncompleteConfig, match="stackspace:spec, stackspace:runtime"):
        StackConfig.from_values({"owner": "alice", "running": "true"}.get)


FULL = {
    "name": "dev", "image": "registry.example.test:5000/team/ws:1",
    "repository": {"url": "https://git.example.test/r.git", "credential": "tok-123",
                   "username": "oauth2"},
    "env": {"ONEDEV_SERVER_URL": "https://onedev.example.test"},
    "secret_env": {"ONEDEV_WORKSPACE_TOKEN": "ws-token-456"},
    "image_credentials": {"username": "puller", "password": "pull-789"},
    "files": [{"path": "k", "content": "key-body", "secret": True}],
}
SECRETS = ("tok-123", "ws-token-456", "pull-789", "key-body")


def test_secret_env_image_credentials_and_username_round_trip_through_stack_config():
    spec = WorkspaceSpec.parse(FULL)
    assert spec.repository.username == "oauth2"
    assert spec.secret_env == {"ONEDEV_WORKSPACE_TOKEN": "ws-token-456"}
    public = spec.public_dict()
    assert not any(s in repr(public) for s in SECRETS)
    assert public["secret_env"] == {"ONEDEV_WORKSPACE_TOKEN": ""}  # names stay visible
    assert public["repository"]["username"] == "oauth2"
    assert spec.secret_values() == {"credential": "tok-123", "file:k": "key-body",
                                    "env:ONEDEV_WORKSPACE_TOKEN": "ws-token-456",
                                    "image_password": "pull-789"}
    assert WorkspaceSpec.from_public(public, spec.secret_values()) == spec
    # The public form parses (the service re-reads stored specs) and redacts alike.
    stored = WorkspaceSpec.parse(public)
    redacted = stored.to_dict(redact=True)
    assert redacted["secret_env"] == {"ONEDEV_WORKSPACE_TOKEN": "[secret]"}
    assert spec.to_dict(redact=True)["image_credentials"] == {"username": "puller",
                                                               "password": "[secret]"}
    assert not any(s in repr(spec.to_dict(redact=True)) for s in SECRETS)


@pytest.mark.parametrize("fields,field", [
    ({"secret_env": {"bad-name": "x"}}, "secret_env.bad-name"),
    ({"secret_env": {"STACKSPACE_X": "x"}}, "secret_env.STACKSPACE_X"),
    ({"secret_env": {"A": 1}}, "secret_env.A"),
    ({"secret_env": ["A"]}, "secret_env"),
    ({"env": {"A": "1"}, "secret_env": {"A": "2"}}, "secret_env.A"),
    ({"image_credentials": {"username": "u", "password": ""}}, "image_credentials.password"),
    ({"image_credentials": {"username": "u"}}, "image_credentials.password"),
    ({"image_credentials": {"password": "p"}}, "image_credentials.username"),
    ({"image_credentials": {"username": "u", "password": "p", "email": "e"}},
     "image_credentials.email"),
    ({"image_credentials": "u:p"}, "image_credentials"),
    ({"repository": {"url": "https://x.test/r", "username": "a b"}}, "repository.username"),
    ({"repository": {"url": "https://x.test/r", "username": 3}}, "repository.username"),
])
def test_new_fields_reject_bad_values_naming_the_field(fields, field):
    errs = errors_of(name="dev", **fields)
    assert field in errs


def test_secrets_rotate_by_patch_and_a_repository_is_fixed_once_cloned():
    spec = WorkspaceSpec.parse(FULL)
    rotated = spec.merged({"secret_env": {"A": "new"},
                           "image_credentials": {"username": "u", "password": "p2"}})
    assert rotated.secret_env == {"A": "new"}
    assert rotated.image_credentials.password == "p2"
    assert rotated.repository == spec.repository and rotated.name == spec.name
    fixed = {"repository": {"url": "https://git.test/right.git", "credential": "t2"}}
    with pytest.raises(SpecError) as exc:
        spec.merged(fixed)
    assert set(exc.value.errors) == {"repository"} and "cloned" in exc.value.errors["repository"]
    corrected = spec.merged(fixed, repository_editable=True)
    assert corrected.repository.url == "https://git.test/right.git"
    assert corrected.repository.credential == "t2"
    with pytest.raises(SpecError) as exc:
        spec.merged({"name": "other", "runtime": "x"}, repository_editable=True)
    assert set(exc.value.errors) == {"name", "runtime"}
    with pytest.raises(SpecError) as exc:  # a bad value names the field, as at create
        spec.merged({"secret_env": {"bad-name": "x"}})
    assert "secret_env.bad-name" in exc.value.errors


def test_a_file_at_the_limit_is_accepted_and_an_oversized_spec_names_its_largest_value():
    assert parse(files=[{"path": "big", "content": "a" * MAX_FILE_BYTES}])
    assert "files[0].content" in errors_of(
        name="dev", files=[{"path": "big", "content": "a" * (MAX_FILE_BYTES + 1)}])
    # Each file fits alone, together they do not fit the one config env string.
    errs = errors_of(name="dev", files=[{"path": "a", "content": "a" * 60_000},
                                        {"path": "b", "content": "b" * 70_000}])
    assert list(errs) == ["files[1].content"] and "too large" in errs["files[1].content"]
    # Quotes take four bytes each once in stack config.
    errs = errors_of(name="dev", files=[{"path": "q", "content": '"' * 40_000}])
    assert list(errs) == ["files[0].content"]


def test_the_openapi_schema_accepts_every_field_the_validator_does():
    """A client generated from /openapi.json must accept every valid spec and
    PATCH (the document once forbade secret_env, image_credentials and
    repository.username while the validator took them)."""
    import jsonschema_rs  # schemathesis's validator

    from service.openapi import SCHEMAS

    def validate(name: str, value: dict) -> None:  # as a client reads it, refs and all
        jsonschema_rs.validate({"$ref": f"#/components/schemas/{name}",
                                "components": {"schemas": SCHEMAS}}, value)

    assert set(SCHEMAS["WorkspaceSpec"]["properties"]) == set(WorkspaceSpec.model_fields)
    spec = WorkspaceSpec.parse(FULL).to_dict()
    validate("WorkspaceSpec", spec)
    patch = {k: v for k, v in spec.items() if k not in ("name", "runtime")}
    validate("WorkspacePatch", patch)
    assert WorkspaceSpec.parse(FULL).merged(patch, repository_editable=True) is not None


def test_a_stored_spec_is_read_under_the_rules_it_was_stored_under():
    # Stored when one file could take 256 KiB; today's limit is 100 KiB.
    legacy = {"name": "dev", "files": [{"path": "big", "content": "a" * (MAX_FILE_BYTES + 1),
                                        "mode": "0644", "secret": False}]}
    with pytest.raises(SpecError):
        WorkspaceSpec.parse(legacy)
    spec = WorkspaceSpec.from_public(legacy, {})
    assert spec.files[0].content == "a" * (MAX_FILE_BYTES + 1)
    assert WorkspaceSpec.stored(spec.public_dict()) == spec
    # A PATCH meets today's rules for what it sends; the rest stays as stored.
    patched = spec.merged({"env": {"A": "1"}})
    assert patched.env == {"A": "1"} and patched.files == spec.files
    with pytest.raises(SpecError) as e:
        spec.merged({"files": legacy["files"]})
    assert set(e.value.errors) == {"files[0].content"}
    with pytest.raises(SpecError) as e:
        spec.merged({"env": {"bad name": "1"}})
    assert set(e.value.errors) == {"env.bad name"}
