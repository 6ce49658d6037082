"""The service's side of a Docker workspace's pids limit
(components.workload_start): after every run that leaves the workspace
running, its container has the runtime's limit and runs. That sets back a
limit changed by hand, and starts a container whose program hook never ran
(the run was cut off between the create and the hook). Kubernetes pods get
their pids limit from the kubelet (`podPidsLimit`), not from here.
"""

from __future__ import annotations

from components.base import LABEL_ROLE, workspace_labels
from components.clients import docker_client
from components.runtime import DockerRuntime, Runtime
from components.workload_start import never_started, start_with_limits
from service.runtime_objects import containers


def ensure_started_with_limits(rt: Runtime, owner: str, name: str, *, installation: str,
                               never_started_only: bool = False) -> int:
    """Returns how many of the workspace's containers were changed. Raises
    when the engine refuses or cannot be reached: a workspace that should run
    but does not, or runs without its limit, is a failed run.
    `never_started_only`: leave alone a container that ran and was stopped
    (by hand: the next start or update starts it again)."""
    if not isinstance(rt, DockerRuntime):
        return 0
    client = docker_client(rt)
    try:
        labels = {**workspace_labels(owner, name, installation), LABEL_ROLE: "workspace"}
        return sum(start_with_limits(client, c.id, rt.pids_limit)
                   for c in containers(client, labels)
                   if not never_started_only or never_started(c.attrs))
    finally:
        client.close()
