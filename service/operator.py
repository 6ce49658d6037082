"""The operator's way into a workspace's stack (SPEC §1, §9): the plain `pulumi`
CLI on the project, in a private work dir holding the stack's settings (config
and encryption salt) from the store, with the service's backend and passphrase.
Nothing is written into the checkout; settings the CLI changed (an operator's
`config set`) go back to the store unless an operation is running on it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from typing import Protocol

from stacks.settings import PulumiSettings, StackFiles


class WorkspaceNotFound(LookupError):
    """No such workspace in the store."""


class SettingsStore(Protocol):
    def workspace(self, owner: str, name: str) -> dict | None: ...
    def workspaces(self, owner: str | None = None) -> list[dict]: ...
    def last_operation(self, owner: str, workspace: str) -> dict | None: ...
    def update_workspace(self, owner: str, name: str, **fields: object) -> None: ...


def find_workspace(store: SettingsStore, ref: str) -> dict:
    """The workspace `ref` names: OWNER/NAME, or its stack's name (as `pulumi
    stack ls` shows it, optionally project-qualified)."""
    owner, slash, name = ref.partition("/")
    ws = store.workspace(owner, name) if slash and "/" not in name else None
    if ws is None:
        stack = ref.rsplit("/", 1)[-1]
        ws = next((w for w in store.workspaces() if w["stack"] == stack), None)
    if ws is None:
        raise WorkspaceNotFound(f"no workspace {ref}")
    return ws


def run_pulumi(store: SettingsStore, settings: PulumiSettings, ref: str,
               args: Sequence[str], warn: Callable[[str], None] = print) -> int:
    """Run `pulumi ARGS` with the stack of workspace `ref` selected; its stdio
    is the caller's. Returns the CLI's exit code."""
    ws = find_workspace(store, ref)
    owner, name = ws["owner"], ws["name"]
    env = {**os.environ, **settings.env()}
    with StackFiles(settings.pulumi_home, ws["stack"], ws.get("stack_settings")) as files:
        # Selected in this private dir only: every plain command then applies
        # to the workspace's stack (`stack output`, `config`, `preview` ...).
        select = subprocess.run([settings.pulumi_binary, "stack", "select", ws["stack"],  # noqa: S603
                                 "--non-interactive"], cwd=files.path, env=env,
                                capture_output=True, text=True, check=False)
        if select.returncode != 0:
            raise WorkspaceNotFound(f"stack {ws['stack']} of {owner}/{name} is not in the "
                                    f"backend: {select.stderr.strip()[:300]}")
        code = subprocess.run([settings.pulumi_binary, *args], cwd=files.path,  # noqa: S603
                              env=env, check=False).returncode
    if files.text is not None and files.text != files.initial:
        last = store.last_operation(owner, name)
        if last and last["status"] in ("queued", "running"):
            warn(f"stack settings changed but not saved: operation {last['id']} is "
                 f"{last['status']} on {owner}/{name}; run the command again after it")
        else:
            store.update_workspace(owner, name, stack_settings=files.text)
    return code
