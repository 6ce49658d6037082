"""The pids limit of a Docker workspace (SPEC §8), applied through the Engine
API after every run that may have made or replaced its container.

Why not in the program: the docker provider (terraform-provider-docker, as
pulumi-docker 5.2.0 bridges it) has no pids_limit field, and the Python SDK
none either. The Engine API sets `PidsLimit` on a container that exists
(`POST /containers/{id}/update`, no restart); the daemon keeps it in the
container's HostConfig, so restarts by the restart policy keep it. Each run
that ends with the workspace running applies it again, so a container made by
create, start, update, recovery or an operator's own `pulumi up`, or a limit
changed by hand, is set right by the next operation. The provider never reads
or writes PidsLimit (its in-place updates send no value for it), so this
makes no drift in the stack.

Between the provider starting a new container and this call (the rest of the
up, about a second or two) the container has no limit of its own: an engine
started with `default-pids-limit` (daemon.json) closes that window too.
Kubernetes pods get theirs from the kubelet (`podPidsLimit`), not from here.
"""

from __future__ import annotations

import logging
from typing import Any

from components.base import LABEL_ROLE, workspace_labels
from components.clients import docker_client
from components.runtime import DockerRuntime, Runtime
from service.runtime_objects import containers

log = logging.getLogger("stackspace.limits")


def needs_pids_update(current: int | None, limit: int) -> bool:
    """Whether a container whose HostConfig.PidsLimit is `current` must be set
    to `limit`. Docker reports no limit as None, 0 or -1."""
    return current != limit


def apply_pids_limit(rt: Runtime, owner: str, name: str, *, installation: str) -> int:
    """Set the runtime's pids limit on the workspace's container(s) that lack
    it; returns how many were changed. Raises when the engine refuses or
    cannot be reached: a workspace running without its limit is a failed run."""
    if not isinstance(rt, DockerRuntime):
        return 0
    client = docker_client(rt)
    try:
        labels = {**workspace_labels(owner, name, installation), LABEL_ROLE: "workspace"}
        changed = 0
        for c in containers(client, labels):
            if needs_pids_update(c.attrs.get("HostConfig", {}).get("PidsLimit"), rt.pids_limit):
                _update_pids_limit(client, c.id, rt.pids_limit)
                changed += 1
        return changed
    finally:
        client.close()


def _update_pids_limit(client: Any, container_id: str, limit: int) -> None:
    # docker-py's update_container has no pids_limit argument: the same call,
    # with the one field. Fields left out of the body keep their values.
    api = client.api
    url = api._url("/containers/{0}/update", container_id)
    api._raise_for_status(api._post_json(url, data={"PidsLimit": limit}))
