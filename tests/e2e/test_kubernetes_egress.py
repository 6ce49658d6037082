"""The outbound allowlist on Kubernetes (a runtime's `egress_allow`): through the
service on the real test cluster, the workspace's NetworkPolicy, as the API
server accepted and stores it, limits egress to the allowlist (host names as
the addresses they resolve to, ports as TCP) plus DNS to the cluster's DNS
pods, and it selects the workspace's pod. The test cluster's CNI (the plain
bridge plugin) enforces no NetworkPolicy, so this checks the declared object,
not the traffic; the Docker test checks the traffic."""

from __future__ import annotations

import secrets

import pytest
from kubernetes import client, config

from tests.api.conftest import custom_service
from tests.e2e.remote_helpers import operate, wait_op
from tests.e2e.stack_helpers import ensure_namespace

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("kubernetes_provider")]
NAMESPACE = "stackspace-egress-e2e"


def test_network_policy_limits_egress(tmp_path, kube_cluster, docker_host, pulumi_settings):
    api = config.new_client_from_config(config_file=str(kube_cluster))
    core, net = client.CoreV1Api(api), client.NetworkingV1Api(api)
    ensure_namespace(core, NAMESPACE)
    runtime = {"name": "cluster", "type": "kubernetes", "kubeconfig": str(kube_cluster),
               "namespace": NAMESPACE, "egress_allow": ["localhost:22", "10.0.0.0/8"]}
    name = f"eg-{secrets.token_hex(3)}"
    with custom_service(tmp_path, docker_host, pulumi_settings, runtimes=[runtime]) as svc:
        try:
            op = operate(svc, "POST", "", json={
                "name": name, "resources": {"cpu": "250m", "memory": "128Mi",
                                            "storage": "32Mi"}})
            assert op["status"] == "succeeded", op.get("error")
            selector = f"stackspace.dev/workspace={name},stackspace.dev/owner=alice"
            (policy,) = net.list_namespaced_network_policy(NAMESPACE,
                                                           label_selector=selector).items
            spec = policy.spec
            assert spec.policy_types == ["Ingress", "Egress"] and not spec.ingress
            dns, ssh, private = spec.egress
            assert {(p.protocol, p.port) for p in dns.ports} == {("UDP", 53), ("TCP", 53)}
            assert dns.to[0].pod_selector.match_labels == {"k8s-app": "kube-dns"}
            assert "127.0.0.1/32" in {t.ip_block.cidr for t in ssh.to}
            assert [(p.protocol, p.port) for p in ssh.ports] == [("TCP", 22)]
            assert [t.ip_block.cidr for t in private.to] == ["10.0.0.0/8"]
            assert private.ports is None
            # It selects the workspace's pod.
            pods = core.list_namespaced_pod(NAMESPACE, label_selector=",".join(
                f"{k}={v}" for k, v in spec.pod_selector.match_labels.items())).items
            assert any(p.metadata.labels.get("stackspace.dev/role") == "workspace"
                       for p in pods)
        finally:
            r = svc.call("DELETE", f"/api/v1/workspaces/{name}?queue=true", svc.alice)
            if r.status_code == 202:
                assert wait_op(svc, svc.alice, r.json()["id"])["status"] == "succeeded"
