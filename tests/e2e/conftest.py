"""Fixtures for end-to-end tests against a real single-node Kubernetes.

``kube_cluster`` runs ``scripts/test-cluster up`` once per session (the first
run builds the binaries, which can take tens of minutes on 2 cores; later runs
reuse the cached build, or a cluster that is already running) and yields the
path of its admin kubeconfig. At session end the cluster is stopped only if
this session started it. If no cluster can be had, dependent tests are skipped
with the reason (set STACKSPACE_REQUIRE_KUBE=1 to fail instead). Set
STACKSPACE_KEEP_TEST_CLUSTER=1 to leave a cluster this session started running.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import unavailable

REPO = Path(__file__).resolve().parents[2]
TEST_CLUSTER = REPO / "scripts" / "test-cluster"
# Seconds allowed to tests that need the cluster: a cold start includes the
# Kubernetes build (about 25 minutes on 2 cores).
KUBE_TIMEOUT = 3600


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give tests that use the cluster room for a cold start under pytest-timeout."""
    for item in items:
        if "kube_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(KUBE_TIMEOUT))


def _unavailable(reason: str) -> None:
    unavailable(reason, require="STACKSPACE_REQUIRE_KUBE")


def _last_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1]


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Path of the admin kubeconfig of the test cluster (scripts/test-cluster)."""
    if os.geteuid() != 0:
        _unavailable("scripts/test-cluster needs root: kubelet, containerd and CNI run as root")
    was_running = (
        subprocess.run([str(TEST_CLUSTER), "status"], capture_output=True, check=False).returncode
        == 0
    )
    started = time.monotonic()
    proc = subprocess.run(
        [str(TEST_CLUSTER), "up"],
        capture_output=True,
        text=True,
        check=False,
        timeout=KUBE_TIMEOUT,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-40:])
        _unavailable(
            f"scripts/test-cluster up failed (exit {proc.returncode}): "
            f"{_last_error(proc.stderr)}\n{tail}"
        )
    lines = proc.stdout.strip().splitlines()
    kubeconfig = Path(lines[-1]) if lines else Path()
    if not kubeconfig.is_file():
        _unavailable(f"scripts/test-cluster up printed no kubeconfig path: {proc.stdout!r}")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    how = "reused" if was_running else f"started in {time.monotonic() - started:.0f}s"
    if reporter is not None:
        reporter.write_line(f"test-cluster: {how}, kubeconfig {kubeconfig}")
    yield kubeconfig
    logs = subprocess.run(
        [str(TEST_CLUSTER), "logs"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if request.session.testsfailed and reporter is not None:
        reporter.write_line(f"test-cluster: tests failed; component logs kept in {logs}")
    if not was_running and os.environ.get("STACKSPACE_KEEP_TEST_CLUSTER") != "1":
        subprocess.run([str(TEST_CLUSTER), "down"], capture_output=True, check=False, timeout=300)
