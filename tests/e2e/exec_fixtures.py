"""Helpers for the exec proxy tests and bench: a workspace container, an in-process
proxy on a background event loop, ticket minting, and (run as a script) a
terminal client for pexpect to drive.

    STACKSPACE_URL=ws://... STACKSPACE_TICKET=... python tests/e2e/exec_fixtures.py
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

IMAGE = "stackspace/workspace:bookworm"


@contextmanager
def workspace_container(docker_client: Any, name: str | None = None) -> Iterator[Any]:
    """A running workspace like the Docker backend makes: uid 1000, init, no capabilities."""
    name = name or f"stackspace-exec-test-{secrets.token_hex(4)}"
    container = docker_client.containers.run(
        IMAGE, ["sleep", "infinity"], name=name, user="1000", init=True, cap_drop=["ALL"],
        security_opt=["no-new-privileges"], network_mode="none", working_dir="/workspace",
        detach=True, labels={"stackspace.dev/test": "exec-proxy"})
    try:
        yield container
    finally:
        container.remove(force=True)


class ProxyThread:
    """The proxy on its own event loop in a daemon thread (tests and bench are sync)."""

    def __init__(self, config: Any) -> None:
        from service.proxy import start_proxy

        self.config = config
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def main() -> None:
            self.proxy = await start_proxy(config)
            ready.set()
            self._stop = asyncio.Event()
            await self._stop.wait()
            await self.proxy.close()

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),),
                                       daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("proxy did not start")
        self.url = f"ws://127.0.0.1:{self.proxy.port}/exec"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)

    @classmethod
    @contextmanager
    def running(cls, config: Any, **overrides: Any) -> Iterator[ProxyThread]:
        proxy = cls(replace(config, port=0, **overrides))
        try:
            yield proxy
        finally:
            proxy.stop()


def docker_target(docker_host: str, container: Any) -> dict[str, str]:
    return {"type": "docker", "host": docker_host, "container": container.name}


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
