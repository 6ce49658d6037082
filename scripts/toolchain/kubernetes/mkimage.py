#!/usr/bin/env python3
"""Write a single-layer image archive (docker-archive format) without a registry.

The archive is what `ctr images import` and `docker load` accept:
``manifest.json``, an image config JSON and uncompressed layer tars. The
layers are existing root filesystem tarballs (``--rootfs-tar``, repeatable:
bottom layer first) or one layer of single files (``--file SRC:DEST[:MODE]``).
Standard library only.

Usage:
  mkimage.py --name docker.io/stackspace/workspace:bookworm \
      --rootfs-tar rootfs.tar --cmd /bin/bash --out image.tar
  mkimage.py --name localhost/stackspace/pause:1 \
      --file bin/pause:/pause:0755 --entrypoint /pause --out pause.tar
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

CHUNK = 1 << 20
# A fixed timestamp keeps the archive (and so the image ID) reproducible.
EPOCH = "1970-01-01T00:00:00Z"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def files_layer(specs: list[str], out: Path) -> None:
    """Write a layer tar holding each SRC at DEST (parents created as dirs)."""
    dirs: set[str] = set()
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for spec in specs:
            parts = spec.split(":")
            if len(parts) not in (2, 3):
                raise SystemExit(f"mkimage: bad --file {spec!r}: want SRC:DEST[:MODE]")
            src, dest = Path(parts[0]), parts[1].lstrip("/")
            mode = int(parts[2], 8) if len(parts) == 3 else 0o644
            parent = Path(dest).parent
            for d in reversed([p for p in (parent, *parent.parents) if str(p) != "."]):
                if str(d) not in dirs:
                    info = tarfile.TarInfo(str(d))
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
                    dirs.add(str(d))
            info = tarfile.TarInfo(dest)
            info.size = src.stat().st_size
            info.mode = mode
            with src.open("rb") as f:
                tar.addfile(info, f)


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def add_file(tar: tarfile.TarFile, name: str, path: Path) -> None:
    info = tarfile.TarInfo(name)
    info.size = path.stat().st_size
    info.mode = 0o644
    with path.open("rb") as f:
        tar.addfile(info, f)


def image_config(layer_digests: list[str], args: argparse.Namespace) -> dict[str, object]:
    config: dict[str, object] = {
        "Env": args.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    }
    if args.entrypoint:
        config["Entrypoint"] = args.entrypoint
    if args.cmd:
        config["Cmd"] = args.cmd
    if args.workdir:
        config["WorkingDir"] = args.workdir
    if args.user:
        config["User"] = args.user
    return {
        "architecture": args.arch,
        "os": "linux",
        "created": EPOCH,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in layer_digests]},
        "history": [{"created": EPOCH, "created_by": "stackspace mkimage.py"}
                    for _ in layer_digests],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="image reference, with tag")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--rootfs-tar", type=Path, action="append",
                     help="root filesystem tarball (a layer; repeat for more, bottom first)")
    src.add_argument("--file", action="append", default=[], help="SRC:DEST[:MODE]")
    parser.add_argument("--entrypoint", nargs="+", default=None)
    parser.add_argument("--cmd", nargs="+", default=None)
    parser.add_argument("--workdir", default="")
    parser.add_argument("--user", default="")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE (replaces PATH "
                        "default when given)")
    parser.add_argument("--arch", default="amd64")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:
        if args.rootfs_tar:
            layers = list(args.rootfs_tar)
        else:
            layers = [Path(tmp) / "layer.tar"]
            files_layer(args.file, layers[0])
        digests = [sha256_file(layer) for layer in layers]
        config = json.dumps(image_config(digests, args), sort_keys=True).encode()
        config_digest = hashlib.sha256(config).hexdigest()
        manifest = [
            {
                "Config": f"{config_digest}.json",
                "RepoTags": [args.name],
                "Layers": [f"{d}/layer.tar" for d in digests],
            }
        ]
        partial = Path(tmp) / "image.tar"
        with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as tar:
            add_bytes(tar, f"{config_digest}.json", config)
            for digest, layer in zip(digests, layers, strict=True):
                add_file(tar, f"{digest}/layer.tar", layer)
            add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
        shutil.move(partial, args.out)
    os.chmod(args.out, 0o644)
    print(f"sha256:{config_digest}")


if __name__ == "__main__":
    main()
