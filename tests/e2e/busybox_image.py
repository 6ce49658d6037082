"""A workspace image with nothing but BusyBox (Debian's busybox-static): /bin/sh
and BusyBox's applets, no GNU coreutils (its `env` has no --chdir), no bash,
no passwd entry for the workspace user. Built offline from the host's
/bin/busybox (scripts/setup installs it) and imported into a Docker Engine."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from tests.conftest import unavailable

BUSYBOX = Path("/bin/busybox")
BUSYBOX_IMAGE = "stackspace/busybox:test"


def _rootfs() -> bytes:
    applets = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True,
                             text=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for folder, mode in (("bin", 0o755), ("tmp", 0o1777), ("workspace", 0o777),
                             ("etc", 0o755)):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
    return buf.getvalue()


def _recipe() -> str:
    if not BUSYBOX.is_file():
        unavailable("/bin/busybox missing: run scripts/setup (busybox-static)")
    return hashlib.sha256(BUSYBOX.read_bytes()).hexdigest()[:12]


def busybox_image(docker_client: Any) -> str:
    """The image on the engine of `docker_client` (imported once per busybox build)."""
    recipe = _recipe()
    try:
        if docker_client.images.get(BUSYBOX_IMAGE).labels.get("dev.stackspace.recipe") == recipe:
            return BUSYBOX_IMAGE
    except Exception:  # noqa: BLE001, S110 - not there yet: import it
        pass
    repo, tag = BUSYBOX_IMAGE.split(":")
    docker_client.api.import_image_from_data(
        _rootfs(), repository=repo, tag=tag,
        changes=[f"LABEL dev.stackspace.recipe={recipe}", "ENV PATH=/bin",
                 "WORKDIR /workspace", 'CMD ["/bin/sh"]'])
    return BUSYBOX_IMAGE
