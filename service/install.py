"""`stackspace install` / `uninstall`: stackspace into a Kubernetes cluster, by
running the install program (deploy/, a Pulumi project) with the project's
toolchain. One stack per install namespace; its state and passphrase stay on
the operator's machine (`--state-dir`), its secrets (generated once, kept across
upgrades) are Pulumi secrets in that state. `uninstall` keeps the service's
data volume, and with it that stack, unless asked to delete the data. `render`
runs the same program with the provider's YAML output instead of a cluster,
for kubectl users.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulumi import automation as auto

from service.config import load_config
from stacks.automation import EngineCommand

DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy"
DEFAULT_STATE_DIR = Path.home() / ".local" / "share" / "stackspace" / "install"
PROJECT = "stackspace-install"
CLAIM_TYPE = "kubernetes:core/v1:PersistentVolumeClaim"


def _new_secrets() -> dict[str, str]:
    from cryptography.fernet import Fernet

    return {"passphrase": secrets.token_hex(32), "ticketKey": secrets.token_hex(32),
            "storeKey": Fernet.generate_key().decode(),
            "adminToken": f"ssp_{secrets.token_urlsafe(32)}"}


@dataclass
class InstallOptions:
    namespace: str = "stackspace"
    workspace_namespace: str = "stackspace-workspaces"
    image: str | None = None
    database_url: str | None = None
    backend_url: str | None = None
    settings: dict[str, str] = field(default_factory=dict)  # other config keys, as given
    state_dir: Path = DEFAULT_STATE_DIR

    def config(self) -> dict[str, auto.ConfigValue]:
        if not self.image:
            raise ValueError("image: required (scripts/toolchain/stackspace-image.sh builds it)")
        values = {"namespace": auto.ConfigValue(self.namespace),
                  "workspaceNamespace": auto.ConfigValue(self.workspace_namespace),
                  "image": auto.ConfigValue(self.image)}
        for key, value in self.settings.items():
            values[key] = auto.ConfigValue(value)
        for key, secret in (("databaseUrl", self.database_url),
                            ("backendUrl", self.backend_url)):
            if secret:
                values[key] = auto.ConfigValue(secret, secret=True)
        return {f"{PROJECT}:{k}": v for k, v in values.items()}


def _stack(state_dir: Path, name: str, create: bool = True) -> auto.Stack:
    """The install's stack, with the service's toolchain and a file:// backend. Its
    settings file (config, encryption salt) stays in the state dir, not the checkout:
    the project there runs the program in deploy/ with this interpreter."""
    settings = load_config(data_dir=state_dir).pulumi_settings()
    root = str(settings.bin_dir.parent) if settings.bin_dir else None
    options: dict[str, Any] = {"toolchain": "pip"}
    if sys.prefix != sys.base_prefix:
        options["virtualenv"] = sys.prefix
    project = auto.ProjectSettings(
        name=PROJECT, main=str(DEPLOY_DIR),
        runtime=auto.ProjectRuntimeInfo(name="python", options=options))
    work_dir = state_dir / "project"
    work_dir.mkdir(parents=True, exist_ok=True)
    workspace = auto.LocalWorkspace(
        work_dir=str(work_dir), project_settings=project, env_vars=settings.env(),
        pulumi_home=str(settings.pulumi_home),
        pulumi_command=EngineCommand(root=root, skip_version_check=True))
    if create:
        return auto.Stack.create_or_select(name, workspace)
    try:
        return auto.Stack.select(name, workspace)
    except auto.StackNotFoundError as e:
        raise ValueError(f"namespace: no install of {name!r} recorded in {state_dir}") from e


def _apply(stack: auto.Stack, opts: InstallOptions, extra: dict[str, auto.ConfigValue],
           echo: Callable[[str], Any]) -> auto.UpResult:
    current = stack.get_all_config()
    config = opts.config() | extra
    # Secrets are made once: an upgrade keeps every replica's keys and the store's data.
    for key, value in _new_secrets().items():
        if f"{PROJECT}:{key}" not in current:
            config[f"{PROJECT}:{key}"] = auto.ConfigValue(value, secret=True)
    stack.set_all_config({k: v for k, v in config.items() if not v.secret})
    for key, value in config.items():
        if value.secret and (key not in current or current[key].value != value.value):
            _set_secret(stack, key, value.value)
    return stack.up(on_output=echo, color="never")


def _cli(stack: auto.Stack, *args: str, stdin: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    """The stack's Pulumi CLI, for what the Automation API lacks."""
    ws = stack.workspace
    assert isinstance(ws, auto.LocalWorkspace)
    return subprocess.run(
        [ws.pulumi_command.command, *args, "--stack", stack.name, "--non-interactive"],
        input=stdin, text=True, capture_output=True, check=False, cwd=ws.work_dir,
        env={**os.environ, **(ws.env_vars or {})}, timeout=120)


