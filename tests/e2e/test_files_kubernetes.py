"""The file API on a Kubernetes workspace (pods/exec through the exec proxy),
through the service: a binary round trip with mode and mtime, a listing, tar
both ways and the escapes (local Docker: test_files.py)."""

from __future__ import annotations

import secrets

import pytest
from kubernetes import client, config

from tests.api.conftest import custom_service
from tests.e2e.file_steps import escapes_refused, round_trip, tar_round_trip
from tests.e2e.remote_helpers import operate
from tests.e2e.stack_helpers import ensure_namespace

NAMESPACE = "stackspace-files-e2e"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900),
              pytest.mark.usefixtures("kubernetes_provider")]


def test_file_api_on_kubernetes(tmp_path, kube_cluster, docker_host, pulumi_settings):
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kube_cluster)))
    ensure_namespace(core, NAMESPACE)
    runtime = {"name": "cluster", "type": "kubernetes", "kubeconfig": str(kube_cluster),
               "namespace": NAMESPACE}
    name = f"kf-{secrets.token_hex(3)}"
    with custom_service(tmp_path, docker_host, pulumi_settings, runtimes=[runtime]) as svc:
        try:
            op = operate(svc, "POST", "", json={
                "name": name,
                "resources": {"cpu": "250m", "memory": "128Mi", "storage": "64Mi"}})
            assert op["status"] == "succeeded", op
            round_trip(svc, name, 2 * 1024 * 1024)
            tar_round_trip(svc, name)
            escapes_refused(svc, name)
        finally:
            assert operate(svc, "DELETE", f"/{name}?queue=true")["status"] == "succeeded"
