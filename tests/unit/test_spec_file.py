"""The CLI checks spec and patch files with the service's own models: a bad
field is named before any request (the service URL here answers nothing)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from service.cli import main

NOWHERE = {"STACKSPACE_URL": "http://127.0.0.1:9", "STACKSPACE_TOKEN": "t"}


def run(*args: str, stdin: str):
    return CliRunner().invoke(main, list(args), input=stdin, env=NOWHERE)


def test_a_bad_spec_file_is_refused_by_field_before_sending():
    r = run("create", "-", stdin=json.dumps({
        "name": "BAD", "extra": 1, "files": [{"path": "../x"}],
        "image_credentials": {"username": "u", "password": ""}}))
    assert r.exit_code == 1
    assert "nothing was sent" in r.output
    for line in ("  name: must be a DNS-1123 label", "  extra: unknown field",
                 "  files[0].path: must be a relative path",
                 "  image_credentials.password: must be a non-empty string"):
        assert line in r.output, r.output


def test_a_bad_patch_file_is_refused_by_field_and_yaml_is_read():
    r = run("update", "dev", "-", stdin="name: other\nenv:\n  bad-name: x\n")
    assert r.exit_code == 1
    assert "  name: cannot be changed after create" in r.output
    assert "  env.bad-name: must be an object of NAME: value" in r.output
    r = run("update", "dev", "-", stdin="env: [unclosed\n")
    assert r.exit_code == 1 and "not JSON or YAML" in r.output


def test_a_valid_file_goes_to_the_service():
    # Valid: the CLI sends it, and only then fails (nothing listens there).
    r = run("create", "-", stdin="name: dev\nsecret_env:\n  TOKEN: s3cret\n")
    assert r.exit_code != 0 and "nothing was sent" not in r.output
    assert "s3cret" not in r.output
    r = run("update", "dev", "-", stdin=json.dumps({"image": "debian:12"}))
    assert r.exit_code != 0 and "nothing was sent" not in r.output
