"""A workspace on an image with nothing but BusyBox's /bin/sh, through the
service on the real engine and Docker Engine: init writes the spec's files,
and `stackspace exec` runs in the workspace as on the default image (the
Kubernetes side: tests/e2e/test_exec_proxy_kubernetes.py); a repository on
such an image fails clearly, and a PATCHed image makes the retry clone."""

from __future__ import annotations

import os
import secrets
import sys

import pexpect
import pytest

from tests.api.conftest import custom_service
from tests.e2e.busybox_image import busybox_image
from tests.e2e.remote_helpers import labelled, operate, stackspace_exec
from tests.e2e.repo_image import REPO_URL, docker_repo_image, make_repo

pytestmark = pytest.mark.e2e


def answer_prompt(term: pexpect.spawn) -> None:
    """Wait for ash's prompt; its line editor first asks the terminal where the
    cursor is (ESC [6n) and reads the answer, as a terminal emulator gives it."""
    if term.expect([r"\x1b\[6n", r"[$#] $"]) == 0:
        term.send("\x1b[1;1R")


def test_a_busybox_only_workspace_runs_init_and_terminals(tmp_path, docker_host, docker_client,
                                                           pulumi_settings, docker_provider):
    image = busybox_image(docker_client)
    name = f"busybox-{secrets.token_hex(3)}"
    with custom_service(tmp_path, docker_host, pulumi_settings) as svc:
        op = operate(svc, "POST", "", json={
            "name": name, "image": image, "env": {"GREETING": "hi"},
            "files": [{"path": ".config/app.toml", "content": "debug = true\n"}]})
        try:
            assert op["status"] == "succeeded", op.get("error")
            r = stackspace_exec(svc, name, "sh", "-c",
                                'id -u; pwd; echo "$GREETING"; cat .config/app.toml; exit 3')
            assert (r.returncode, r.stdout) == (3, b"1000\n/workspace\nhi\ndebug = true\n")
            # An interactive terminal: the default shell is /bin/sh here (no bash).
            term = pexpect.spawn(sys.executable, ["-m", "service.cli", "term", name],
                                 env={**os.environ, "STACKSPACE_URL": svc.url,
                                      "STACKSPACE_TOKEN": svc.alice},
                                 timeout=60, dimensions=(24, 80))
            answer_prompt(term)
            term.sendline("echo term-$((40+2)) $GREETING")
            term.expect_exact("term-42 hi")
            answer_prompt(term)
            term.sendline("exit 5")
            term.expect(pexpect.EOF)
            term.close()
            assert term.exitstatus == 5
        finally:
            assert operate(svc, "DELETE", f"/{name}")["status"] == "succeeded"
    assert labelled(docker_client, "alice", name) == ([], [])


def test_an_init_that_failed_on_its_image_runs_again_with_the_patched_image(
        tmp_path, docker_host, docker_client, pulumi_settings, docker_provider):
    """The image has no git, so the clone cannot run: the create fails saying
    so (not "repository not found"), and a PATCH of `image` alone makes the
    next run clone with the new image (a failed init made again takes
    today's image; a good one ignores image changes). No `ref` given: the
    repository's default branch is checked out, whatever its name."""
    (tmp_path / "repo").mkdir()
    bare = make_repo(tmp_path / "repo", {"README.md": "cloned with git\n"}, branch="trunk")
    with_git = docker_repo_image(docker_client, bare,
                                 f"stackspace-test/repo:{secrets.token_hex(4)}")
    name = f"nogit-{secrets.token_hex(3)}"
    with custom_service(tmp_path / "svc", docker_host, pulumi_settings) as svc:
        try:
            op = operate(svc, "POST", "", json={"name": name, "image": busybox_image(docker_client),
                                                "repository": {"url": REPO_URL}})
            assert op["status"] == "failed", op
            assert "clone failed: the image has no git" in op["error"], op["error"]

            op = operate(svc, "PATCH", f"/{name}", json={"image": with_git})
            assert op["status"] == "succeeded", op.get("error")
            r = stackspace_exec(svc, name, "sh", "-c", "cat README.md .git/HEAD")
            assert (r.returncode, r.stdout) == (0, b"cloned with git\nref: refs/heads/trunk\n"), \
                r.stderr
            [init] = [c for c in labelled(docker_client, "alice", name)[0]
                      if c.labels.get("stackspace.dev/role") == "init"]
            assert init.image.tags == [with_git] and init.attrs["State"]["ExitCode"] == 0
        finally:
            assert operate(svc, "DELETE", f"/{name}")["status"] == "succeeded"
    assert labelled(docker_client, "alice", name) == ([], [])
