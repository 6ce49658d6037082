"""The exec proxy as its own package, runtime SSH settings, and the pieces of the
proxy and client that need no engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from components.docker import ssh_options
from components.runtime import parse_runtime
from components.spec import SpecError
from proxy.backends import pick_pod, workspace_selector
from service.exec_client import _pollable

REPO = Path(__file__).resolve().parents[2]


def _modules_after(imports: str) -> set[str]:
    """The modules a fresh interpreter holds after `import <imports>`."""
    code = f"import json, sys, {imports}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return set(json.loads(out.stdout))


PULUMI_SDK = ("pulumi", "pulumi_docker", "pulumi_kubernetes", "grpc")


def test_proxy_imports_neither_service_nor_pulumi():
    """Only the store's database adapter (shared consumed tickets, proxy.replay)."""
    modules = _modules_after("proxy.server, proxy.__main__, proxy.backends") - {
        "service", "service.db"}
    assert "proxy.backends" in modules
    leaked = [m for m in modules if m.split(".")[0] in ("service", "stacks", *PULUMI_SDK)]
    assert leaked == []


def test_service_process_leaves_the_pulumi_sdk_to_its_workers():
    """The SDK (~30 MB per process) loads only in the worker processes that drive
    the engine (service.worker), not in the API process that queues their jobs."""
    modules = _modules_after("service.cli, service.api, service.runner, service.operator")
    assert "service.runner" in modules and "service.jobs" in modules
    assert [m for m in modules if m.split(".")[0] in PULUMI_SDK] == []
    assert "service.worker" not in modules and "stacks.automation" not in modules


def test_python_dash_m_proxy_refuses_a_missing_or_short_key():
    env = {k: v for k, v in os.environ.items() if k != "STACKSPACE_TICKET_KEY"}
    r = subprocess.run([sys.executable, "-m", "proxy", "--listen", "127.0.0.1:0"], cwd=REPO,
                       capture_output=True, text=True, env={**env, "STACKSPACE_TICKET_KEY": "ab"})
    assert r.returncode == 2 and "at least 32 bytes" in r.stderr


SSH = {"name": "remote", "type": "docker", "host": "ssh://deploy@10.0.0.5:2222",
       "ssh_identity_file": "/etc/stackspace/id_ed25519",
       "ssh_known_hosts_file": "/etc/stackspace/known_hosts"}


def test_ssh_runtime_files_reach_the_provider_options():
    opts = ssh_options(parse_runtime(SSH))
    assert opts is not None
    pairs = [opts[i + 1] for i, o in enumerate(opts) if o in ("-o", "-i")]
    assert "StrictHostKeyChecking=yes" in pairs and "BatchMode=yes" in pairs
    assert "/etc/stackspace/id_ed25519" in pairs and "IdentitiesOnly=yes" in pairs
    assert "UserKnownHostsFile=/etc/stackspace/known_hosts" in pairs
    assert ssh_options(parse_runtime({"name": "l", "type": "docker"})) is None


@pytest.mark.parametrize("change, field", [
    ({"host": "unix:///run/docker.sock"}, "runtime.ssh_identity_file"),
    ({"ssh_known_hosts_file": "relative/known_hosts"}, "runtime.ssh_known_hosts_file"),
    ({"ssh_port": 22}, "runtime.ssh_port"),
])
def test_bad_ssh_settings_name_the_field(change, field):
    with pytest.raises(SpecError) as info:
        parse_runtime({**SSH, **change})
    assert field in info.value.errors


def pod(name: str, phase: str, created: int, deleting: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        status=SimpleNamespace(phase=phase),
        metadata=SimpleNamespace(name=name, creation_timestamp=created,
                                 deletion_timestamp=1 if deleting else None))


def test_kubernetes_exec_picks_a_running_pod_that_is_not_terminating():
    assert workspace_selector("alice", "dev", "") == (
        "stackspace.dev/workspace=dev,stackspace.dev/owner=alice,stackspace.dev/role=workspace,"
        "!stackspace.dev/installation")
    assert pick_pod([pod("old", "Running", 1, deleting=True), pod("new", "Pending", 3),
                     pod("mid", "Running", 2)]) == "mid"
    assert pick_pod([pod("old", "Running", 1, deleting=True)]) is None


def test_stdin_kinds_the_client_can_poll(tmp_path):
    r, w = os.pipe()
    regular = tmp_path / "f"
    regular.write_bytes(b"x")
    with open(os.devnull, "rb") as null, open(regular, "rb") as f:
        assert _pollable(r) and not _pollable(null.fileno()) and not _pollable(f.fileno())
    os.close(r)
    os.close(w)


def test_docker_stream_demux_keeps_order_across_any_split():
    import struct

    from proxy.backends import _Demux

    frames = [(1, b"out1"), (1, b"out2"), (2, b"err"), (1, b""), (1, b"out3"), (2, b"e" * 70000)]
    raw = b"".join(struct.pack(">BxxxL", s, len(p)) + p for s, p in frames)
    for step in (1, 7, 8, 9, 1000, len(raw)):
        demux, got = _Demux(), []
        for i in range(0, len(raw), step):
            got += demux.feed(raw[i:i + step])
        joined: list[tuple[int, bytes]] = []
        for channel, data in got:  # how the proxy may split is its business; order is not
            if joined and joined[-1][0] == channel:
                joined[-1] = (channel, joined[-1][1] + data)
            else:
                joined.append((channel, data))
        assert joined == [(1, b"out1out2"), (2, b"err"), (1, b"out3"), (2, b"e" * 70000)]
