"""When a run may skip the storage guard's preview (SPEC §3).

The guard previews every non-delete plan and refuses one that would delete or
replace storage. A preview is a whole engine pass, so a run skips it when the
stack's state alone proves the plan cannot touch storage:

- the state holds exactly one storage resource, protected, under the name and
  parent type the program registers it with (so the plan keeps it: no delete;
  an operator's `state unprotect` or `state rename` falls back to a preview);
- no operation is pending (a cut-off run: recovery first, then a preview);
- the stack's attestation output equals the digest of this run's config
  without `running`: the last run registered this very storage resource and
  its provider, from the same inputs and the same program code, and the
  engine accepted it. Same inputs, same provider: no replace.

So only what cannot change storage (start, stop, a retried run) skips the
preview; any spec, runtime or code change runs it. The engine's own protect
check stays behind both paths.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

from components.runtime import DockerRuntime, Runtime, runtime_dict
from stacks import code_version
from stacks.config import KEY_RUNNING, StackConfig

# The stack output that attests the storage registration (see module doc).
ATTEST_OUTPUT = "storage_attest"
STORAGE_NAME = "storage"
STORAGE_TYPE = {
    "docker": ("stackspace:docker:Workspace", "docker:index/volume:Volume"),
    "kubernetes": ("stackspace:kubernetes:Workspace",
                   "kubernetes:core/v1:PersistentVolumeClaim"),
}
STORAGE_TYPES = frozenset(t for _, t in STORAGE_TYPE.values())
# Plan steps that would lose a storage resource's data.
DESTRUCTIVE_OPS = frozenset({"delete", "replace", "create-replacement", "delete-replaced",
                             "discard", "discard-replaced"})


def protected_storage(error_text: str) -> list[str]:
    """Storage URNs named by the engine's "marked for protection" refusal."""
    if "protect" not in error_text:
        return []
    urns = re.findall(r"urn:pulumi:[^\s\"']+", error_text)
    return sorted({u for u in urns if any(t in u for t in STORAGE_TYPES)})


def _file_digest(path: str | None) -> str | None:
    """Runtime files whose content the provider gets (TLS material, kubeconfig)."""
    if not path:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


def runtime_kind(runtime: Runtime) -> str:
    return "docker" if isinstance(runtime, DockerRuntime) else "kubernetes"


def attestation(cfg: StackConfig, key: bytes) -> str:
    """Keyed digest of everything that shapes storage and its provider: the
    whole config but `running`, runtime file contents, program code. Keyed (the
    config holds secrets; the digest lands in the state in clear)."""
    values = {k: v for k, (v, _secret) in cfg.to_config().items() if k != KEY_RUNNING}
    files = {f: _file_digest(getattr(cfg.runtime, f, None))
             for f in ("ca_file", "cert_file", "key_file", "kubeconfig")}
    blob = json.dumps({"config": values, "files": files, "runtime": runtime_dict(cfg.runtime),
                       "code": code_version.current_digest()}, sort_keys=True)
    return hmac.new(key, blob.encode(), hashlib.sha256).hexdigest()


def preview_needed(deployment: dict[str, Any] | None, stack: str, kind: str,
                   attest: str) -> str | None:
    """Why this run must preview before its up, or None when the state proves
    the plan cannot delete or replace storage. `deployment`: the stack's state
    as `stack export` gives it (None: a stack that was just created, empty)."""
    if deployment is None:
        return None
    if deployment.get("pending_operations"):
        return "an interrupted run left pending operations"
    resources: list[dict[str, Any]] = deployment.get("resources") or []
    if not resources:
        return None  # nothing recorded: a plan can only create
    parent_type, storage_type = STORAGE_TYPE[kind]
    storage = [r for r in resources if r.get("type") in STORAGE_TYPES]
    if len(storage) != 1:
        return f"the state holds {len(storage)} storage resources"
    (res,) = storage
    expected = f"urn:pulumi:{stack}::"
    urn = str(res.get("urn", ""))
    if not (urn.startswith(expected) and urn.endswith(f"::{parent_type}${storage_type}::"
                                                      f"{STORAGE_NAME}")):
        return "the storage resource is not where the program declares it"
    if not res.get("protect"):
        return "the storage resource is not protected"
    roots = [r for r in resources if r.get("type") == "pulumi:pulumi:Stack"]
    recorded = (roots[0].get("outputs") or {}).get(ATTEST_OUTPUT) if len(roots) == 1 else None
    if not isinstance(recorded, str) or not hmac.compare_digest(recorded, attest):
        return "storage, its provider or the program changed since storage was last registered"
    return None
