"""What every backend's workspace component is given, and the shared labels.

A workspace's objects are identified by owner + workspace name, and, when the
installation has an id (service.store), by that id too: two installations
sharing a Docker Engine or a namespace then never see each other's objects.
The empty id is a store made before ids existed: its objects keep exactly the
labels they were made with (no installation label), and lookups by them still
match an object of the same owner/name made by another legacy installation.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.spec import WorkspaceSpec, quantity_value

LABEL_WORKSPACE = "stackspace.dev/workspace"
LABEL_OWNER = "stackspace.dev/owner"
LABEL_ROLE = "stackspace.dev/role"
LABEL_INSTALLATION = "stackspace.dev/installation"


def workspace_labels(owner: str, name: str, installation: str) -> dict[str, str]:
    """The labels that identify one workspace's objects (and select them)."""
    labels = {LABEL_WORKSPACE: name, LABEL_OWNER: owner}
    if installation:
        labels[LABEL_INSTALLATION] = installation
    return labels


def label_selector(labels: dict[str, str]) -> str:
    """A Kubernetes equality selector (`k=v,...`) matching every label given."""
    return ",".join(f"{k}={v}" for k, v in labels.items())


def label_filters(labels: dict[str, str]) -> list[str]:
    """Docker's `label` filter values (`k=v` each; an object must match all)."""
    return [f"{k}={v}" for k, v in labels.items()]


@dataclass(frozen=True)
class WorkspaceInputs:
    owner: str
    spec: WorkspaceSpec
    # Desired state: the pod/container exists only while running.
    running: bool
    # Set only by the delete path: lifts the storage protection so that
    # `destroy` may remove it. Every other operation keeps storage protected.
    deleting: bool = False
    # Base for runtime object names (stacks.naming.resource_base).
    base_name: str = ""
    # The installation's id ("" for a store made before ids existed).
    installation: str = ""

    @property
    def labels(self) -> dict[str, str]:
        return workspace_labels(self.owner, self.spec.name, self.installation)

    def labels_with(self, role: str) -> dict[str, str]:
        return {**self.labels, LABEL_ROLE: role}


def memory_bytes(spec: WorkspaceSpec) -> int:
    return int(quantity_value(spec.resources.memory))


def cpu_cores(spec: WorkspaceSpec) -> float:
    return quantity_value(spec.resources.cpu)
