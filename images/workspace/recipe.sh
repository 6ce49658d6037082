#!/usr/bin/env bash
# Recipe for the default workspace image: a Debian bookworm minbase root
# filesystem with git, bash and CA certificates, plus the unprivileged user
# that workspaces run as. Any change to this file changes the image tag's
# recipe hash and makes scripts/toolchain/workspace-image.sh rebuild it.
# Usage: recipe.sh ROOTFS_DIR
set -euo pipefail
rootfs=$1
debootstrap --variant=minbase --include=git,ca-certificates,bash,procps bookworm "$rootfs" >&2
# Same uid/gid the components run as (components/spec.py: WORKSPACE_UID).
chroot "$rootfs" groupadd --gid 1000 dev
chroot "$rootfs" useradd --uid 1000 --gid 1000 --home-dir /workspace --no-create-home --shell /bin/bash dev
mkdir -p "$rootfs/workspace"
chown 1000:1000 "$rootfs/workspace"
# Keep the image small: apt caches and docs are not needed at run time.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
