"""`stackspace run` puts its exec proxy on the port after the service's own
(two services on one host never share a proxy), and refuses to start, saying
why, when the proxy cannot listen: terminals must not be handed an address
where nothing (or another service's proxy) answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.faults.harness import REPO, LiveService


def two_free_ports() -> int:
    """A port P with P+1 free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


@contextmanager
def stackspace_run(data_dir: Path, port: int) -> Iterator[subprocess.Popen]:
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock",
           "STACKSPACE_ADMIN_TOKEN": "", "PULUMI_CONFIG_PASSPHRASE": "x"}
    for key in ("STACKSPACE_LISTEN", "STACKSPACE_PROXY_LISTEN", "STACKSPACE_PROXY_URL"):
        env.pop(key, None)
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "run", "--listen",
                             f"127.0.0.1:{port}", "--data-dir", str(data_dir)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_two_services_get_their_own_proxies_and_a_taken_proxy_port_stops_run(tmp_path):
    first, second = two_free_ports(), two_free_ports()
    with stackspace_run(tmp_path / "a", first) as a, stackspace_run(tmp_path / "b", second) as b:
        for proc, port in ((a, first), (b, second)):
            lines = [proc.stdout.readline() for _ in range(2)]
            assert lines == [f"exec proxy listening on ws://127.0.0.1:{port + 1}/exec\n",
                             f"stackspace listening on http://127.0.0.1:{port} "
                             f"(exec proxy ws://127.0.0.1:{port + 1}/exec)\n"], lines
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).ok

    taken = two_free_ports()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken + 1))
        holder.listen()
        with stackspace_run(tmp_path / "c", taken) as c:
            assert c.wait(timeout=60) == 1
            err = c.stderr.read()
            assert f"cannot listen on 127.0.0.1:{taken + 1}: " in err, err
            assert f"the exec proxy did not start on 127.0.0.1:{taken + 1}" in err, err
            assert "Traceback" not in err, err
        with pytest.raises(ConnectionRefusedError):  # the service never listened
            socket.create_connection(("127.0.0.1", taken), timeout=5).close()


def test_the_test_harness_moves_a_proxy_whose_port_was_taken_meanwhile(tmp_path):
    """LiveService picks free ports before `run` binds them; an outgoing
    connection may take one meanwhile. `run` then stops (above), and the
    harness starts it again with another proxy port."""
    svc = LiveService(tmp_path, [{"name": "local", "type": "docker",
                                  "host": "unix:///nonexistent.sock"}])
    taken = svc.proxy_port
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        try:
            svc.start()
            assert svc.proxy_port != taken
            assert requests.get(f"{svc.url}/healthz", timeout=10).ok
            with socket.create_connection(("127.0.0.1", svc.proxy_port), timeout=5):
                pass  # the proxy listens on its new port
        finally:
            svc.stop()
