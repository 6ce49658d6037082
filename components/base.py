"""What every backend's workspace component is given, and the shared labels."""

from __future__ import annotations

from dataclasses import dataclass

from components.spec import WorkspaceSpec, quantity_value

LABEL_WORKSPACE = "stackspace.dev/workspace"
LABEL_OWNER = "stackspace.dev/owner"
LABEL_ROLE = "stackspace.dev/role"


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

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_WORKSPACE: self.spec.name, LABEL_OWNER: self.owner}

    def labels_with(self, role: str) -> dict[str, str]:
        return {**self.labels, LABEL_ROLE: role}


def memory_bytes(spec: WorkspaceSpec) -> int:
    return int(quantity_value(spec.resources.memory))


def cpu_cores(spec: WorkspaceSpec) -> float:
    return quantity_value(spec.resources.cpu)
