"""stacks.fleet_report: a preview's JSON -> what it does to a workspace."""

from __future__ import annotations

import pytest

from stacks.fleet_report import (
    WorkspaceReport,
    exit_code,
    restarts,
    summarise,
    summary,
    to_json,
    to_markdown,
    urn_type_name,
)

STACK = "ws-alice-a-1234"
PREFIX = f"urn:pulumi:{STACK}::stackspace::"
CONTAINER = f"{PREFIX}stackspace:docker:Workspace$docker:index/container:Container::workspace"
INIT = f"{PREFIX}stackspace:docker:Workspace$docker:index/container:Container::init"
VOLUME = f"{PREFIX}stackspace:docker:Workspace$docker:index/volume:Volume::storage"
PVC = f"{PREFIX}stackspace:kubernetes:Workspace$kubernetes:core/v1:PersistentVolumeClaim::storage"
DEPLOY = f"{PREFIX}stackspace:kubernetes:Workspace$kubernetes:apps/v1:Deployment::workspace"
ROOT = f"{PREFIX}pulumi:pulumi:Stack::stackspace-{STACK}"


def step(op: str, urn: str, **extra: object) -> dict:
    return {"op": op, "urn": urn, **extra}


def report(*steps: dict, diagnostics: list | None = None, error: str = "") -> WorkspaceReport:
    return summarise("alice/a", STACK, {"steps": list(steps),
                                        "diagnostics": diagnostics or []}, error)


def test_urn_type_and_name() -> None:
    assert urn_type_name(CONTAINER) == ("docker:index/container:Container", "workspace")
    assert urn_type_name(ROOT) == ("pulumi:pulumi:Stack", f"stackspace-{STACK}")
    assert urn_type_name("nonsense") == ("", "nonsense")


def test_an_unchanged_plan() -> None:
    r = report(step("same", ROOT), step("same", CONTAINER), step("same", VOLUME))
    assert r.outcome == "unchanged" and r.resources == [] and not any(r.steps.values())
    assert not r.restart and not r.storage_at_risk and r.error is None


def test_an_in_place_update_names_its_properties() -> None:
    r = report(step("update", INIT, detailedDiff={"labels[4]": {"kind": "add"}},
                    diffReasons=["labels"]))
    assert r.steps == {"create": 0, "update": 1, "replace": 0, "delete": 0}
    assert r.outcome == "changed" and not r.restart
    assert [(c.name, c.kind, c.properties) for c in r.resources] == [
        ("init", "update", ["labels[4]"])]


def test_a_replaced_workload_restarts_and_counts_once() -> None:
    r = report(step("create-replacement", CONTAINER, replaceReasons=["labels"]),
               step("replace", CONTAINER, diffReasons=["envs"]),
               step("delete-replaced", CONTAINER))
    assert r.steps["replace"] == 1 and sum(r.steps.values()) == 1
    assert r.restart and r.outcome == "restarted"
    assert r.resources[0].properties == ["envs", "labels"]


@pytest.mark.parametrize(("kind", "rtype", "name", "props", "expected"), [
    ("replace", "docker:index/container:Container", "workspace", [], True),
    ("delete", "docker:index/container:Container", "workspace", [], True),
    ("update", "docker:index/container:Container", "workspace", ["labels"], False),
    ("replace", "docker:index/container:Container", "init", [], False),
    ("update", "kubernetes:apps/v1:Deployment", "workspace", ["spec.template.metadata"], True),
    ("update", "kubernetes:apps/v1:Deployment", "workspace", ["spec.replicas"], False),
    ("update", "kubernetes:apps/v1:Deployment", "workspace", ["spec.templateX"], False),
    ("create", "kubernetes:apps/v1:Deployment", "workspace", [], False),
])
def test_restarts(kind: str, rtype: str, name: str, props: list[str], expected: bool) -> None:
    assert restarts(kind, rtype, name, props) is expected


@pytest.mark.parametrize("op", ["delete", "replace", "create-replacement", "delete-replaced"])
@pytest.mark.parametrize("urn", [VOLUME, PVC])
def test_storage_replaced_or_deleted_is_at_risk(op: str, urn: str) -> None:
    r = report(step(op, urn))
    assert r.storage_at_risk and r.outcome == "refused" and exit_code([r]) == 1


def test_storage_updated_in_place_is_not_at_risk() -> None:
    r = report(step("update", PVC, diffReasons=["metadata"]))
    assert not r.storage_at_risk and r.outcome == "changed"


def test_the_engines_protect_refusal_is_the_same_verdict_not_an_error() -> None:
    text = (f"error: unable to replace resource \"{VOLUME}\"\n"
            "as it is currently marked for protection.")
    r = report(diagnostics=[{"severity": "error", "message": text}], error="exit 255")
    assert r.storage_at_risk and r.error is None
    assert [(c.name, c.kind) for c in r.resources] == [("storage", "replace")]
    assert exit_code([r]) == 1


def test_a_failed_preview_is_an_error() -> None:
    r = report(diagnostics=[{"severity": "warning", "message": "meh"},
                            {"severity": "error", "message": "error: image not found"}])
    assert r.outcome == "failed" and r.error == "error: image not found"
    assert exit_code([r, report()]) == 2
    long = report(error="x" * 1000)
    assert long.error is not None and len(long.error) == 300


def test_summary_json_and_exit_codes() -> None:
    unchanged = report()
    restarted = report(step("replace", DEPLOY))
    refused = report(step("delete", VOLUME))
    skipped = WorkspaceReport("bob/b", "s", skipped=True, note="no stack yet")
    assert summary([unchanged, restarted, refused, skipped]) == {
        "unchanged": 1, "changed": 0, "restarted": 1, "refused": 1, "skipped": 1, "failed": 0}
    assert exit_code([unchanged, restarted, skipped]) == 0
    assert exit_code([unchanged, refused]) == 1
    assert exit_code([]) == 0
    data = to_json([restarted])
    (ws,) = data["workspaces"]
    assert ws["workspace"] == "alice/a" and ws["restart"] is True
    assert ws["steps"] == {"create": 0, "update": 0, "replace": 1, "delete": 0}
    assert ws["resources"][0]["type"] == "kubernetes:apps/v1:Deployment"
    assert data["summary"]["restarted"] == 1


def test_markdown_table() -> None:
    busy = report(step("update", INIT, diffReasons=["labels"]))
    busy.busy = "update running: previewed against the state the stack had then"
    text = to_markdown([busy, report(step("delete", VOLUME), step("create", VOLUME + "2"))])
    lines = text.splitlines()
    assert lines[0] == "### stackspace fleet preview"
    assert "**2 workspaces**: 1 changed, 1 refused" in text
    rows = [ln for ln in lines if ln.startswith("| `")]
    assert rows[0] == ("| `alice/a` | changed | ~1 | no | no | update init (labels); "
                       "update running: previewed against the state the stack had then |")
    assert "| refused | +1 -1 | no | **YES** |" in rows[1]
    pipe = report(diagnostics=[{"severity": "error", "message": "error: a|b"}])
    assert "a\\|b" in to_markdown([pipe])
