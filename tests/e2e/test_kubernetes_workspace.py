"""The Kubernetes backend end to end: pulumi-kubernetes through the Automation
API against the real test cluster. Create from a git repository, stop, start,
update and delete a workspace, checking what a user sees at each step."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream

from components.runtime import KubernetesRuntime
from components.spec import WorkspaceSpec
from stacks.naming import resource_base, stack_name
from tests.e2e.repo_image import BASE_IMAGE, REPO_URL, docker_repo_image, make_repo
from tests.e2e.stack_helpers import (
    assert_operator_preview_is_clean,
    converger,
    ensure_namespace,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("kubernetes_provider")]
NAMESPACE = "stackspace-e2e"


@pytest.fixture(scope="module")
def kube(kube_cluster: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kube_cluster))


@pytest.fixture(scope="module")
def namespace(kube) -> Iterator[str]:
    core = client.CoreV1Api(kube)
    ensure_namespace(core, NAMESPACE)
    yield NAMESPACE


@pytest.fixture(scope="module")
def k8s_repo_image(kube_cluster: Path, docker_client, tmp_path_factory) -> str:
    """The repository image, made in Docker and imported into the cluster's containerd."""
    bare = make_repo(tmp_path_factory.mktemp("repo"), {"README.md": "hello from git\n"})
    tag = docker_repo_image(docker_client, bare, f"stackspace-test/repo:{secrets.token_hex(4)}")
    sock = kube_cluster.parent / "run" / "containerd.sock"
    image = docker_client.images.get(tag)
    data = b"".join(image.save(named=True))
    subprocess.run(["ctr", "--address", str(sock), "-n", "k8s.io", "images", "import", "-"],
                   input=data, check=True, capture_output=True)
    return tag


def exec_in(kube: client.ApiClient, pod: str, command: str) -> str:
    # stream() swaps the request function of the API object it is given: use a fresh one.
    return stream(client.CoreV1Api(kube).connect_get_namespaced_pod_exec, pod, NAMESPACE,
                  command=["sh", "-c", command], stderr=True, stdin=False, stdout=True,
                  tty=False, _preload_content=True)


def pod_gone(core: client.CoreV1Api, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, NAMESPACE)
    except ApiException as e:
        return e.status == 404
    return False


def test_kubernetes_workspace_lifecycle(runner, kube, kube_cluster, namespace, k8s_repo_image,
                                        pulumi_settings):
    core = client.CoreV1Api(kube)
    owner, name = "alice", f"kube-{secrets.token_hex(3)}"
    runtime = KubernetesRuntime(name="test-cluster", kubeconfig=str(kube_cluster),
                                namespace=namespace)
    spec = WorkspaceSpec.parse({
        "name": name, "image": k8s_repo_image,
        "repository": {"url": REPO_URL, "ref": "main", "credential": "k8s-secret-token"},
        "env": {"GREETING": "one"},
        "files": [{"path": ".config/app.toml", "content": "k = 1\n", "mode": "0600",
                   "secret": True}],
        "resources": {"cpu": "500m", "memory": "256Mi", "storage": "64Mi"},
    })
    stack = stack_name(owner, name)
    base = resource_base(owner, name)

    converge = converger(runner, owner, runtime, stack)

    result = converge(spec, True)
    pod_name = result.outputs["pod"]
    assert pod_name.startswith(base)
    pod = core.read_namespaced_pod(pod_name, namespace)
    assert pod.status.phase == "Running"
    assert pod.spec.automount_service_account_token is False
    assert pod.metadata.labels["stackspace.dev/owner"] == owner
    assert exec_in(kube, pod_name, "cat /workspace/README.md") == "hello from git\n"
    assert exec_in(kube, pod_name, "cat /workspace/.config/app.toml; id -u") == "k = 1\n1000\n"
    exec_in(kube, pod_name, "echo mine > /workspace/mine.txt")
    secret = core.read_namespaced_secret(f"{base}-secrets", namespace)
    assert "STACKSPACE_REPO_CREDENTIAL" in secret.data

    assert_operator_preview_is_clean(pulumi_settings, stack, "k8s-secret-token")

    converge(spec, False)
    assert pod_gone(core, pod_name)
    pvc = core.read_namespaced_persistent_volume_claim(f"{base}-home", namespace)
    assert pvc.status.phase == "Bound"

    assert converge(spec, True).outputs["pod"] == pod_name  # same spec, same pod name
    assert exec_in(kube, pod_name, "cat /workspace/mine.txt") == "mine\n"

    updated = spec.merged({"env": {"GREETING": "two"}, "image": BASE_IMAGE})
    new_pod = converge(updated, True).outputs["pod"]
    assert new_pod != pod_name and pod_gone(core, pod_name)
    assert core.read_namespaced_pod(new_pod, namespace).spec.containers[0].image == BASE_IMAGE
    assert exec_in(kube, new_pod, "echo $GREETING; cat /workspace/mine.txt") == "two\nmine\n"

    runner.delete(stack)
    assert pod_gone(core, new_pod)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_persistent_volume_claim(f"{base}-home", namespace)
        except ApiException as e:
            assert e.status == 404
            break
        time.sleep(0.5)
    else:
        raise AssertionError("PVC still present after delete")
    assert not runner.exists(stack)
