"""A workspace image with a git repository baked in at /srv/app.git.

Tests clone from `file:///srv/app.git` inside the init container, so the
repository test needs no network at all.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

BASE_IMAGE = "stackspace/workspace:bookworm"
REPO_URL = "file:///srv/app.git"


def make_repo(tmp: Path, files: dict[str, str], branch: str = "main") -> Path:
    """A bare repository holding `files` in one commit on `branch` (its HEAD)."""
    work = tmp / "src"
    work.mkdir()
    for name, text in files.items():
        (work / name).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(work)]
    subprocess.run([*git, "init", "-q", "-b", branch], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    bare = tmp / "app.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare


def _tar_owned_by_workspace_user(bare: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 1000  # git refuses repos owned by another user
            info.uname = info.gname = "dev"
            return info
        tar.add(bare, arcname="app.git", filter=owner)
    return buf.getvalue()


def docker_repo_image(client, bare: Path, tag: str) -> str:
    """Commit BASE_IMAGE + /srv/app.git as `tag` on the engine `client` talks to."""
    container = client.containers.create(BASE_IMAGE, command=["true"])
    try:
        container.put_archive("/srv", _tar_owned_by_workspace_user(bare))
        container.commit(repository=tag.split(":")[0], tag=tag.split(":")[1])
    finally:
        container.remove(force=True)
    return tag
