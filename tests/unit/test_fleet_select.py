"""service.fleet: which workspaces a fleet preview covers, and --program."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.fleet import ProgramError, check_program, selected
from stacks.settings import PROJECT_DIR


class Rows:
    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def workspaces(self, owner: str | None = None) -> list[dict]:
        return [w for w in self.rows if owner is None or w["owner"] == owner]

    def last_operation(self, owner: str, workspace: str) -> dict | None:
        return None


ROWS = Rows([
    {"owner": "alice", "name": "a", "runtime": "local", "desired": "running"},
    {"owner": "alice", "name": "gone", "runtime": "local", "desired": "deleted"},
    {"owner": "bob", "name": "b", "runtime": "kube", "desired": "stopped"},
])


def test_selected_leaves_out_deleted_and_filters() -> None:
    assert [w["name"] for w in selected(ROWS, None, None)] == ["a", "b"]
    assert [w["name"] for w in selected(ROWS, "bob", None)] == ["b"]
    assert [w["name"] for w in selected(ROWS, None, "local")] == ["a"]
    assert selected(ROWS, "alice", "kube") == []


def test_program_must_be_a_checkout(tmp_path: Path) -> None:
    assert check_program(PROJECT_DIR) == PROJECT_DIR
    assert check_program(PROJECT_DIR / "components") == PROJECT_DIR  # run inside it
    with pytest.raises(ProgramError, match="--program: .*missing Pulumi.yaml"):
        check_program(tmp_path)
