"""Two installations (own data dirs, stores, Pulumi backends, proxies) in one
namespace of the real test cluster: the same owner/name in both, each
terminal reaches its own pod, and deleting in one leaves the other's pod, PVC
and files alone."""

from __future__ import annotations

import dataclasses
import io
import secrets
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from proxy.backends import workspace_selector
from service.exec_client import run_exec
from tests.api.conftest import custom_service
from tests.api.test_api_lifecycle import wait_op
from tests.e2e.stack_helpers import ensure_namespace

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("kubernetes_provider")]
NAMESPACE = "stackspace-installations-e2e"
LABEL_INSTALLATION = "stackspace.dev/installation"


def _settings(pulumi_settings, data_dir: Path):
    (data_dir / "state").mkdir(parents=True)
    return dataclasses.replace(pulumi_settings, backend_url=f"file://{data_dir / 'state'}")


def _exec(svc, name: str, script: str) -> tuple[int, bytes]:
    grant = svc.call("POST", f"/api/v1/workspaces/{name}/terminals", svc.alice,
                     json={"command": ["sh", "-c", script], "tty": False}).json()
    out = io.BytesIO()
    code = run_exec(grant["url"], grant["ticket"], io.BytesIO(), out, io.BytesIO())
    return code, out.getvalue()


def test_two_installations_in_one_namespace_never_touch_each_others_objects(
        tmp_path, kube_cluster, docker_host, pulumi_settings):
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kube_cluster)))
    ensure_namespace(core, NAMESPACE)
    runtime = {"name": "cluster", "type": "kubernetes", "kubeconfig": str(kube_cluster),
               "namespace": NAMESPACE}
    name = f"inst-k-{secrets.token_hex(3)}"
    body = {"name": name, "resources": {"cpu": "250m", "memory": "128Mi", "storage": "32Mi"}}
    dir_a, dir_b = tmp_path / "a", tmp_path / "b"
    with custom_service(dir_a, docker_host, _settings(pulumi_settings, dir_a),
                        runtimes=[runtime]) as a, \
            custom_service(dir_b, docker_host, _settings(pulumi_settings, dir_b),
                           runtimes=[runtime]) as b:
        ids = (a.store.installation_id, b.store.installation_id)
        assert all(ids) and ids[0] != ids[1]
        try:
            outputs = []
            for svc in (a, b):
                op = wait_op(svc, svc.alice, svc.call("POST", "/api/v1/workspaces", svc.alice,
                                                      json=body).json()["id"])
                assert op["status"] == "succeeded", op["error"]
                outputs.append(svc.call("GET", f"/api/v1/workspaces/{name}",
                                        svc.alice).json()["outputs"])
            out_a, out_b = outputs
            assert out_a["storage"] != out_b["storage"]
            for out, inst in zip(outputs, ids, strict=True):
                pvc = core.read_namespaced_persistent_volume_claim(out["storage"], NAMESPACE)
                assert pvc.metadata.labels[LABEL_INSTALLATION] == inst

            # The proxy's selector: one pod per id; a legacy ticket's finds neither.
            for inst in ids:
                assert len(core.list_namespaced_pod(NAMESPACE, label_selector=(
                    workspace_selector("alice", name, inst))).items) == 1
            assert not core.list_namespaced_pod(NAMESPACE, label_selector=(
                workspace_selector("alice", name, ""))).items

            assert _exec(a, name, "echo from-a > /workspace/mark") == (0, b"")
            # B's terminal opens B's pod: A's file is not on its storage.
            assert _exec(b, name, "cat /workspace/mark 2>/dev/null; echo b > mark-b") == (0, b"")
            assert _exec(a, name, "cat /workspace/mark; ls /workspace") == (0, b"from-a\nmark\n")

            op = wait_op(b, b.alice, b.call("DELETE", f"/api/v1/workspaces/{name}",
                                            b.alice).json()["id"])
            assert op["status"] == "succeeded", op
            with pytest.raises(ApiException) as gone:
                core.read_namespaced_persistent_volume_claim(out_b["storage"], NAMESPACE)
            assert gone.value.status == 404
            kept = core.read_namespaced_persistent_volume_claim(out_a["storage"], NAMESPACE)
            assert kept.metadata.deletion_timestamp is None
            state = a.call("GET", f"/api/v1/workspaces/{name}", a.alice).json()
            assert state["state"] == "running", state
            assert _exec(a, name, "cat /workspace/mark") == (0, b"from-a\n")
        finally:
            for svc in (a, b):
                if svc.store.workspace("alice", name):
                    wait_op(svc, svc.alice, svc.call("DELETE", f"/api/v1/workspaces/{name}",
                                                     svc.alice).json()["id"])
        left = core.list_namespaced_persistent_volume_claim(
            NAMESPACE, label_selector=f"stackspace.dev/workspace={name}").items
        assert not left
