"""The service side of terminals: mint exec-proxy tickets for a user's running
workspace, and take the proxy's signed activity reports."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from components.runtime import DockerRuntime, Runtime
from components.spec import WorkspaceSpec
from service.problems import Problem
from service.store import User
from service.tickets import mint_ticket

DEFAULT_COMMAND = ["/bin/bash", "-l"]


class Terminals:
    def __init__(self, key: bytes, proxy_url: str, runtimes: list[Runtime]):
        self.key = key
        self.proxy_url = proxy_url
        self.runtimes = {r.name: r for r in runtimes}

    def target(self, ws: dict[str, Any]) -> dict[str, Any]:
        rt = self.runtimes.get(ws["runtime"])
        if rt is None:
            raise Problem("conflict", f"runtime {ws['runtime']!r} is no longer configured")
        if isinstance(rt, DockerRuntime):
            if not rt.host.startswith("unix://"):
                raise Problem("conflict", "terminals on tcp:// and ssh:// Docker hosts are not "
                                          "supported yet")
            return {"type": "docker", "host": rt.host, "container": ws["outputs"]["container"]}
        return {"type": "kubernetes", "kubeconfig": rt.kubeconfig, "context": rt.context,
                "namespace": rt.namespace, "pod": ws["outputs"]["pod"],
                "container": "workspace"}

    def mint(self, user: User, ws: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        unknown = set(body) - {"command", "tty"}
        if unknown:
            raise Problem("validation", "unknown fields", {k: "unknown field" for k in unknown})
        command = body.get("command", DEFAULT_COMMAND)
        tty = body.get("tty", "command" not in body)
        if (not isinstance(command, list) or not command or len(command) > 64
                or not all(isinstance(c, str) and c and "\0" not in c for c in command)):
            raise Problem("validation", "bad command",
                          {"command": "must be a non-empty list of strings"})
        if not isinstance(tty, bool):
            raise Problem("validation", "bad tty", {"tty": "must be true or false"})
        spec = WorkspaceSpec.parse(ws["spec"])
        ticket, expires = mint_ticket(
            self.key, user=user.name, workspace=f"{ws['owner']}/{ws['name']}",
            target=self.target(ws), command=command, tty=tty, env=dict(spec.env))
        return {"url": self.proxy_url, "ticket": ticket, "expires_at": expires}

    def verify_activity(self, body: bytes, signature: str) -> tuple[str, str, float]:
        """Check the proxy's signature; return (owner, workspace name, timestamp)."""
        expected = "sha256=" + hmac.new(self.key, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise Problem("unauthorized", "bad activity signature")
        try:
            report = json.loads(body)
            owner, _, name = str(report["workspace"]).partition("/")
            return owner, name, min(float(report.get("timestamp") or time.time()), time.time())
        except (ValueError, KeyError, TypeError) as e:
            raise Problem("bad-request", "malformed activity report") from e
