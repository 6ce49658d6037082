"""`stackspace term` and `stackspace exec` on sessions that outlive their
connection (SPEC §5, §7): a dropped connection is reattached with a new ticket;
`term --list`, `--attach ID`, `--kill ID` and `exec --detach` work on the
sessions kept in the workspace."""

from __future__ import annotations

import datetime
import io
import json
import sys
from collections.abc import Callable
from typing import Any

from service.exec_client import run_exec, run_terminal, start_detached

Grant = Callable[[dict[str, Any]], dict[str, Any]]  # ticket request body -> grant


def reconnector(grant: Grant) -> Callable[[str], tuple[str, str]]:
    def reattach(session_id: str) -> tuple[str, str]:
        g = grant({"session": {"attach": session_id}})
        return g["url"], g["ticket"]
    return reattach


def terminal(grant: Grant, attach: str | None = None) -> int:
    """A new terminal, or the session ``attach`` (a command's output replayed, its exit
    code once ended)."""
    body: dict[str, Any] = {"tty": True}
    if attach:
        body["session"] = {"attach": attach}
        # A command without a pty (exec, exec --detach) keeps the local terminal
        # cooked: ^C ends this client, not the command.
        on_tty = sys.stdin.isatty() and any(
            s["id"] == attach and s.get("tty") for s in sessions(grant))
        if not on_tty:
            g = grant(body)
            return run_exec(g["url"], g["ticket"], reconnect=reconnector(grant))
    g = grant(body)
    return run_terminal(g["url"], g["ticket"], reconnect=reconnector(grant))


def command(grant: Grant, argv: list[str], detach: bool = False) -> int | str:
    """Run ``argv`` (reattaching after a drop); with ``detach`` start it and return
    the session id."""
    g = grant({"command": argv, "tty": False})
    if detach:
        return start_detached(g["url"], g["ticket"])
    return run_exec(g["url"], g["ticket"], reconnect=reconnector(grant))


def sessions(grant: Grant) -> list[dict[str, Any]]:
    g = grant({"session": {"list": True}, "tty": False})
    out, err = io.BytesIO(), io.BytesIO()
    code = run_exec(g["url"], g["ticket"], io.BytesIO(), out, err)
    if code != 0:
        raise RuntimeError(err.getvalue().decode(errors="replace").strip() or f"exit {code}")
    return list(json.loads(out.getvalue() or b"[]"))


def kill(grant: Grant, session_id: str) -> int:
    g = grant({"session": {"kill": session_id}, "tty": False})
    return run_exec(g["url"], g["ticket"], io.BytesIO())


def format_sessions(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no sessions"
    lines = [f"{'ID':<14} {'STARTED':<20} {'STATE':<10} {'CLIENTS':<7} COMMAND"]
    for s in items:
        started = datetime.datetime.fromtimestamp(float(s.get("started") or 0),
                                                  tz=datetime.UTC)
        state = "running" if s.get("running") else f"exit {s.get('exit_code')}"
        lines.append(f"{s['id']:<14} {started:%Y-%m-%d %H:%M:%S}  {state:<10} "
                     f"{s.get('attached', 0):<7} {' '.join(s.get('command') or [])}")
    return "\n".join(lines)
