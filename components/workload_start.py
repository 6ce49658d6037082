"""Start a Docker workspace container with its pids limit already set
(SPEC §8: pids are limited).

The docker provider (terraform-provider-docker as pulumi-docker 5.2.0
bridges it) has no pids_limit field. So the workspace container is created
stopped (`start=False`) and started here, after `PidsLimit` is set through the
Engine API (`POST /containers/{id}/update`): no process of the workspace ever
runs without the limit. The daemon keeps it in the container's HostConfig, so
restarts by the restart policy keep it too. The provider never reads or
writes PidsLimit (its in-place updates send no value for it): no drift in
the stack.

Two callers: the program's after-create/after-update hook (right after the
provider made the container, on every `up`, an operator's too), and the
service after every run that leaves the workspace running (a limit changed
by hand is set back; a container whose hook never ran or failed is started).
The engine only warns when an after-hook fails: the service's call is the
one that fails the run.
No Pulumi imports: the service uses it outside the engine.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from components.egress import HOLDER_ERROR, READY_LINE

# How long a workspace's start waits for its network holder's rules.
HOLDER_READY_SECONDS = 60.0


def needs_pids_update(current: int | None, limit: int) -> bool:
    """Whether a container whose HostConfig.PidsLimit is `current` must be set
    to `limit`. Docker reports no limit as None, 0 or -1."""
    return current != limit


def never_started(attrs: dict[str, Any]) -> bool:
    """Whether a container (its inspect attrs) was made but never started:
    Docker's zero time in State.StartedAt."""
    return str((attrs.get("State") or {}).get("StartedAt", "")).startswith("0001-01-01")


def start_with_limits(client: Any, container_id: str, pids_limit: int) -> bool:
    """Set the container's pids limit if it lacks it, then start it unless it
    runs. `client`: a docker.DockerClient. Returns whether anything changed."""
    c = client.containers.get(container_id)
    changed = False
    if needs_pids_update(c.attrs.get("HostConfig", {}).get("PidsLimit"), pids_limit):
        # docker-py's update_container has no pids_limit argument: the same
        # call with the one field. Fields left out keep their values.
        api = client.api
        answer = api._result(api._post_json(
            api._url("/containers/{0}/update", container_id), data={"PidsLimit": pids_limit}),
            json=True)
        # An engine whose kernel lacks the pids cgroup drops the value with a
        # warning: never a limit that only looks set.
        if answer.get("Warnings"):
            raise RuntimeError("the Docker Engine did not set the pids limit: "
                               + "; ".join(answer["Warnings"]))
        changed = True
    holder = _network_holder(client, c.attrs)
    if holder is not None:
        if holder.status in ("created", "exited"):
            # Stopped by hand or never started (a cut-off run): it sets its rules again.
            holder.start()
            changed = True
        # No workspace process may run before the allowlist's rules exist.
        wait_holder_ready(holder)
        if c.status == "running" and _started(holder.attrs) > _started(c.attrs):
            # The holder restarted: the workspace's namespace lost its
            # interface. Restarting it joins the holder's new namespace.
            c.restart(timeout=10)
            return True
    if c.status != "running":
        c.start()
        changed = True
    return changed


def _network_holder(client: Any, attrs: dict[str, Any]) -> Any | None:
    """The container whose network namespace the workspace joins, if any."""
    mode = str((attrs.get("HostConfig") or {}).get("NetworkMode", ""))
    return client.containers.get(mode.split(":", 1)[1]) if mode.startswith("container:") else None


def _started(attrs: dict[str, Any]) -> datetime:
    text = str((attrs.get("State") or {}).get("StartedAt", ""))
    # Docker's RFC 3339 with nanoseconds: keep microseconds for fromisoformat.
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def holder_ready(status: str, logs: str) -> bool | None:
    """Whether a network holder has set its rules: True once its log says so,
    False if it has ended (its log tells why), None while it is getting there."""
    if READY_LINE in logs and status == "running":
        return True
    failed = status in ("exited", "dead", "restarting") or HOLDER_ERROR in logs
    return False if failed else None


def wait_holder_ready(holder: Any, timeout: float = HOLDER_READY_SECONDS) -> None:
    """Wait until the holder's current run has set its rules; raise with the
    holder's own error line if it failed (an unresolvable host, say)."""
    deadline = time.monotonic() + timeout
    while True:
        holder.reload()
        since = _started(holder.attrs)
        logs = holder.logs(since=since.timestamp()).decode(errors="replace")
        ready = holder_ready(holder.status, logs)
        if ready:
            return
        if ready is False or time.monotonic() > deadline:
            lines = [ln for ln in logs.splitlines() if "error" in ln] or logs.splitlines()[-1:]
            why = lines[-1] if lines else (
                f"the network holder is {holder.status}" if ready is False else
                f"the network holder set no rules within {timeout:.0f} s")
            raise RuntimeError(f"the outbound allowlist (runtime.egress_allow) could not be "
                               f"set up: {why}")
        time.sleep(0.2)
