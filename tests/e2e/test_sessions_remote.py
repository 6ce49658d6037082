"""Sessions that outlive their connection on the remote test Docker host, over
TLS and SSH: a killed client, the session listed and reattached with its output
and exit code."""

from __future__ import annotations

import os

import pytest

from proxy.server import ProxyConfig
from proxy.tickets import mint_ticket
from tests.e2e.exec_fixtures import ProxyProcess
from tests.e2e.session_checks import check_killed_client_then_reattach
from tests.e2e.test_exec_proxy_remote import remote  # noqa: F401 - the fixture

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
KEY = os.urandom(32)


def test_killed_client_then_reattach_on_a_remote_host(remote) -> None:  # noqa: F811
    runtime, container = remote
    target = {"type": "docker", "runtime": runtime, "container": container.name}

    def mint(command: list[str], *, tty: bool = False, session: dict | None = None) -> str:
        return mint_ticket(KEY, user="alice", workspace="alice/remote", target=target,
                           command=command, tty=tty, session=session)[0]

    def file_exists(marker: str) -> bool:
        return container.exec_run(["test", "-e", f"/tmp/{marker}"], user="1000")[0] == 0

    with ProxyProcess.running(ProxyConfig(key=KEY)) as proxy:
        check_killed_client_then_reattach(proxy.url, mint, file_exists)
