"""Fixtures for the fault-injection suite: a real `stackspace run` per module
(killed and restarted by the tests), views of what is on the engine, and the
kill matrix printed at the end of the run."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import conftest as e2e
from tests.faults.engine import DockerView, KubernetesView
from tests.faults.harness import RESULTS, LiveService, matrix_table

# The shared Kubernetes test cluster (scripts/test-cluster), also for tests here.
kube_cluster = e2e.kube_cluster


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest's reporter
    if RESULTS:
        terminalreporter.section("kill matrix (kill -9 of the whole service tree)")
        terminalreporter.write_line(matrix_table(RESULTS))


def unique(topic: str) -> str:
    """A workspace name no other engineer's test on the shared engine uses."""
    return f"{topic}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def live_service(tmp: Path, runtimes: list[dict], pulumi_bin: Path, pulumi_home: Path,
                 engine, **options) -> Iterator[LiveService]:  # noqa: ANN001
    """A started service; at the end its workspaces are deleted (best effort)
    and it is stopped."""
    svc = LiveService(tmp, runtimes, pulumi_bin=pulumi_bin, pulumi_home=pulumi_home, **options)
    svc.start()
    try:
        yield svc
    finally:
        cleanup(svc, engine)
        svc.stop()


def cleanup(svc: LiveService, engine) -> None:  # noqa: ANN001
    """Delete what a failed test left, through the API (queued behind whatever runs)."""
    with contextlib.suppress(Exception):
        svc.ensure_running()
        names = [w["name"] for w in svc.call("GET", "/workspaces").json()["items"]]
        for name in names:
            svc.call("DELETE", f"/workspaces/{name}?queue=true")
        deadline = time.monotonic() + 300
        while names and time.monotonic() < deadline:
            names = [n for n in names if svc.workspace(n).status_code != 404]
            time.sleep(1)


@pytest.fixture(scope="module")
def docker_view(docker_client) -> DockerView:
    return DockerView(docker_client)


@pytest.fixture(scope="module")
def docker_runtime(docker_host) -> list[dict]:
    return [{"name": "local", "type": "docker", "host": docker_host, "network_mode": "none"}]


@pytest.fixture(scope="module")
def docker_faults(tmp_path_factory, docker_runtime, pulumi_bin, pulumi_home, docker_provider,
                  docker_view) -> Iterator[LiveService]:
    """One `stackspace run` on Docker for a module's kill trials."""
    with live_service(tmp_path_factory.mktemp("faults-docker"), docker_runtime, pulumi_bin,
                      pulumi_home, docker_view) as svc:
        yield svc


@pytest.fixture(scope="module")
def kube_namespace(kube_cluster) -> str:
    from kubernetes import client, config

    from tests.e2e.stack_helpers import ensure_namespace

    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kube_cluster)))
    return ensure_namespace(core, "stackspace-faults")


@pytest.fixture(scope="module")
def kube_view(kube_cluster, kube_namespace) -> KubernetesView:
    from kubernetes import config

    return KubernetesView(config.new_client_from_config(config_file=str(kube_cluster)),
                          kube_namespace)


@pytest.fixture(scope="module")
def kube_faults(tmp_path_factory, kube_cluster, kube_namespace, pulumi_bin, pulumi_home,
                kubernetes_provider, kube_view) -> Iterator[LiveService]:
    runtimes = [{"name": "cluster", "type": "kubernetes", "kubeconfig": str(kube_cluster),
                 "namespace": kube_namespace}]
    with live_service(tmp_path_factory.mktemp("faults-kube"), runtimes, pulumi_bin,
                      pulumi_home, kube_view) as svc:
        yield svc
