"""The service side of terminals: mint exec-proxy tickets for a user's running
workspace, and take the proxy's signed activity reports."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from components.runtime import DockerRuntime, Runtime, runtime_dict
from proxy import activity
from proxy.protocol import forward_url, is_port
from proxy.session_frames import is_session_id
from proxy.tickets import mint_ticket
from service.problems import Problem
from service.store import User

# A terminal's default: a login bash where the image has one, else the
# POSIX /bin/sh every image has (BusyBox, Alpine, distroless debug images).
DEFAULT_COMMAND = ["/bin/sh", "-c", "[ -x /bin/bash ] && exec /bin/bash -l; exec /bin/sh -l"]


def session_claim(value: Any) -> dict[str, str]:
    """The ticket's session claim (proxy.sessions) from the request's ``session``:
    absent: a new session for the command; ``{"attach": ID}``, ``{"kill": ID}`` or
    ``{"list": true}``."""
    if value is None:
        return {"mode": "start"}
    if not isinstance(value, dict) or len(value) != 1:
        raise Problem("validation", "bad session", {
            "session": 'one of {"attach": ID}, {"kill": ID}, {"list": true}'})
    (mode, arg), = value.items()
    if mode == "list" and arg is True:
        return {"mode": "list"}
    if mode in ("attach", "kill"):
        if isinstance(arg, str) and is_session_id(arg):
            return {"mode": mode, "id": arg}
        raise Problem("validation", "bad session id",
                      {f"session.{mode}": "1-64 letters, digits, '-' or '_'"})
    raise Problem("validation", "bad session", {
        "session": 'one of {"attach": ID}, {"kill": ID}, {"list": true}'})


class Terminals:
    def __init__(self, key: bytes, proxy_url: str, runtimes: list[Runtime],
                 internal_url: str | None = None):
        self.key = key
        self.proxy_url = proxy_url
        self.internal_url = internal_url or proxy_url  # for the service's own execs
        self.runtimes = {r.name: r for r in runtimes}

    def target(self, ws: dict[str, Any]) -> dict[str, Any]:
        """Where the proxy execs: the runtime entry (host and TLS/SSH files, or the
        kubeconfig: paths, no key material) and the workspace. Every runtime kind."""
        rt = self.runtimes.get(ws["runtime"])
        if rt is None:
            raise Problem("conflict", f"runtime {ws['runtime']!r} is no longer configured")
        if isinstance(rt, DockerRuntime):
            container = (ws.get("outputs") or {}).get("container")
            if not container:
                raise Problem("conflict", "the workspace has no running container")
            # Secret env is a file in the container, not its Env: the proxy
            # wraps the command to export it (components.secret_env).
            return {"type": "docker", "runtime": runtime_dict(rt), "container": container,
                    "secret_env": bool((ws.get("spec") or {}).get("secret_env"))}
        # The pod is found by its labels (a Deployment's pods have generated names),
        # the installation's among them: the proxy never opens another's pod.
        return {"type": "kubernetes", "runtime": runtime_dict(rt), "owner": ws["owner"],
                "workspace": ws["name"], "installation": ws.get("installation") or "",
                "container": "workspace"}

    def mint(self, user: User, ws: dict[str, Any], body: dict[str, Any], *,
             kept: bool = True, internal: bool = False) -> dict[str, Any]:
        """A ticket for the request ``body``. A command runs in a session kept
        in the workspace (it outlives its connection) unless ``kept`` is false:
        the service's own short execs (the file API) end with their connection.
        ``internal``: the service itself connects, at the proxy's internal URL."""
        if "port" in body:
            return self.mint_forward(user, ws, body)
        unknown = set(body) - {"command", "tty", "session"}
        if unknown:
            raise Problem("validation", "unknown fields", {k: "unknown field" for k in unknown})
        session = session_claim(body.get("session")) if kept else None
        command = body.get("command", DEFAULT_COMMAND)
        tty = body.get("tty", "command" not in body)
        if (not isinstance(command, list) or not command or len(command) > 64
                or not all(isinstance(c, str) and c and "\0" not in c for c in command)):
            raise Problem("validation", "bad command",
                          {"command": "must be a non-empty list of strings"})
        if not isinstance(tty, bool):
            raise Problem("validation", "bad tty", {"tty": "must be true or false"})
        # No workspace env in the ticket: the container's env already reaches the
        # exec'd process, and values in a pods/exec argv land in audit logs.
        ticket, expires = mint_ticket(
            self.key, user=user.name, workspace=f"{ws['owner']}/{ws['name']}",
            target=self.target(ws), command=command, tty=tty, env={}, session=session)
        return {"url": self.internal_url if internal else self.proxy_url, "ticket": ticket,
                "expires_at": expires}

    def mint_forward(self, user: User, ws: dict[str, Any],
                     body: dict[str, Any]) -> dict[str, Any]:
        """A ticket for one TCP connection to ``port`` inside the workspace
        (``stackspace port-forward``): it runs no command."""
        unknown = set(body) - {"port"}
        if unknown:
            raise Problem("validation", "a port-forward ticket takes only a port",
                          {k: "unknown field with port" for k in unknown})
        port = body["port"]
        if not is_port(port):
            raise Problem("validation", "bad port", {"port": "must be an integer in 1..65535"})
        ticket, expires = mint_ticket(
            self.key, user=user.name, workspace=f"{ws['owner']}/{ws['name']}",
            target=self.target(ws), command=[], tty=False, kind="forward", port=port)
        return {"url": forward_url(self.proxy_url), "ticket": ticket, "expires_at": expires}

    def verify_activity(self, headers: Mapping[str, str], content_length: int | None,
                        read: Callable[[], bytes]) -> tuple[str, str, float]:
        """Check the proxy's signed report: its size and signature from the
        headers first, and only then `read()` the body. Returns (owner,
        workspace name, timestamp)."""
        if content_length is None:
            raise Problem("bad-request", "send the report with a Content-Length")
        if content_length > activity.MAX_BODY:
            raise Problem("too-large", f"an activity report is at most {activity.MAX_BODY} bytes")
        try:
            digest = activity.check_headers(self.key, headers, time.time())
            body = read()
            activity.check_body(digest, body)
        except activity.ActivityRejected as e:
            raise Problem("unauthorized", str(e)) from e
        try:
            report = json.loads(body)
            owner, _, name = str(report["workspace"]).partition("/")
            return owner, name, min(float(report.get("timestamp") or time.time()), time.time())
        except (ValueError, KeyError, TypeError) as e:
            raise Problem("bad-request", "malformed activity report") from e
