"""The test cluster is a real Kubernetes: PVCs bind, Jobs run, pods start, exec works.

Drives scripts/test-cluster through the ``kube_cluster`` fixture and talks to
it only through the Kubernetes API (official ``kubernetes`` client).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream

pytestmark = pytest.mark.e2e

WORKSPACE_IMAGE = "docker.io/stackspace/workspace:bookworm"
PAUSE_IMAGE = "localhost/stackspace/pause:1"
NODE_NAME = "127.0.0.1"
MARKER = "written-by-the-job"
# Workspaces run as this user; a claim's volume must be writable by it.
WORKSPACE_UID = 1000

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 120.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def api(kube_cluster: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kube_cluster))


@pytest.fixture(scope="module")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(
        "the namespace's default service account",
        lambda: not _gone(lambda: core.read_namespaced_service_account("default", name)),
        timeout=60,
    )
    yield name
    core.delete_namespace(name)
    wait_for("namespace deletion", lambda: _gone(lambda: core.read_namespace(name)), timeout=120)


def _gone(read: Callable[[], Any]) -> bool:
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def _volume(claim: str) -> client.V1Volume:
    return client.V1Volume(
        name="data",
        persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name=claim),
    )


def _container(command: list[str], ready_file: str | None = None) -> client.V1Container:
    probe = None
    if ready_file:
        probe = client.V1Probe(
            _exec=client.V1ExecAction(command=["test", "-f", ready_file]),
            period_seconds=1,
        )
    return client.V1Container(
        name="main",
        image=WORKSPACE_IMAGE,
        # Imported into containerd by scripts/test-cluster: never pulled.
        image_pull_policy="Never",
        command=command,
        volume_mounts=[client.V1VolumeMount(name="data", mount_path="/data")],
        readiness_probe=probe,
        security_context=client.V1SecurityContext(
            run_as_user=WORKSPACE_UID,
            run_as_group=WORKSPACE_UID,
            run_as_non_root=True,
            allow_privilege_escalation=False,
        ),
    )


def _start_pod(core: client.CoreV1Api, ns: str, name: str, claim: str) -> client.V1Pod:
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            containers=[_container(["sleep", "infinity"], ready_file=f"/data/{MARKER}")],
            volumes=[_volume(claim)],
            termination_grace_period_seconds=1,
        ),
    )
    core.create_namespaced_pod(ns, pod)

    def ready() -> client.V1Pod | None:
        current = core.read_namespaced_pod(name, ns)
        conditions = current.status.conditions or []
        if any(c.type == "Ready" and c.status == "True" for c in conditions):
            return current
        return None

    return wait_for(f"pod {name} to be Ready", ready, timeout=120)


def _exec(api: client.ApiClient, ns: str, pod: str, command: list[str]) -> str:
    # stream() swaps the client's request function: use a CoreV1Api of its own.
    out: str = stream(
        client.CoreV1Api(api).connect_get_namespaced_pod_exec,
        pod,
        ns,
        command=command,
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )
    return out


def test_node_is_ready_with_images_and_default_storage_class(
    api: client.ApiClient, core: client.CoreV1Api
) -> None:
    node = core.read_node(NODE_NAME)
    ready = [c for c in node.status.conditions if c.type == "Ready"]
    assert ready and ready[0].status == "True"
    assert node.status.node_info.kubelet_version.startswith("v1.34.")
    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    images = {name for image in node.status.images for name in (image.names or [])}
    assert PAUSE_IMAGE in images
    assert WORKSPACE_IMAGE in images
    classes = client.StorageV1Api(api).list_storage_class().items
    defaults = [
        sc
        for sc in classes
        if (sc.metadata.annotations or {}).get("storageclass.kubernetes.io/is-default-class")
        == "true"
    ]
    assert [sc.provisioner for sc in defaults] == ["kubernetes.io/host-path"]


def test_pvc_job_pod_exec_and_volume_lifecycle(
    api: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    ns = namespace
    # A claim on the default StorageClass binds to a dynamically provisioned volume.
    core.create_namespaced_persistent_volume_claim(
        ns,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name="data"),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                resources=client.V1VolumeResourceRequirements(requests={"storage": "16Mi"}),
            ),
        ),
    )
    claim = wait_for(
        "the PVC to bind",
        lambda: (
            pvc
            if (pvc := core.read_namespaced_persistent_volume_claim("data", ns)).status.phase
            == "Bound"
            else None
        ),
    )
    pv_name = claim.spec.volume_name
    pv = core.read_persistent_volume(pv_name)
    host_dir = Path(pv.spec.host_path.path)
    assert host_dir.is_dir()

    # A Job writes a file into it and completes.
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(
        ns,
        client.V1Job(
            metadata=client.V1ObjectMeta(name="writer"),
            spec=client.V1JobSpec(
                backoff_limit=0,
                template=client.V1PodTemplateSpec(
                    spec=client.V1PodSpec(
                        restart_policy="Never",
                        containers=[
                            _container(["sh", "-c", f"echo {MARKER} > /data/{MARKER}"]),
                        ],
                        volumes=[_volume("data")],
                    )
                ),
            ),
        ),
    )

    def job_done() -> bool:
        status = batch.read_namespaced_job("writer", ns).status
        if status.failed:
            pytest.fail(f"job failed: {status}")
        return bool(status.succeeded)

    wait_for("the job to complete", job_done)
    assert (host_dir / MARKER).read_text() == f"{MARKER}\n"
    assert (host_dir / MARKER).stat().st_uid == WORKSPACE_UID

    # A pod that mounts the claim becomes Ready; exec through the API reads the file.
    _start_pod(core, ns, "reader-1", "data")
    assert _exec(api, ns, "reader-1", ["cat", f"/data/{MARKER}"]) == f"{MARKER}\n"

    # Deleting the pod keeps the claim and its data.
    core.delete_namespaced_pod("reader-1", ns, grace_period_seconds=0)
    wait_for(
        "pod reader-1 to go",
        lambda: _gone(lambda: core.read_namespaced_pod("reader-1", ns)),
    )
    assert core.read_namespaced_persistent_volume_claim("data", ns).status.phase == "Bound"
    assert (host_dir / MARKER).is_file()

    # A new pod sees the same file.
    _start_pod(core, ns, "reader-2", "data")
    assert _exec(api, ns, "reader-2", ["cat", f"/data/{MARKER}"]) == f"{MARKER}\n"

    # Deleting the claim (once no pod uses it) removes the volume and its data.
    core.delete_namespaced_pod("reader-2", ns, grace_period_seconds=0)
    batch.delete_namespaced_job("writer", ns, propagation_policy="Foreground")
    core.delete_namespaced_persistent_volume_claim("data", ns)
    wait_for(
        "the PV to be deleted",
        lambda: _gone(lambda: core.read_persistent_volume(pv_name)),
    )
    wait_for("the volume directory to be removed", lambda: not host_dir.exists(), timeout=30)