def _set_secret(stack: auto.Stack, key: str, value: str) -> None:
    """`pulumi config set --secret` with the value on stdin, never in an argv
    (the Automation API's set_all_config puts values on the command line)."""
    proc = _cli(stack, "config", "set", "--secret", key, stdin=value)
    if proc.returncode != 0:
        # stderr may name the key but never holds the value (it came on stdin).
        raise ValueError(f"{key.removeprefix(PROJECT + ':')}: could not be stored "
                         f"(pulumi config set exit {proc.returncode})")


def install(opts: InstallOptions, echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """Create or upgrade the install; returns its outputs (the admin token is a secret)."""
    stack = _stack(opts.state_dir, opts.namespace)
    result = _apply(stack, opts, {}, echo)
    return {k: v.value for k, v in result.outputs.items()}


def uninstall(namespace: str, state_dir: Path = DEFAULT_STATE_DIR,
              echo: Callable[[str], Any] = print, delete_data: bool = False) -> list[str]:
    """Destroy what the install made. Its data volume (the SQLite store and the
    workspaces' file:// state) and the namespaces holding it are protected: they
    stay, with the stack and its secrets (the keys of that data), for a later
    install to use again, unless delete_data. Returns the claims kept."""
    stack = _stack(state_dir, namespace, create=False)
    if delete_data:
        proc = _cli(stack, "state", "unprotect", "--all", "--yes")
        if proc.returncode != 0 and "no resources" not in proc.stderr.lower():
            raise RuntimeError(f"pulumi state unprotect failed (exit {proc.returncode})")
    stack.destroy(on_output=echo, color="never", exclude_protected=not delete_data)
    kept = kept_claims(stack.export_stack().deployment or {})
    if not kept:
        stack.workspace.remove_stack(namespace)
    return kept


def kept_claims(deployment: dict[str, Any]) -> list[str]:
    """namespace/name of each PersistentVolumeClaim still in a stack's state."""
    return sorted(f"{r['outputs']['metadata']['namespace']}/{r['outputs']['metadata']['name']}"
                  for r in deployment.get("resources", [])
                  if r.get("type") == CLAIM_TYPE and not r.get("delete"))


def render(opts: InstallOptions, out_dir: Path, echo: Callable[[str], Any] = print) -> list[Path]:
    """Write the manifests as YAML files under out_dir (no cluster needed); returns them.
    The Secret's values (generated afresh by each render: apply one render, do not
    mix two) are in the files in the clear, as with any rendered manifest."""
    with tempfile.TemporaryDirectory(prefix="stackspace-render-") as tmp:
        stack = _stack(Path(tmp), opts.namespace)
        _apply(stack, opts, {f"{PROJECT}:renderDir": auto.ConfigValue(str(out_dir))},
               echo)
    return sorted(out_dir.rglob("*.yaml"))


def kept_note(namespace: str, kept: list[str]) -> str:
    """What `uninstall` tells the operator it left, and how to remove or reuse it."""
    if not kept:
        return f"uninstalled {namespace}: nothing kept"
    return (f"uninstalled {namespace}; kept the data volume {', '.join(kept)} (the store and "
            f"the workspaces' Pulumi state): `stackspace install --namespace {namespace}` "
            "with the same --state-dir uses it again, `stackspace uninstall --namespace "
            f"{namespace} --delete-data` deletes it")
