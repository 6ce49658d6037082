"""Shared steps of the port-forward tests and bench: `stackspace port-forward` as
a user runs it, a git daemon inside a workspace, and many concurrent clients."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from tests.e2e.remote_helpers import stackspace_exec

# A bare repository with one commit, served by git daemon on 127.0.0.1:PORT only
# (the workspace's loopback: nothing outside the workspace can reach it).
GIT_DAEMON = r"""
set -e
g=/workspace/srv.git
git init -q --bare "$g"
tree=$(git --git-dir="$g" hash-object -t tree -w --stdin </dev/null)
commit=$(git --git-dir="$g" -c user.name=t -c user.email=t@t commit-tree -m served "$tree")
git --git-dir="$g" update-ref refs/heads/main "$commit"
git daemon --reuseaddr --base-path=/workspace --export-all --listen=127.0.0.1 --port="$1" \
  --detach --pid-file=/workspace/daemon.pid
echo "$commit"
"""


def start_git_daemon(svc: Any, name: str, port: int) -> str:
    """Start git daemon in the workspace; return the commit of refs/heads/main."""
    r = stackspace_exec(svc, name, "sh", "-c", GIT_DAEMON, "sh", str(port))
    assert r.returncode == 0, r.stderr
    commit = r.stdout.decode().strip()
    assert re.fullmatch(r"[0-9a-f]{40}", commit), r.stdout
    return commit


@contextmanager
def port_forward(svc: Any, name: str, *specs: str,
                 stderr: list[str] | None = None) -> Iterator[list[int]]:
    """`stackspace port-forward NAME SPEC...`; yields the local ports it announced.
    Once it has ended, what it wrote to stderr is appended to ``stderr``."""
    env = {**os.environ, "STACKSPACE_URL": svc.url, "STACKSPACE_TOKEN": svc.alice,
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "port-forward", name, *specs],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ports = []
        for _ in specs:
            line = proc.stdout.readline()
            found = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> \d+$", line.strip())
            assert found, (line, proc.stderr.read() if proc.poll() is not None else "")
            ports.append(int(found.group(1)))
        yield ports
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        if stderr is not None:
            stderr.append(err)


def git_advertisement(port: int, repo: str = "/srv.git", timeout: float = 60) -> bytes:
    """One git-protocol request (what `git ls-remote` sends) and the whole answer: the
    client half-closes after the request, the daemon answers and closes."""
    body = f"git-upload-pack {repo}\0host=localhost\0".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"%04x" % (len(body) + 4) + body + b"0000")
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def many(fn: Any, n: int, workers: int | None = None) -> list[Any]:
    """fn(i) for i in range(n), all at once (up to ``workers`` in flight)."""
    with ThreadPoolExecutor(max_workers=workers or n) as pool:
        return list(pool.map(fn, range(n)))


def wait_refused(port: int, timeout: float = 10) -> bool:
    """Whether the local port stops accepting within timeout (the command ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return True
        time.sleep(0.1)
    return False
