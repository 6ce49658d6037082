"""Checks of sessions that outlive their connection (SPEC §5), shared by the
local Docker, remote Docker host and Kubernetes tests: a client process is
SIGKILLed mid-command, then the session is found by listing and reattached."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.exec_client import run_exec

REPO = Path(__file__).resolve().parents[2]
Mint = Callable[..., str]  # (command, tty=..., session=...) -> ticket

CLIENT = ("import os, sys; from service.exec_client import run_exec; "
          "sys.exit(run_exec(os.environ['STACKSPACE_URL'], os.environ['STACKSPACE_TICKET']))")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


class ClientProcess:
    """A client in its own process (to be SIGKILLed), its stdout collected."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE)
        self.out = bytearray()
        threading.Thread(target=self._read, daemon=True).start()

    @classmethod
    def exec(cls, url: str, ticket: str) -> ClientProcess:
        """`run_exec` on a ticket, as `stackspace exec` runs it."""
        return cls([sys.executable, "-c", CLIENT], {
            **os.environ, "STACKSPACE_URL": url, "STACKSPACE_TICKET": ticket,
            "PYTHONPATH": str(REPO)})

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(4096):  # type: ignore[attr-defined]
            self.out += chunk

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def run(url: str, ticket: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    code = run_exec(url, ticket, io.BytesIO(stdin), out, err)
    return code, out.getvalue(), err.getvalue()


def list_sessions(url: str, mint: Mint) -> list[dict[str, Any]]:
    code, out, err = run(url, mint(["list"], session={"mode": "list"}))
    assert code == 0, err
    return json.loads(out)


LINES = 6


def loop_command(marker: str) -> list[str]:
    """Prints a line every 0.4 s, then writes a file and exits 3."""
    return ["sh", "-c", f"i=1; while [ $i -le {LINES} ]; do echo line $i; i=$((i+1)); "
            f"sleep 0.4; done; echo finished > /tmp/{marker}; exit 3"]


def check_killed_client_then_reattach(url: str, mint: Mint,
                                      file_exists: Callable[[str], bool]) -> str:
    """SIGKILL the client mid-command; the command runs on; listing finds it;
    reattaching by id gives the whole output and the exit code; its file exists.
    Returns the session id."""
    marker = f"session-{os.urandom(4).hex()}"
    client = ClientProcess.exec(url, mint(loop_command(marker), session={"mode": "start"}))
    wait_for("the first lines", lambda: b"line 2\n" in client.out)
    client.kill()
    assert b"line 6" not in client.out and not file_exists(marker)
    mine = [s for s in list_sessions(url, mint) if marker in " ".join(s["command"])]
    assert len(mine) == 1, mine
    session = mine[0]
    # running still, or (a slow host) ended on its own with its code kept
    assert (session["running"], session["exit_code"]) in ((True, None), (False, 3)), session
    code, out, err = run(url, mint(["attach"], session={"mode": "attach", "id": session["id"]}))
    assert (code, err) == (3, b"")
    assert out == b"".join(b"line %d\n" % i for i in range(1, LINES + 1))
    assert file_exists(marker)
    # the exit reached a client (it acknowledged it): the session is collected
    wait_for("the session to be collected",
             lambda: session["id"] not in [s["id"] for s in list_sessions(url, mint)])
    return str(session["id"])
