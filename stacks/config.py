"""The `stackspace:*` stack config keys: what the service asks a stack to be.

Keeping the whole request in stack config means `pulumi config --stack <ws>`
shows it and `pulumi preview --stack <ws>` reproduces the service's plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from components.runtime import Runtime, parse_runtime, runtime_dict
from components.spec import WorkspaceSpec
from stacks.naming import validate_installation

NAMESPACE = "stackspace"
KEY_OWNER = "owner"
KEY_SPEC = "spec"
KEY_SECRETS = "secrets"
KEY_RUNNING = "running"
KEY_DELETING = "deleting"
KEY_RUNTIME = "runtime"
# Written only when non-empty: a legacy stack's config stays byte-identical.
KEY_INSTALLATION = "installation"

# key (without namespace) -> (text, is_secret)
ConfigValues = dict[str, tuple[str, bool]]


class IncompleteConfig(ValueError):
    """The stack has no workspace config (a create died before writing it)."""


@dataclass(frozen=True)
class StackConfig:
    owner: str
    spec: WorkspaceSpec
    runtime: Runtime
    running: bool
    deleting: bool = False
    # The installation's id (service.store); "" for a store made before ids existed.
    installation: str = ""

    def __post_init__(self) -> None:
        try:
            validate_installation(self.installation)
        except ValueError as e:
            raise ValueError(f"{NAMESPACE}:{KEY_INSTALLATION}: {e}") from None

    def to_config(self) -> ConfigValues:
        """Config values as key -> (text, is_secret), keys without the namespace."""
        values: ConfigValues = {
            KEY_OWNER: (self.owner, False),
            KEY_SPEC: (json.dumps(self.spec.public_dict(), sort_keys=True), False),
            KEY_SECRETS: (json.dumps(self.spec.secret_values(), sort_keys=True), True),
            KEY_RUNNING: ("true" if self.running else "false", False),
            KEY_DELETING: ("true" if self.deleting else "false", False),
            KEY_RUNTIME: (json.dumps(runtime_dict(self.runtime), sort_keys=True), False),
        }
        if self.installation:
            values[KEY_INSTALLATION] = (self.installation, False)
        return values

    @classmethod
    def from_values(cls, get: Any) -> StackConfig:
        """Build from a getter `get(key) -> str | None` (Pulumi Config or a dict)."""
        missing = [k for k in (KEY_OWNER, KEY_SPEC, KEY_RUNTIME) if not get(k)]
        if missing:
            keys = ", ".join(f"{NAMESPACE}:{k}" for k in missing)
            raise IncompleteConfig(f"stack config lacks {keys}; the create never wrote it: "
                                   "delete the workspace and create it again")
        secrets = json.loads(get(KEY_SECRETS) or "{}")
        return cls(
            owner=get(KEY_OWNER),
            spec=WorkspaceSpec.from_public(json.loads(get(KEY_SPEC)), secrets),
            runtime=parse_runtime(json.loads(get(KEY_RUNTIME))),
            running=(get(KEY_RUNNING) or "true") == "true",
            deleting=(get(KEY_DELETING) or "false") == "true",
            installation=get(KEY_INSTALLATION) or "",
        )
