"""The service on a Kubernetes runtime: workspaces over HTTP on the real test
cluster, and a terminal into the workspace pod through the exec proxy."""

from __future__ import annotations

import io
import secrets

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from service.exec_client import run_exec
from tests.api.conftest import custom_service
from tests.api.test_api_lifecycle import wait_op
from tests.e2e.stack_helpers import ensure_namespace

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("kubernetes_provider")]
NAMESPACE = "stackspace-svc-e2e"


def test_workspace_lifecycle_and_exec_on_kubernetes(tmp_path, kube_cluster, docker_host,
                                                    pulumi_settings):
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kube_cluster)))
    ensure_namespace(core, NAMESPACE)
    runtime = {"name": "cluster", "type": "kubernetes", "kubeconfig": str(kube_cluster),
               "namespace": NAMESPACE}
    with custom_service(tmp_path, docker_host, pulumi_settings, runtimes=[runtime]) as svc:
        name = f"k-{secrets.token_hex(3)}"
        op = wait_op(svc, svc.alice, svc.call("POST", "/api/v1/workspaces", svc.alice, json={
            "name": name, "resources": {"cpu": "250m", "memory": "128Mi", "storage": "32Mi"},
            "files": [{"path": "hello.txt", "content": "from the spec\n"}]}).json()["id"])
        assert op["status"] == "succeeded", op
        ws = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()
        assert ws["state"] == "running" and ws["runtime"] == "cluster"
        # The workspace is a Deployment; its pod is found by labels, as the proxy does.
        pods = core.list_namespaced_pod(NAMESPACE, label_selector=(
            f"stackspace.dev/workspace={name},stackspace.dev/role=workspace")).items
        assert ws["outputs"]["deployment"] and any(p.status.phase == "Running" for p in pods)

        grant = svc.call("POST", f"/api/v1/workspaces/{name}/terminals", svc.alice,
                         json={"command": ["sh", "-c", "cat hello.txt; exit 2"],
                               "tty": False}).json()
        out, err = io.BytesIO(), io.BytesIO()
        assert run_exec(grant["url"], grant["ticket"], io.BytesIO(), out, err) == 2
        assert out.getvalue() == b"from the spec\n"

        op = wait_op(svc, svc.alice, svc.call("POST", f"/api/v1/workspaces/{name}/stop",
                                              svc.alice).json()["id"])
        assert op["status"] == "succeeded", op
        pvc = core.read_namespaced_persistent_volume_claim(ws["outputs"]["storage"], NAMESPACE)
        assert pvc.status.phase == "Bound"

        op = wait_op(svc, svc.alice, svc.call("DELETE", f"/api/v1/workspaces/{name}",
                                              svc.alice).json()["id"])
        assert op["status"] == "succeeded", op
        with pytest.raises(ApiException) as gone:
            core.read_namespaced_persistent_volume_claim(ws["outputs"]["storage"], NAMESPACE)
        assert gone.value.status == 404
