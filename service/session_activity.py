"""Kept sessions count as use for idle auto-stop (SPEC §5).

A command started with `exec --detach`, or a terminal whose client dropped,
goes on in the workspace with no client attached, so the proxy reports no
activity for it. Before the runner auto-stops an idle workspace it asks the
workspace itself (the session helper's `list`, through the proxy's internal
URL) whether a session's command is still running; if one is, the workspace
is in use. Sessions end on their own after `session_idle_timeout` with no
client, so an abandoned one does not keep a workspace up for ever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from service.session_cli import sessions
from service.store import Store, User
from service.terminals import Terminals

log = logging.getLogger("stackspace.idle")


def running_sessions(terminals: Terminals, ws: dict[str, Any]) -> int:
    """How many of the workspace's kept sessions still run their command."""
    owner = User(name=ws["owner"], admin=False)

    def grant(body: dict[str, Any]) -> dict[str, Any]:
        return terminals.mint(owner, ws, body, internal=True)

    return sum(1 for s in sessions(grant) if s.get("running"))


def in_use_check(store: Store, terminals: Terminals) -> Callable[[str, str], bool]:
    """For the runner: whether an otherwise idle workspace runs a kept session.
    An answer that cannot be had (the proxy down, the container gone) is "no":
    the proxy being unreachable must not keep every workspace running."""
    def in_use(owner: str, name: str) -> bool:
        ws = store.workspace(owner, name)
        if ws is None:
            return False
        try:
            return running_sessions(terminals, ws) > 0
        except Exception as exc:  # noqa: BLE001 - any failure reads as "not in use"
            log.warning("cannot list sessions", extra={
                "owner": owner, "workspace": name, "error": str(exc)[:200]})
            return False
    return in_use
