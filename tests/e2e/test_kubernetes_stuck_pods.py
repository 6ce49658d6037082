"""A Kubernetes workspace whose pod cannot start fails its run at once, saying
why (service/workload_watch.py), instead of after the engine's await of 5 to
10 minutes; and the workspace is never stuck: a PATCH that fixes the cause
makes it run, on the same storage.

Through the service on the real engine and the test cluster: an image that
cannot be pulled (the cluster has no registry and no outbound network), then
the PATCHed image, which the failed init is made again with."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.api.conftest import custom_service
from tests.e2e.remote_helpers import operate, stackspace_exec
from tests.e2e.stack_helpers import ensure_namespace
from tests.e2e.test_kubernetes_workspace import cluster_repo_image

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("kubernetes_provider")]
NAMESPACE = "stackspace-stuck-e2e"


def test_a_pod_that_cannot_start_fails_the_run_at_once_and_a_patch_fixes_it(
        tmp_path, kube_cluster: Path, docker_host, docker_client, pulumi_settings):
    kube = config.new_client_from_config(config_file=str(kube_cluster))
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    ensure_namespace(core, NAMESPACE)
    (tmp_path / "repo").mkdir()
    image = cluster_repo_image(kube_cluster, docker_client, tmp_path / "repo",
                               {"README.md": "hello from git\n"})
    runtime = {"name": "cluster", "type": "kubernetes", "kubeconfig": str(kube_cluster),
               "namespace": NAMESPACE}
    name = f"stuck-{secrets.token_hex(3)}"
    missing = f"stackspace-test/missing:{secrets.token_hex(4)}"
    credential = f"glpat-{secrets.token_hex(8)}"
    selector = f"stackspace.dev/workspace={name}"
    with custom_service(tmp_path / "svc", docker_host, pulumi_settings, runtimes=[runtime]) as svc:
        try:
            # An image no registry serves: the init pod cannot pull it.
            op = operate(svc, "POST", "", json={
                "name": name, "image": missing,
                "repository": {"url": "file:///srv/app.git", "credential": credential},
                "resources": {"cpu": "250m", "memory": "128Mi", "storage": "32Mi"}})
            assert (op["status"], op["error_type"]) == ("failed", "WorkloadStuck"), op
            assert "cannot start: ImagePullBackOff" in op["error"], op["error"]
            assert missing in op["error"], op["error"]  # the kubelet's pull error names it
            ws = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()
            assert ws["state"] == "failed" and ws["last_error"] == op["error"], ws
            assert credential not in json.dumps(ws)

            # The image PATCHed: the failed init runs again with it and clones.
            op = operate(svc, "PATCH", f"/{name}", json={"image": image})
            assert op["status"] == "succeeded", op.get("error")
            r = stackspace_exec(svc, name, "sh", "-c", "cat README.md; echo mine > notes")
            assert (r.returncode, r.stdout) == (0, b"hello from git\n"), r.stderr
            ws = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()
            assert ws["state"] == "running" and ws["outputs"]["initialized"] is True, ws
            # Stopped and started: the same storage, init not run again.
            assert operate(svc, "POST", f"/{name}/stop")["status"] == "succeeded"
            assert operate(svc, "POST", f"/{name}/start")["status"] == "succeeded"
            assert stackspace_exec(svc, name, "cat", "notes").stdout == b"mine\n"
        finally:
            assert operate(svc, "DELETE", f"/{name}?queue=true")["status"] == "succeeded"
    assert core.list_namespaced_pod(NAMESPACE, label_selector=selector).items == []
    assert apps.list_namespaced_deployment(NAMESPACE, label_selector=selector).items == []
    assert core.list_namespaced_persistent_volume_claim(
        NAMESPACE, label_selector=selector).items == []
