"""What every backend's workspace component is given, and the shared labels.

A workspace's objects are identified by owner + workspace name, and, when the
installation has an id (service.store), by that id too: two installations
sharing a Docker Engine or a namespace then never see each other's objects.
The empty id is a store made before ids existed: its objects keep exactly the
labels they were made with (no installation label). Its lookups ask for the
label's absence, so they never reach an installation that has an id, but they
still match an object of the same owner/name made by another legacy
installation (the old hazard, which only a fresh store escapes).
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
    """A Kubernetes selector matching every label given; without an
    installation label, only objects that have none (legacy ones)."""
    terms = [f"{k}={v}" for k, v in labels.items()]
    if LABEL_INSTALLATION not in labels:
        terms.append(f"!{LABEL_INSTALLATION}")
    return ",".join(terms)


def label_filters(labels: dict[str, str]) -> list[str]:
    """Docker's `label` filter values (`k=v` each; an object must match all).
    Docker cannot filter on a label's absence: pair with `same_installation`."""
    return [f"{k}={v}" for k, v in labels.items()]


def same_installation(selected: dict[str, str], found: dict[str, str] | None) -> bool:
    """Whether an object `label_filters(selected)` found is really selected: a
    legacy lookup (no installation label) skips objects of installations with an id."""
    return LABEL_INSTALLATION in selected or LABEL_INSTALLATION not in (found or {})


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
    # The run makes a failed init step again (stacks.init_retry): the new one
    # takes today's image, not the one the failed step ran (perhaps the cause).
    retry_init: bool = False

    @property
    def labels(self) -> dict[str, str]:
        return workspace_labels(self.owner, self.spec.name, self.installation)

    def labels_with(self, role: str) -> dict[str, str]:
        return {**self.labels, LABEL_ROLE: role}


def memory_bytes(spec: WorkspaceSpec) -> int:
    return int(quantity_value(spec.resources.memory))


def cpu_cores(spec: WorkspaceSpec) -> float:
    return quantity_value(spec.resources.cpu)
