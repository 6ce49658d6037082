"""A workspace on an image with nothing but BusyBox's /bin/sh, through the
service on the real engine and Docker Engine: init writes the spec's files,
and `stackspace exec` runs in the workspace as on the default image (the
Kubernetes side: tests/e2e/test_exec_proxy_kubernetes.py)."""

from __future__ import annotations

import secrets

import pytest

from tests.api.conftest import custom_service
from tests.e2e.busybox_image import busybox_image
from tests.e2e.remote_helpers import labelled, operate, stackspace_exec

pytestmark = pytest.mark.e2e


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
        finally:
            assert operate(svc, "DELETE", f"/{name}")["status"] == "succeeded"
    assert labelled(docker_client, "alice", name) == ([], [])
