"""A workspace's objects on its runtime, found by their labels rather than by
Pulumi's state: whether its workload runs (what the API reports after an
interrupted run), and removing everything it owns at delete, including
objects an interrupted run created but never recorded.

Every object a workspace owns carries `stackspace.dev/workspace` and
`stackspace.dev/owner`, plus `stackspace.dev/installation` when the store has
an installation id (components/base.py): together unique across installations
sharing a Docker Engine or a namespace, so one never observes or removes
another's objects. With the empty id (a store made before ids existed) the
lookups select objects without an installation label: such a store never
touches an installation that has an id, but still shares the old hazard with
any other legacy installation on the same runtime.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from components.base import (
    LABEL_ROLE,
    label_filters,
    label_selector,
    same_installation,
    workspace_labels,
)
from components.clients import docker_client, kube_api_client
from components.egress import HOLDER_IMAGE, HOLDER_MISSING
from components.runtime import INTERNAL, SHARED_NETWORKS, DockerRuntime, Runtime

log = logging.getLogger("stackspace.runtime_objects")


def workload_running(rt: Runtime, owner: str, name: str, *, installation: str) -> bool | None:
    """Whether the workspace's container/pod runs now; None if the runtime
    cannot be asked (unreachable host, no cluster)."""
    labels = {**workspace_labels(owner, name, installation), LABEL_ROLE: "workspace"}
    try:
        if isinstance(rt, DockerRuntime):
            client = docker_client(rt, timeout=10)
            try:
                return any(c.status == "running"
                           for c in containers(client, labels, include_stopped=False))
            finally:
                client.close()
        from kubernetes import client as k8s

        core = k8s.CoreV1Api(kube_api_client(rt))
        pods = core.list_namespaced_pod(rt.namespace, label_selector=label_selector(labels))
        return any(p.status.phase == "Running" and p.metadata.deletion_timestamp is None
                   for p in pods.items)
    except Exception as e:  # noqa: BLE001 - "cannot tell" is an answer here
        log.warning("cannot observe workload", extra={"runtime": rt.name,
                                                      "error_type": type(e).__name__})
        return None


def containers(client: Any, selected: dict[str, str], include_stopped: bool = True
                ) -> list[Any]:
    """The Docker containers `selected` (workspace_labels, maybe with a role) picks."""
    found = client.containers.list(all=include_stopped,
                                   filters={"label": label_filters(selected)})
    return [c for c in found if same_installation(selected, c.labels)]


def remove_unrecorded(rt: Runtime, owner: str, name: str, recorded: set[str], *,
                      installation: str) -> int:
    """Remove the workspace's containers that Pulumi's state does not record:
    what a cut-off run made but never recorded (they hold no user data; a
    leftover would block the next run with "name already in use"). Kubernetes
    objects need none of this: pulumi-kubernetes applies an object that exists
    (server-side apply), and delete removes whatever carries the labels."""
    if not isinstance(rt, DockerRuntime):
        return 0
    client = docker_client(rt)
    try:
        gone = 0
        for c in containers(client, workspace_labels(owner, name, installation)):
            if c.id not in recorded:
                c.remove(force=True)
                gone += 1
        return gone
    finally:
        client.close()


def ensure_network(rt: Runtime) -> None:
    """Make the shared network a Docker runtime's `isolated` or `internal`
    mode names (components.runtime), once per engine: a bridge with
    inter-container traffic off, internal (no route out) for `internal`. It
    belongs to no workspace: no workspace label, never removed by a delete."""
    if not isinstance(rt, DockerRuntime) or rt.network_mode not in SHARED_NETWORKS:
        return
    import docker.errors

    name = SHARED_NETWORKS[rt.network_mode]
    try:
        client = docker_client(rt)
    except docker.errors.DockerException as e:
        raise ConnectionError(f"runtime {rt.name!r}: cannot reach the Docker Engine: {e}") from e
    try:
        if client.networks.list(names=[name]):
            return
        try:
            client.networks.create(
                name, driver="bridge", internal=rt.network_mode == INTERNAL,
                options={"com.docker.network.bridge.enable_icc": "false"},
                labels={LABEL_ROLE: "network"}, check_duplicate=True)
        except docker.errors.APIError:
            if not client.networks.list(names=[name]):  # not a sibling's win: a failure
                raise
    except docker.errors.DockerException as e:
        raise ConnectionError(f"runtime {rt.name!r}: cannot prepare network {name}: {e}") from e
    finally:
        client.close()


def ensure_holder_image(rt: Runtime) -> None:
    """A Docker allowlist needs the network holder's image on the engine (no
    registry has it): say so, naming the field, before a run that makes the
    workspace run creates anything (stop and delete never need it)."""
    if not isinstance(rt, DockerRuntime) or rt.egress_allow is None:
        return
    import docker.errors

    try:
        client = docker_client(rt)
    except docker.errors.DockerException as e:
        raise ConnectionError(f"runtime {rt.name!r}: cannot reach the Docker Engine: {e}") from e
    try:
        client.images.get(HOLDER_IMAGE)
    except docker.errors.ImageNotFound:
        raise RuntimeError(f"runtime {rt.name!r}: {HOLDER_MISSING}") from None
    except docker.errors.DockerException as e:
        raise ConnectionError(f"runtime {rt.name!r}: cannot reach the Docker Engine: {e}") from e
    finally:
        client.close()


def remove_labelled(rt: Runtime, owner: str, name: str, *, installation: str) -> int:
    """Remove every object labelled for the workspace (delete only: this takes
    its storage too). Returns how many were found; raises if the runtime
    cannot be reached, so the delete is retried."""
    labels = workspace_labels(owner, name, installation)
    if isinstance(rt, DockerRuntime):
        return _remove_docker(rt, labels)
    return _remove_kubernetes(rt, labels)


def _remove_docker(rt: DockerRuntime, selected: dict[str, str]) -> int:
    client = docker_client(rt)
    try:
        n = 0
        for c in containers(client, selected):
            c.remove(force=True, v=False)
            n += 1
        for v in client.volumes.list(filters={"label": label_filters(selected)}):
            if same_installation(selected, v.attrs.get("Labels")):
                v.remove(force=True)
                n += 1
        return n
    finally:
        client.close()


def _remove_kubernetes(rt: Any, labels: dict[str, str], wait: float = 180.0) -> int:
    """Delete every labelled object and wait until none is left (terminating
    pods and the PVC behind its protection finalizer included): a delete that
    succeeds leaves nothing behind."""
    from kubernetes import client as k8s

    api = kube_api_client(rt)
    core, batch, apps = k8s.CoreV1Api(api), k8s.BatchV1Api(api), k8s.AppsV1Api(api)
    net = k8s.NetworkingV1Api(api)
    selector = label_selector(labels)
    ns = rt.namespace
    kinds = [
        (apps.list_namespaced_deployment, apps.delete_namespaced_deployment),
        (batch.list_namespaced_job, batch.delete_namespaced_job),
        (core.list_namespaced_pod, core.delete_namespaced_pod),
        (core.list_namespaced_secret, core.delete_namespaced_secret),
        (net.list_namespaced_network_policy, net.delete_namespaced_network_policy),
        (core.list_namespaced_persistent_volume_claim,
         core.delete_namespaced_persistent_volume_claim),
    ]
    found = 0
    deadline = time.monotonic() + wait
    while True:
        left = 0
        for list_fn, delete_fn in kinds:
            for obj in list_fn(ns, label_selector=selector).items:
                left += 1
                if obj.metadata.deletion_timestamp is not None:
                    continue  # on its way out
                try:
                    delete_fn(obj.metadata.name, ns, propagation_policy="Background")
                except k8s.ApiException as e:
                    if e.status != 404:
                        raise
        found = max(found, left)
        if not left:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"{left} object(s) of the workspace are still terminating")
        time.sleep(1)
