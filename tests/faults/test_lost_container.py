"""A running workspace whose workload dies outside stackspace: its container
exited while its Docker Engine was down, or someone stopped or removed it, or
deleted its Deployment, by hand. The engine's state still records it, so an up
alone would change nothing; `start` must bring it back on the same storage,
and the API must say so."""

from __future__ import annotations

import time

import pytest

from tests.faults.checks import assert_truthful, converge, delete_clean
from tests.faults.conftest import unique
from tests.faults.engine import DockerView, KubernetesView
from tests.faults.harness import LiveService

pytestmark = pytest.mark.e2e


def events(svc: LiveService, op_id: str) -> list[dict]:
    """Every event of an operation that has ended."""
    return svc.follow(op_id, until=lambda event: False)[1]


def assert_said_why(svc: LiveService, ws: dict, damage: str) -> None:
    said = [e for e in events(svc, ws["last_operation"]["id"])
            if e.get("type") == "diagnostic" and "not running" in e.get("message", "")]
    assert said, f"start after a {damage} did not say why it refreshed"


@pytest.mark.usefixtures("docker_provider")
def test_start_brings_back_a_container_stopped_or_removed_by_hand(
        docker_faults: LiveService, docker_view: DockerView, docker_client):
    svc, engine = docker_faults, docker_view
    name = unique("lost")
    op = svc.run_op("POST", "/workspaces", json={"name": name})
    assert op["status"] == "succeeded", op
    stack = svc.workspace(name).json()["stack"]
    storage = engine.storage(name)
    (workload,) = engine.workloads(name)
    engine.write_file(workload.name, "mine.txt", "kept")

    for damage in ("stop", "remove"):
        container = docker_client.containers.get(workload.name)
        if damage == "stop":
            container.stop(timeout=1)  # `docker stop`: its restart policy leaves it down
        else:
            container.remove(force=True)
        assert not any(w.running for w in engine.workloads(name))
        ws = converge(svc, engine, name, "running")
        (workload,) = engine.workloads(name)
        assert workload.running and engine.storage(name) == storage, (damage, ws)
        assert engine.read_file(workload.name, "mine.txt") == "kept"
        assert_said_why(svc, ws, damage)

    # A start of a workspace that runs changes nothing and says nothing of the kind.
    ws = converge(svc, engine, name, "running")
    assert not [e for e in events(svc, ws["last_operation"]["id"])
                if "not running" in e.get("message", "")]
    assert_truthful(svc, engine, name)
    delete_clean(svc, engine, name, stack)


def test_start_brings_back_a_deployment_deleted_by_hand(kube_faults: LiveService,
                                                       kube_view: KubernetesView):
    """A lost pod comes back by itself (its Deployment); a lost Deployment with start."""
    from kubernetes import client

    svc, engine = kube_faults, kube_view
    name = unique("lostk")
    op = svc.run_op("POST", "/workspaces", json={"name": name})
    assert op["status"] == "succeeded", op
    ws = svc.workspace(name).json()
    stack, deployment = ws["stack"], ws["outputs"]["deployment"]
    storage = engine.storage(name)
    (workload,) = engine.workloads(name)
    engine.write_file(workload.name, "mine.txt", "kept")

    apps = client.AppsV1Api(engine.api)
    apps.delete_namespaced_deployment(deployment, engine.ns, propagation_policy="Foreground")
    # Until the deletion has finished, the Deployment still exists (a refresh
    # keeps it) and its pod may still be terminating: wait for both to be gone.
    deadline = time.monotonic() + 120
    while engine.workloads(name) or _exists(lambda: apps.read_namespaced_deployment(
            deployment, engine.ns)):
        assert time.monotonic() < deadline, "the deleted Deployment never went"
        time.sleep(0.5)
    ws = converge(svc, engine, name, "running")
    (workload,) = engine.workloads(name)
    assert engine.storage(name) == storage
    assert engine.read_file(workload.name, "mine.txt") == "kept"
    assert_said_why(svc, ws, "deleted Deployment")
    delete_clean(svc, engine, name, stack)


def _exists(read) -> bool:  # noqa: ANN001 - a kubernetes client read
    from kubernetes.client.exceptions import ApiException

    try:
        read()
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True
