"""The exec proxy's Kubernetes backend (pods/exec through the API server) on the
real test cluster: a pod the test starts with a workspace's labels (a generated
name, as a Deployment's pods have), found by label selector and exec'd through
the proxy process."""

from __future__ import annotations

import io
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from proxy.server import ProxyConfig
from proxy.tickets import mint_ticket
from service.exec_client import run_exec
from tests.e2e.busybox_image import busybox_image
from tests.e2e.exec_fixtures import ProxyProcess
from tests.e2e.stack_helpers import ensure_namespace
from tests.e2e.test_kubernetes_workspace import import_into_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
KEY = os.urandom(32)
NAMESPACE = "stackspace-exec-e2e"


@pytest.fixture(scope="module", params=["workspace-image", "busybox-only"])
def pod(request, kube_cluster: Path, docker_client) -> Iterator[tuple[Path, str]]:
    """A running workspace pod: on the default image, and on one with nothing
    but BusyBox's /bin/sh (no GNU env, no bash): terminals work on any image
    that has /bin/sh."""
    image = ("docker.io/stackspace/workspace:bookworm" if request.param == "workspace-image"
             else import_into_cluster(kube_cluster, docker_client, busybox_image(docker_client)))
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kube_cluster)))
    ensure_namespace(core, NAMESPACE)
    name = f"exec-{secrets.token_hex(3)}"
    core.create_namespaced_pod(NAMESPACE, {
        "metadata": {"generateName": f"{name}-", "labels": {
            "stackspace.dev/workspace": name, "stackspace.dev/owner": "alice",
            "stackspace.dev/role": "workspace"}},
        "spec": {"automountServiceAccountToken": False, "terminationGracePeriodSeconds": 1,
                 "containers": [{
                     "name": "workspace", "image": image,
                     "imagePullPolicy": "IfNotPresent", "command": ["sleep", "infinity"],
                     "workingDir": "/workspace",
                     "securityContext": {"runAsUser": 1000, "runAsNonRoot": True,
                                         "allowPrivilegeEscalation": False,
                                         "capabilities": {"drop": ["ALL"]}}}]}})
    selector = f"stackspace.dev/workspace={name}"
    deadline = time.monotonic() + 120
    while not [p for p in core.list_namespaced_pod(NAMESPACE, label_selector=selector).items
               if p.status.phase == "Running"]:
        assert time.monotonic() < deadline, "pod did not start"
        time.sleep(0.5)
    yield kube_cluster, name
    core.delete_collection_namespaced_pod(
        NAMESPACE, label_selector=selector, grace_period_seconds=0)


def test_exec_through_proxy_into_a_pod(pod):
    kubeconfig, name = pod
    runtime = {"name": "cluster", "type": "kubernetes", "kubeconfig": str(kubeconfig),
               "namespace": NAMESPACE}
    target = {"type": "kubernetes", "runtime": runtime, "owner": "alice", "workspace": name,
              "container": "workspace"}
    with ProxyProcess.running(ProxyConfig(key=KEY)) as proxy:
        # A few rounds: output that comes right before the exit (stdout, stderr
        # and the close in one read) was lost about once in 30 execs while the
        # reader dropped what it had buffered at the close (proxy.backends _pump).
        for _ in range(3):
            ticket, _ = mint_ticket(KEY, user="alice", workspace="alice/k", target=target,
                                    command=["sh", "-c", "id -u; pwd; cat; echo err >&2; exit 6"],
                                    tty=False)
            out, err = io.BytesIO(), io.BytesIO()
            code = run_exec(proxy.url, ticket, io.BytesIO(b"through the pod\n"), out, err)
            assert (code, out.getvalue(), err.getvalue()) == (
                6, b"1000\n/workspace\nthrough the pod\n", b"err\n")
