"""stacks.code_version: what the digest covers, and outdated."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.fleet_api import code_state
from stacks import code_version as cv

SOURCES = {
    "components": "",
    "components.docker": "import pulumi_docker as docker\nfrom components.base import X\n",
    "components.base": "import pulumi\n",
    "stacks": "",
    "stacks.program": "from stacks.config import C\nfrom stacks import naming\n",
    "stacks.config": "import json\n",
    "stacks.naming": "",
    "stacks.automation": "from pulumi import automation\nimport pulumi_command\n",
}
VERSIONS = {"pulumi": "3.0", "pulumi_docker": "5.2.0"}


def test_program_modules_follow_imports_from_the_roots_and_components() -> None:
    modules = cv.program_modules(SOURCES)
    assert set(modules) == {"components", "components.docker", "components.base",
                            "stacks", "stacks.program", "stacks.config", "stacks.naming"}
    # What the service alone runs is not program code.
    assert "stacks.automation" not in modules


def test_imported_names_include_from_imports_of_modules() -> None:
    assert cv.imported_names("from stacks import naming, config as c\nimport a.b\n") == {
        "stacks", "stacks.naming", "stacks.config", "a.b"}
    assert cv.imported_names("from . import x\n") == set()


def test_providers_are_the_pulumi_packages_the_program_imports() -> None:
    assert cv.providers(cv.program_modules(SOURCES)) == ["pulumi", "pulumi_docker"]


@pytest.mark.parametrize("change", [
    {"components.base": "import pulumi\nX = 1\n"},
    {"stacks.config": "import json\nY = 2\n"},
    {"stacks.naming": "Z = 3\n"},
])
def test_digest_changes_with_program_code(change: dict[str, str]) -> None:
    assert cv.digest({**SOURCES, **change}, VERSIONS) != cv.digest(SOURCES, VERSIONS)


def test_digest_changes_with_provider_version_only_for_imported_providers() -> None:
    base = cv.digest(SOURCES, VERSIONS)
    assert cv.digest(SOURCES, {**VERSIONS, "pulumi_docker": "5.3.0"}) != base
    assert cv.digest(SOURCES, {**VERSIONS, "pulumi_command": "1.0"}) == base


def test_digest_ignores_modules_outside_the_program() -> None:
    changed = {**SOURCES, "stacks.automation": "changed = True\n"}
    assert cv.digest(changed, VERSIONS) == cv.digest(SOURCES, VERSIONS)
    assert len(cv.digest(SOURCES, VERSIONS)) == cv.DIGEST_CHARS


def test_format_and_outdated() -> None:
    assert cv.format_version("abc", None) == "abc"
    assert cv.format_version("abc", "0123456789abcdef") == "abc@0123456789ab"
    assert cv.digest_of("abc@0123") == "abc"
    assert cv.digest_of(None) is None and cv.digest_of("") is None
    # Another commit, same code: current. Other code: outdated. Unknown: outdated.
    assert not cv.outdated("abc@1111", "abc@2222")
    assert not cv.outdated("abc", "abc@2222")
    assert cv.outdated("abd@1111", "abc@1111")
    assert cv.outdated(None, "abc")


def test_module_sources_and_version_of_a_copy(tmp_path: Path) -> None:
    for package in cv.PACKAGES:
        (tmp_path / package).mkdir()
        for path in (cv.PROJECT_DIR / package).glob("*.py"):
            (tmp_path / package / path.name).write_text(path.read_text())
    # Not a git checkout: the digest alone, equal to the service's own.
    assert cv.version_at(tmp_path) == cv.current_digest()
    (tmp_path / "components" / "docker.py").write_text("# changed\n")
    assert cv.code_digest_at(tmp_path) != cv.current_digest()


def test_code_state_of_a_workspace() -> None:
    assert code_state({}) == {"code_version": None, "outdated": True}
    assert code_state({cv.OUTPUT: cv.current()}) == {"code_version": cv.current(),
                                                      "outdated": False}
    assert code_state({cv.OUTPUT: "0" * 16})["outdated"] is True
