"""Helpers for the exec proxy tests and bench: a workspace container, the proxy as
its own process (``python -m proxy``, as deployed), targets, and (run as a
script) a terminal client for pexpect to drive.

    STACKSPACE_URL=ws://... STACKSPACE_TICKET=... python tests/e2e/exec_fixtures.py
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

IMAGE = "stackspace/workspace:bookworm"
REPO = Path(__file__).resolve().parents[2]


@contextmanager
def workspace_container(docker_client: Any, name: str | None = None,
                        image: str = IMAGE) -> Iterator[Any]:
    """A running workspace like the Docker backend makes: uid 1000, init, no capabilities."""
    name = name or f"stackspace-exec-test-{secrets.token_hex(4)}"
    container = docker_client.containers.run(
        image, ["sleep", "infinity"], name=name, user="1000", init=True, cap_drop=["ALL"],
        security_opt=["no-new-privileges"], network_mode="none", working_dir="/workspace",
        detach=True, labels={"stackspace.dev/test": "exec-proxy"})
    try:
        yield container
    finally:
        container.remove(force=True)


class ProxyProcess:
    """``python -m proxy`` on a free loopback port, configured from a ProxyConfig."""

    def __init__(self, config: Any) -> None:
        self.config = config
        args = [sys.executable, "-m", "proxy", "--listen", f"{config.host}:{config.port}",
                "--activity-interval", str(config.activity_interval),
                "--idle-timeout", str(config.idle_timeout),
                "--max-sessions-per-user", str(config.max_sessions_per_user),
                "--max-sessions-per-workspace", str(config.max_sessions_per_workspace),
                "--max-frame-bytes", str(config.max_frame_bytes),
                "--session-idle-timeout", str(config.session_idle_timeout)]
        if config.activity_url:
            args += ["--activity-url", config.activity_url]
        env = {**os.environ, "STACKSPACE_TICKET_KEY": config.key.hex(),  # never in argv
               "PYTHONPATH": str(REPO)}
        env.pop("STACKSPACE_DATABASE_URL", None)
        if config.database_url:
            env["STACKSPACE_DATABASE_URL"] = config.database_url
        self.proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the announcement, once listening
        if "listening on " not in line:
            self.proc.kill()
            raise RuntimeError(f"proxy did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[-1].strip()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @classmethod
    @contextmanager
    def running(cls, config: Any, **overrides: Any) -> Iterator[ProxyProcess]:
        proxy = cls(replace(config, port=0, **overrides))
        try:
            yield proxy
        finally:
            proxy.stop()


def docker_target(docker_host: str, container: Any, **runtime: Any) -> dict[str, Any]:
    """A target on a Docker runtime (extra keys: TLS/SSH files of the runtime)."""
    return {"type": "docker", "container": container.name,
            "runtime": {"name": "test", "type": "docker", "host": docker_host, **runtime}}


def processes(container: Any) -> str:
    """`ps` inside the container, zombies left out (init reaps them a moment later)."""
    code, out = container.exec_run(["ps", "-eo", "pid,stat,args"], user="1000")
    assert code == 0, out
    return "\n".join(line for line in out.decode().splitlines()
                     if line.split()[1:2] != ["Z"])


def wait_until_gone(container: Any, needle: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while needle in (ps := processes(container)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return ps


def _terminal_main() -> int:
    from service.exec_client import ExecClientError, run_terminal

    try:
        return run_terminal(os.environ["STACKSPACE_URL"], os.environ["STACKSPACE_TICKET"])
    except ExecClientError as exc:
        print(f"stackspace: {exc}", file=sys.stderr)
        return 255


if __name__ == "__main__":
    sys.exit(_terminal_main())
