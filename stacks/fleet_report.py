"""What a previewed plan does to one workspace, and to the fleet (SPEC §10):
pure functions from `pulumi preview --json` output to the report that
`stackspace fleet preview` prints. No I/O here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from stacks.guard import DESTRUCTIVE_OPS, STORAGE_TYPES, protected_storage

STEP_KINDS = ("create", "update", "replace", "delete")
# Engine step ops -> the kind a reviewer counts (a replace shows up to three
# ways in one plan: one resource, one replace).
OP_KIND = {"create": "create", "update": "update", "delete": "delete",
           "replace": "replace", "create-replacement": "replace",
           "delete-replaced": "replace", "discard": "delete", "discard-replaced": "replace"}
# What runs the user's processes: replacing or deleting it restarts them.
WORKLOAD = {("docker:index/container:Container", "workspace"),
            ("kubernetes:apps/v1:Deployment", "workspace"),
            ("kubernetes:core/v1:Pod", "workspace")}
# A Deployment update under these properties rolls its pod.
POD_TEMPLATE = "spec.template"
ROOT_TYPE = "pulumi:pulumi:Stack"
OUTCOMES = ("unchanged", "changed", "restarted", "refused", "skipped", "failed")


@dataclass
class ResourceChange:
    urn: str
    type: str
    name: str
    kind: str  # create | update | replace | delete
    properties: list[str] = field(default_factory=list)


@dataclass
class WorkspaceReport:
    workspace: str  # owner/name
    stack: str
    steps: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STEP_KINDS, 0))
    restart: bool = False
    storage_at_risk: bool = False
    resources: list[ResourceChange] = field(default_factory=list)
    # An operation was running: the preview saw the state it had then.
    busy: str | None = None
    note: str | None = None  # e.g. why it was skipped
    error: str | None = None
    skipped: bool = False

    @property
    def outcome(self) -> str:
        if self.error is not None:
            return "failed"
        if self.skipped:
            return "skipped"
        if self.storage_at_risk:
            return "refused"
        if self.restart:
            return "restarted"
        return "changed" if any(self.steps.values()) else "unchanged"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["outcome"] = self.outcome
        return out


def urn_type_name(urn: str) -> tuple[str, str]:
    """A URN's resource type (the last of a parent$type chain) and name."""
    parts = urn.split("::")
    if len(parts) < 4:
        return "", urn
    return parts[2].rsplit("$", 1)[-1], "::".join(parts[3:])


def changed_properties(step: Mapping[str, Any]) -> list[str]:
    """The properties a step changes, as the engine names them."""
    detailed = step.get("detailedDiff")
    if isinstance(detailed, dict) and detailed:
        return sorted(detailed)
    names = set(step.get("diffReasons") or []) | set(step.get("replaceReasons") or [])
    return sorted(names)


def restarts(kind: str, rtype: str, name: str, properties: Iterable[str]) -> bool:
    """Whether this change restarts the workload's processes."""
    if (rtype, name) not in WORKLOAD:
        return False
    if kind in ("replace", "delete"):
        return True
    return kind == "update" and rtype == "kubernetes:apps/v1:Deployment" and any(
        p == POD_TEMPLATE or p.startswith((f"{POD_TEMPLATE}.", f"{POD_TEMPLATE}[")
                                          ) for p in properties)


def summarise(workspace: str, stack: str, preview: Mapping[str, Any],
              error_text: str = "") -> WorkspaceReport:
    """The report of one workspace from its preview's JSON (`steps`,
    `diagnostics`). `error_text`: what the engine printed if the preview
    failed; a failure that is the engine's refusal to replace or delete
    protected storage is that verdict, not an error."""
    report = WorkspaceReport(workspace=workspace, stack=stack)
    changes: dict[str, ResourceChange] = {}
    for step in preview.get("steps") or []:
        op, urn = str(step.get("op", "")), str(step.get("urn", ""))
        kind = OP_KIND.get(op)
        rtype, name = urn_type_name(urn)
        if rtype in STORAGE_TYPES and op in DESTRUCTIVE_OPS:
            report.storage_at_risk = True
        if kind is None or rtype == ROOT_TYPE:
            continue
        props = changed_properties(step)
        if urn in changes:  # the other half of a replace
            changes[urn].kind = "replace"
            changes[urn].properties = sorted(set(changes[urn].properties) | set(props))
            continue
        changes[urn] = ResourceChange(urn=urn, type=rtype, name=name, kind=kind,
                                      properties=props)
    errors = [str(d.get("message", "")) for d in preview.get("diagnostics") or []
              if d.get("severity") == "error"]
    text = "\n".join([*errors, error_text])
    for urn in protected_storage(text):
        report.storage_at_risk = True
        rtype, name = urn_type_name(urn)
        changes.setdefault(urn, ResourceChange(urn=urn, type=rtype, name=name,
                                               kind="replace", properties=["(protected)"]))
    for change in changes.values():
        report.steps[change.kind] += 1
        report.restart = report.restart or restarts(change.kind, change.type, change.name,
                                                    change.properties)
    report.resources = sorted(changes.values(), key=lambda c: c.urn)
    if (errors or error_text) and not report.storage_at_risk:
        report.error = first_error(errors, error_text)
    return report


def first_error(errors: list[str], error_text: str) -> str:
    """One bounded line saying what failed (never the whole CLI output)."""
    lines = [ln.strip() for ln in [*errors, *error_text.splitlines()] if ln.strip()]
    picked = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "")
    return (picked or "the preview failed")[:300]


def summary(reports: Iterable[WorkspaceReport]) -> dict[str, int]:
    counts = dict.fromkeys(OUTCOMES, 0)
    for r in reports:
        counts[r.outcome] += 1
    return counts


def exit_code(reports: list[WorkspaceReport]) -> int:
    """2: a preview failed (the review is incomplete); 1: storage at risk; 0."""
    if any(r.error is not None for r in reports):
        return 2
    return 1 if any(r.storage_at_risk for r in reports) else 0


def to_json(reports: list[WorkspaceReport]) -> dict[str, Any]:
    return {"workspaces": [r.to_dict() for r in reports], "summary": summary(reports)}


def _steps_cell(steps: Mapping[str, int]) -> str:
    signs = {"create": "+", "update": "~", "replace": "±", "delete": "-"}
    return " ".join(f"{signs[k]}{steps[k]}" for k in STEP_KINDS if steps.get(k)) or "none"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(reports: list[WorkspaceReport]) -> str:
    """A table for a pull-request comment: one row per workspace, the summary."""
    counts = summary(reports)
    head = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    lines = ["### stackspace fleet preview", "",
             f"**{len(reports)} workspaces**: {head or 'none'}", "",
             "| workspace | outcome | steps | restart | storage at risk | changes |",
             "|---|---|---|---|---|---|"]
    for r in reports:
        changes = "; ".join(f"{c.kind} {c.name}"
                            + (f" ({', '.join(c.properties)})" if c.properties else "")
                            for c in r.resources)
        notes = [n for n in (r.error, r.busy, r.note) if n]
        cell = "; ".join([changes, *notes] if changes else notes) or "-"
        lines.append(f"| `{r.workspace}` | {r.outcome} | {_steps_cell(r.steps)} | "
                     f"{'yes' if r.restart else 'no'} | "
                     f"{'**YES**' if r.storage_at_risk else 'no'} | {_md(cell)} |")
    return "\n".join(lines) + "\n"
