"""StackFiles: a run's private copy of the project, holding one stack's settings
materialised from text (no engine needed)."""

from __future__ import annotations

import hashlib
import tempfile

import stacks.settings as settings
from stacks.settings import StackFiles

SETTINGS = "encryptionsalt: v1:abc\nconfig:\n  stackspace:owner: alice\n"


def test_settings_are_materialised_in_a_private_copy_and_taken_back(tmp_path):
    home = tmp_path / "home"
    files = StackFiles(home, "ws-a", SETTINGS)
    path = files.path
    assert files.read() == SETTINGS == files.initial
    project = path / "Pulumi.yaml"
    assert project.is_file() and not project.is_symlink()
    assert project.read_text() == (settings.PROJECT_DIR / "Pulumi.yaml").read_text()
    assert (path / "__main__.py").resolve() == settings.PROJECT_DIR / "__main__.py"
    assert (path / "stacks").resolve() == settings.PROJECT_DIR / "stacks"
    # What the CLI changed comes back; the directory and its selection go.
    files.settings_path("ws-a").write_text(SETTINGS + "  stackspace:running: 'true'\n")
    digest = hashlib.sha1(str(project).encode()).hexdigest()  # noqa: S324
    selection = home / "workspaces" / f"stackspace-{digest}-workspace.json"
    selection.parent.mkdir(parents=True)
    selection.write_text("{}")
    other = home / "workspaces" / "stackspace-0000-workspace.json"
    other.write_text("{}")
    assert files.close() == SETTINGS + "  stackspace:running: 'true'\n"
    assert not path.exists() and not selection.exists() and other.exists()
    assert files.close() == files.text  # idempotent


def test_a_removed_stack_gives_back_no_settings(tmp_path):
    with StackFiles(tmp_path, "ws-b", SETTINGS) as files:
        files.settings_path("ws-b").unlink()  # what `pulumi stack rm` does
    assert files.text is None


def test_stack_files_of_the_checkout_are_not_carried_and_legacy_ones_are_imported(
        tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "Pulumi.yaml").write_text("name: stackspace\nruntime: python\n")
    (checkout / "__main__.py").write_text("")
    (checkout / "Pulumi.ws-old.yaml").write_text(SETTINGS)
    (checkout / "Pulumi.ws-other.yaml").write_text("config: {}\n")
    monkeypatch.setattr(settings, "PROJECT_DIR", checkout)
    with StackFiles(tmp_path / "home", "ws-old", None) as files:
        names = sorted(p.name for p in files.path.iterdir())
        assert names == ["Pulumi.ws-old.yaml", "Pulumi.yaml", "__main__.py"]
        assert files.initial == SETTINGS  # a stack from before settings moved to the store
    with StackFiles(tmp_path / "home", "ws-new", None) as files:
        assert files.initial is None and files.read() is None
        assert not (files.path / "Pulumi.ws-old.yaml").exists()
    assert (checkout / "Pulumi.ws-old.yaml").read_text() == SETTINGS  # never written


def test_a_claimed_stack_without_settings_materialises_nothing(tmp_path):
    """"" in the store: this installation claimed the stack, but the run that
    made it was cut off before any settings came back."""
    with StackFiles(tmp_path, "ws-c", "") as files:
        assert files.initial == "" and files.read() is None
    assert files.text is None


def test_work_dirs_of_dead_processes_are_swept(tmp_path, monkeypatch):
    import os
    import subprocess

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    home = tmp_path / "home"
    mine = StackFiles(home, "ws-d", SETTINGS)
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = tmp_path / "tmp" / f"{settings.WORK_DIR_PREFIX}{dead.pid}-x1"
    left.mkdir()
    digest = hashlib.sha1(str(left / "Pulumi.yaml").encode()).hexdigest()  # noqa: S324
    selection = home / "workspaces" / f"stackspace-{digest}-workspace.json"
    selection.parent.mkdir(parents=True)
    selection.write_text("{}")
    assert settings.sweep_work_dirs(home) == 1
    assert not left.exists() and not selection.exists()
    assert mine.path.exists() and mine.path.name.startswith(
        f"{settings.WORK_DIR_PREFIX}{os.getpid()}-")
    mine.close()
