"""The Kubernetes backend end to end: pulumi-kubernetes through the Automation
API against the real test cluster. Create from a git repository, stop, start,
update and delete a workspace, checking what a user sees at each step."""

from __future__ import annotations

import hashlib
import json
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
from components.spec import MAX_FILE_BYTES, WorkspaceSpec
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


def import_into_cluster(kube_cluster: Path, docker_client, tag: str) -> str:
    """Copy a Docker image into the cluster's containerd (no registry here)."""
    sock = kube_cluster.parent / "run" / "containerd.sock"
    data = b"".join(docker_client.images.get(tag).save(named=True))
    subprocess.run(["ctr", "--address", str(sock), "-n", "k8s.io", "images", "import", "-"],
                   input=data, check=True, capture_output=True)
    return tag


def cluster_repo_image(kube_cluster: Path, docker_client, tmp: Path, files: dict[str, str]
                       ) -> str:
    """An image with a repository of `files` baked in (tests.e2e.repo_image), made in
    Docker under `tmp` and imported into the cluster's containerd."""
    bare = make_repo(tmp, files)
    tag = docker_repo_image(docker_client, bare, f"stackspace-test/repo:{secrets.token_hex(4)}")
    return import_into_cluster(kube_cluster, docker_client, tag)


@pytest.fixture(scope="module")
def k8s_repo_image(kube_cluster: Path, docker_client, tmp_path_factory) -> str:
    """The repository image, made in Docker and imported into the cluster's containerd."""
    return cluster_repo_image(kube_cluster, docker_client, tmp_path_factory.mktemp("repo"),
                              {"README.md": "hello from git\n"})


def workspace_pod(core: client.CoreV1Api, owner: str, name: str, not_name: str = "") -> str:
    """The running, ready workspace pod, found by its labels as clients find it."""
    selector = (f"stackspace.dev/workspace={name},stackspace.dev/owner={owner},"
                "stackspace.dev/role=workspace")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for pod in core.list_namespaced_pod(NAMESPACE, label_selector=selector).items:
            ready = any(c.type == "Ready" and c.status == "True"
                        for c in pod.status.conditions or [])
            if (pod.metadata.name != not_name and pod.metadata.deletion_timestamp is None
                    and pod.status.phase == "Running" and ready):
                return pod.metadata.name
        time.sleep(1)
    raise AssertionError(f"no running workspace pod for {owner}/{name}")


def exec_in(kube: client.ApiClient, pod: str, command: str) -> str:
    # stream() swaps the request function of the API object it is given: use a fresh one.
    return stream(client.CoreV1Api(kube).connect_get_namespaced_pod_exec, pod, NAMESPACE,
                  command=["sh", "-c", command], stderr=True, stdin=False, stdout=True,
                  tty=False, _preload_content=True)


