"""Sessions that outlive their connection on Kubernetes (pods/exec through the
API server): the helper copied into the pod through an exec's stdin, a killed
client, the session listed and reattached with its output and exit code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxy.server import ProxyConfig
from proxy.tickets import mint_ticket
from tests.e2e.exec_fixtures import ProxyProcess
from tests.e2e.session_checks import check_killed_client_then_reattach, run
from tests.e2e.test_exec_proxy_kubernetes import NAMESPACE, pod  # noqa: F401 - fixture

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
KEY = os.urandom(32)


def test_killed_client_then_reattach_in_a_pod(pod: tuple[Path, str]) -> None:  # noqa: F811
    kubeconfig, name = pod
    target = {"type": "kubernetes", "owner": "alice", "workspace": name,
              "container": "workspace",
              "runtime": {"name": "cluster", "type": "kubernetes",
                          "kubeconfig": str(kubeconfig), "namespace": NAMESPACE}}

    def mint(command: list[str], *, tty: bool = False, session: dict | None = None) -> str:
        return mint_ticket(KEY, user="alice", workspace="alice/k", target=target,
                           command=command, tty=tty, session=session)[0]

    def file_exists(marker: str) -> bool:
        return run(proxy.url, mint(["test", "-e", f"/tmp/{marker}"]))[0] == 0

    with ProxyProcess.running(ProxyConfig(key=KEY)) as proxy:
        check_killed_client_then_reattach(proxy.url, mint, file_exists)
