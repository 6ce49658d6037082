"""Which init steps a run must make again (SPEC §3: a failed init never makes
a workspace stuck).

The init step (a Docker container, a Kubernetes Job with `backoffLimit: 0`)
is named by its fingerprint, so an unchanged spec never runs it twice. That
holds for a failed one too: the engine keeps it in the state (a container
with its non-zero exit code, a Job with the await error as `initErrors`) and
every later start raises the same error, even once the git server is back or
the credential is fixed. A run that should leave the workspace running
therefore replaces the init steps the state records as failed: the new one
clones again. A successful init is never replaced.
"""

from __future__ import annotations

from typing import Any

INIT_NAME = "init"
INIT_TYPES = frozenset({"docker:index/container:Container", "kubernetes:batch/v1:Job"})


def failed_inits(deployment: dict[str, Any]) -> list[str]:
    """URNs of the init steps `deployment` (a stack's state) records as failed."""
    urns = []
    for res in deployment.get("resources") or []:
        urn = str(res.get("urn", ""))
        if res.get("type") not in INIT_TYPES or not urn.endswith(f"::{INIT_NAME}"):
            continue
        outputs = res.get("outputs") or {}
        status = outputs.get("status") or {}
        if (res.get("initErrors") or outputs.get("exitCode") not in (None, 0)
                or (isinstance(status, dict) and status.get("failed"))):
            urns.append(urn)
    return urns