def pod_gone(core: client.CoreV1Api, name: str) -> bool:
    """Whether the pod is gone (waits out its termination: a Deployment's pods are
    removed by Kubernetes' garbage collector, after their grace period)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_pod(name, NAMESPACE)
        except ApiException as e:
            return e.status == 404
        time.sleep(0.5)
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
    assert result.outputs["deployment"] == base
    pod_name = workspace_pod(core, owner, name)
    pod = core.read_namespaced_pod(pod_name, namespace)
    assert pod.status.phase == "Running"
    assert pod.spec.automount_service_account_token is False
    assert pod.metadata.labels["stackspace.dev/owner"] == owner
    assert exec_in(kube, pod_name, "cat /workspace/README.md") == "hello from git\n"
    assert exec_in(kube, pod_name, "cat /workspace/.config/app.toml; id -u") == "k = 1\n1000\n"
    # The workspace command is not PID 1 (the pause process is), so SIGTERM stops it.
    assert exec_in(kube, pod_name, "cat /proc/1/comm") != "sleep\n"
    assert "sleep" in exec_in(kube, pod_name, "cat /proc/[0-9]*/comm")
    exec_in(kube, pod_name, "echo mine > /workspace/mine.txt")
    secret = core.read_namespaced_secret(f"{base}-input", namespace)
    assert "credential" in secret.data

    assert_operator_preview_is_clean(runner, stack, "k8s-secret-token")

    # Self-healing: the pod is deleted behind stackspace's back; the Deployment
    # brings a new one on the same storage, without any stackspace call.
    core.delete_namespaced_pod(pod_name, namespace)
    healed = workspace_pod(core, owner, name, not_name=pod_name)
    assert exec_in(kube, healed, "cat /workspace/mine.txt") == "mine\n"
    pod_name = healed

    converge(spec, False)
    assert pod_gone(core, pod_name)
    pvc = core.read_namespaced_persistent_volume_claim(f"{base}-home", namespace)
    assert pvc.status.phase == "Bound"

    converge(spec, True)
    pod_name = workspace_pod(core, owner, name)
    assert exec_in(kube, pod_name, "cat /workspace/mine.txt") == "mine\n"

    updated = spec.merged({"env": {"GREETING": "two"}, "image": BASE_IMAGE})
    converge(updated, True)
    new_pod = workspace_pod(core, owner, name, not_name=pod_name)
    assert pod_gone(core, pod_name)
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


def init_jobs(batch: client.BatchV1Api, name: str) -> list:
    return batch.list_namespaced_job(NAMESPACE, label_selector=(
        f"stackspace.dev/workspace={name},stackspace.dev/role=init")).items


def job_logs(core: client.CoreV1Api, job: str) -> str:
    [pod] = core.list_namespaced_pod(NAMESPACE, label_selector=f"job-name={job}").items
    return core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE)


def test_kubernetes_user_edits_survive_and_no_secret_lingers(runner, kube, kube_cluster,
                                                             namespace, k8s_repo_image,
                                                             pulumi_settings):
    core, batch = client.CoreV1Api(kube), client.BatchV1Api(kube)
    owner, name = "alice", f"content-kube-{secrets.token_hex(3)}"
    runtime = KubernetesRuntime(name="test-cluster", kubeconfig=str(kube_cluster),
                                namespace=namespace)
    token, body, env_value = (f"{kind}-{secrets.token_hex(12)}"
                              for kind in ("repo-token", "file-body", "env-token"))
    big = "0123456789abcdef" * (MAX_FILE_BYTES // 16)  # exactly the limit
    files = [{"path": "notes/todo.txt", "content": "spec todo\n"},
             {"path": "cfg/app.toml", "content": "k = 1\n"},
             {"path": ".ssh/id", "content": body, "mode": "0600", "secret": True},
             {"path": "data/big.txt", "content": big}]
    spec = WorkspaceSpec.parse({
        "name": name, "image": k8s_repo_image,
        "repository": {"url": REPO_URL, "credential": token, "username": "oauth2"},
        "secret_env": {"ONEDEV_WORKSPACE_TOKEN": env_value},
        "files": files,
        "resources": {"cpu": "500m", "memory": "256Mi", "storage": "64Mi"},
    })
    stack = stack_name(owner, name)
    converge = converger(runner, owner, runtime, stack)
    converge(spec, True)
    pod = workspace_pod(core, owner, name)

    # Large file intact; secret env present; no secret in any Job or pod object.
    assert exec_in(kube, pod, "sha256sum < /workspace/data/big.txt").split()[0] == \
        hashlib.sha256(big.encode()).hexdigest()
    assert exec_in(kube, pod, 'printf %s "$ONEDEV_WORKSPACE_TOKEN"') == env_value
    sanitize = kube.sanitize_for_serialization
    objects = [*init_jobs(batch, name),
               *core.list_namespaced_pod(namespace, label_selector=(
                   f"stackspace.dev/workspace={name}")).items,
               *client.AppsV1Api(kube).list_namespaced_deployment(namespace, label_selector=(
                   f"stackspace.dev/workspace={name}")).items]
    assert len(objects) >= 4  # Job, its pod, the workspace pod, the Deployment
    dumped = json.dumps([sanitize(o) for o in objects])
    for value in (token, body, env_value):
        assert value not in dumped
    # The whole storage: only the secret file holds its body, nothing else a secret.
    assert exec_in(kube, pod, "cat /workspace/.ssh/id") == body
    for value in (token, body, env_value):
        assert exec_in(kube, pod, f"grep -rlF --exclude=id {value} /workspace; echo rc=$?") \
            == "rc=1\n"

    exec_in(kube, pod, "echo user todo > /workspace/notes/todo.txt; "
                       "echo mine > /workspace/notes/mine.txt")
    [first_job] = init_jobs(batch, name)
    spec = spec.merged({"image": BASE_IMAGE})
    converge(spec, True)
    spec = spec.merged({"env": {"GREETING": "hi"}})
    converge(spec, True)
    assert [j.metadata.name for j in init_jobs(batch, name)] == [first_job.metadata.name]
    pod = workspace_pod(core, owner, name)
    assert exec_in(kube, pod, "cat /workspace/notes/todo.txt /workspace/notes/mine.txt") == \
        "user todo\nmine\n"

    changed = [files[0], {**files[1], "content": "k = 2\n"}, files[2], files[3]]
    spec = spec.merged({"files": changed})
    converge(spec, True)
    [second_job] = init_jobs(batch, name)
    assert second_job.metadata.name != first_job.metadata.name
    logs = job_logs(core, second_job.metadata.name)
    assert "wrote cfg/app.toml" in logs
    assert "wrote notes/todo.txt" not in logs and "wrote data/big.txt" not in logs
    pod = workspace_pod(core, owner, name)
    assert exec_in(kube, pod, "cat /workspace/cfg/app.toml /workspace/notes/todo.txt "
                              "/workspace/notes/mine.txt") == "k = 2\nuser todo\nmine\n"
    assert_operator_preview_is_clean(runner, stack, token)
    runner.delete(stack)


def test_kubernetes_command_replaces_the_image_entrypoint(runner, kube, kube_cluster, namespace,
                                                         k8s_repo_image, docker_client):
    container = docker_client.containers.create(k8s_repo_image, command=["true"])
    try:
        tag = f"stackspace-test/stubborn:{secrets.token_hex(4)}"
        container.commit(repository=tag.split(":")[0], tag=tag.split(":")[1], changes=[
            'ENTRYPOINT ["/bin/sh", "-c", "echo entrypoint ignores its args; exit 7"]'])
    finally:
        container.remove(force=True)
    image = import_into_cluster(kube_cluster, docker_client, tag)
    core = client.CoreV1Api(kube)
    owner, name = "alice", f"content-kentry-{secrets.token_hex(3)}"
    runtime = KubernetesRuntime(name="test-cluster", kubeconfig=str(kube_cluster),
                                namespace=namespace)
    spec = WorkspaceSpec.parse({
        "name": name, "image": image, "repository": {"url": REPO_URL},
        "files": [{"path": "hello.txt", "content": "hi\n"}],
        "resources": {"cpu": "250m", "memory": "128Mi", "storage": "16Mi"},
        "command": ["sh", "-c", "echo started > /tmp/started; exec sleep infinity"]})
    stack = stack_name(owner, name)
    converger(runner, owner, runtime, stack)(spec, True)
    pod = workspace_pod(core, owner, name)
    assert exec_in(kube, pod, "cat /tmp/started /workspace/hello.txt /workspace/README.md") == \
        "started\nhi\nhello from git\n"
    runner.delete(stack)
