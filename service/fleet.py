"""Fleet preview (SPEC §10): a checkout's program previewed against every
workspace stack, with each stack's current config, writing nothing.

Each preview is the plain `pulumi preview --json` of the checkout's program
(the one an operator runs with `stackspace stack OWNER/NAME -- preview`), in a
private work dir that links the checkout and holds the stack's settings from
the store. A preview saves no config, no state and no history, takes no lock,
and the settings file it may touch is thrown away with the work dir; the store
is only read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from service.rollout_plan import review_digest
from stacks import code_version
from stacks.fleet_report import WorkspaceReport, summarise
from stacks.settings import PulumiSettings, StackFiles, engine_environment

BUSY = ("queued", "running")


class FleetStore(Protocol):
    def workspaces(self, owner: str | None = None) -> list[dict]: ...
    def last_operation(self, owner: str, workspace: str) -> dict | None: ...


class ProgramError(ValueError):
    """--program does not name a checkout of the stackspace program."""


PROGRAM_FILES = ("Pulumi.yaml", "__main__.py", "stacks/program.py", "components")


def check_program(path: Path) -> Path:
    """The checkout at `path` or the nearest folder above it (a command run
    inside the repository), resolved; ProgramError if none holds the program."""
    path = path.resolve()
    for candidate in (path, *path.parents):
        if all((candidate / p).exists() for p in PROGRAM_FILES):
            return candidate
    missing = [p for p in PROGRAM_FILES if not (path / p).exists()]
    raise ProgramError(f"--program: {path} is not a stackspace checkout "
                       f"(missing {', '.join(missing)})")


def selected(store: FleetStore, owner: str | None, runtime: str | None) -> list[dict]:
    """The workspaces a fleet operation covers: every one (or an owner's, a
    runtime's) the service has not deleted."""
    return [w for w in store.workspaces(owner or None)
            if w["desired"] != "deleted" and (runtime is None or w["runtime"] == runtime)]


def plan_path(plans: Path, stack: str) -> Path:
    return plans / f"{stack}.plan.json"


def review_path(plans: Path, stack: str) -> Path:
    """What `fleet rollout --plans` checks each workspace against."""
    return plans / f"{stack}.review.json"


def save_review(plans: Path, program: Path, ws: dict[str, Any]) -> None:
    review_path(plans, ws["stack"]).write_text(json.dumps({
        "workspace": f"{ws['owner']}/{ws['name']}", "code": code_version.code_digest_at(program),
        "state": review_digest(ws["spec"], ws.get("stack_settings"))}, indent=2) + "\n")


def read_reviews(plans: Path) -> dict[str, dict[str, str]]:
    """The reviews `--save-plans` left in `plans`: "owner/name" -> code, state."""
    out = {}
    for path in sorted(plans.glob("*.review.json")):
        data = json.loads(path.read_text())
        out[data["workspace"]] = {"code": data["code"], "state": data["state"]}
    return out


def preview_workspace(settings: PulumiSettings, program: Path, ws: dict[str, Any],
                      busy: dict[str, Any] | None, plans: Path | None = None
                      ) -> WorkspaceReport:
    ref = f"{ws['owner']}/{ws['name']}"
    if not ws.get("stack_settings"):
        return WorkspaceReport(workspace=ref, stack=ws["stack"], skipped=True,
                               note="no stack yet (its create has not run)")
    env = {**engine_environment(os.environ), **settings.env(),
           # The checkout's modules, never the installed ones.
           "PYTHONPATH": str(program)}
    args = [settings.pulumi_binary, "preview", "--stack", ws["stack"], "--json",
            "--non-interactive"]
    if plans is not None:
        args += ["--save-plan", str(plan_path(plans, ws["stack"]))]
    with StackFiles(settings.pulumi_home, ws["stack"], ws["stack_settings"],
                    project=program) as files:
        if not (program / ".venv").exists():
            # A bare checkout (a CI clone): the service's interpreter and packages.
            (files.path / ".venv").symlink_to(Path(sys.prefix))
        proc = subprocess.run(args, cwd=files.path, env=env, capture_output=True,  # noqa: S603
                              text=True, check=False)
    try:
        preview = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        preview = {}
    report = summarise(ref, ws["stack"], preview if isinstance(preview, dict) else {},
                       proc.stderr if proc.returncode else "")
    if proc.returncode and report.error is None and not report.storage_at_risk:
        report.error = f"pulumi preview exited {proc.returncode}"
    if plans is not None and report.error is None:
        save_review(plans, program, ws)
    if busy is not None:
        report.busy = (f"{busy['kind']} {busy['status']}: previewed against the state "
                       "the stack had then")
    return report


def preview_fleet(store: FleetStore, settings: PulumiSettings, program: Path, *,
                  owner: str | None = None, runtime: str | None = None,
                  concurrency: int | None = None, plans: Path | None = None,
                  progress: Callable[[WorkspaceReport], None] | None = None
                  ) -> list[WorkspaceReport]:
    """Preview `program` against every selected workspace, `concurrency` at
    once (default: the core count). Reports come back in the store's order."""
    workspaces = selected(store, owner, runtime)
    if plans is not None:
        plans.mkdir(parents=True, exist_ok=True)

    def one(ws: dict[str, Any]) -> WorkspaceReport:
        last = store.last_operation(ws["owner"], ws["name"])
        busy = last if last and last["status"] in BUSY else None
        try:
            report = preview_workspace(settings, program, ws, busy, plans)
        except Exception as e:  # noqa: BLE001 - one workspace's failure is reported
            report = WorkspaceReport(workspace=f"{ws['owner']}/{ws['name']}",
                                     stack=ws["stack"], error=f"{type(e).__name__}: {e}"[:300])
        if progress is not None:
            progress(report)
        return report

    with ThreadPoolExecutor(max_workers=max(1, concurrency or os.cpu_count() or 1)) as pool:
        return list(pool.map(one, workspaces))
