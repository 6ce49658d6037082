#!/usr/bin/env bash
# Recipe for the base layer of the stackspace image: a Debian bookworm minbase
# root filesystem with Python 3, git and the ssh client, the unprivileged user
# the service runs as, and a virtualenv holding stackspace's dependencies
# (from pyproject.toml, installed by the image's own Python so every wheel
# matches it). The Pulumi toolchain and the project source are separate,
# thinner layers (scripts/toolchain/stackspace-image.sh).
# Any change to this file or to pyproject.toml rebuilds this layer.
# Usage: recipe.sh ROOTFS_DIR PYPROJECT_TOML
set -euo pipefail
rootfs=$1
pyproject=$2
app=/opt/stackspace/app
debootstrap --variant=minbase \
  --include=python3,python3-venv,git,openssh-client,ca-certificates,procps bookworm "$rootfs" >&2
# The service's user (not the workspaces' uid 1000: a different identity).
chroot "$rootfs" groupadd --gid 10001 stackspace
chroot "$rootfs" useradd --uid 10001 --gid 10001 --home-dir /home/stackspace --create-home \
  --shell /bin/bash stackspace
# The virtualenv sits where Pulumi.yaml expects it (virtualenv: .venv).
chroot "$rootfs" python3 -m venv "$app/.venv"
# The project source (a later layer) is importable from anywhere.
site=$(cd "$rootfs" && echo "${app#/}"/.venv/lib/python3*/site-packages)
echo "$app" >"$rootfs/$site/stackspace-app.pth"
# pip runs inside the image with the build host's resolver and CA bundle
# (the host may reach PyPI through an intercepting proxy); both go afterwards.
mapfile -t deps < <(python3 -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' "$pyproject")
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$rootfs/tmp/build-ca.pem"
# The host's way to PyPI (proxy, index) carries over; nothing else of its environment.
pass=()
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL \
         PIP_EXTRA_INDEX_URL; do
  if [[ -n ${!v:-} ]]; then pass+=("$v=${!v}"); fi
done
env -i PATH=/usr/bin:/bin HOME=/root PIP_CERT=/tmp/build-ca.pem PIP_DISABLE_PIP_VERSION_CHECK=1 \
  PIP_DEFAULT_TIMEOUT=180 "${pass[@]}" "$(command -v chroot)" "$rootfs" \
  "$app/.venv/bin/pip" install -q --no-cache-dir "${deps[@]}" >&2
rm -f "$rootfs/tmp/build-ca.pem"
: >"$rootfs/etc/resolv.conf"
# The project source (root's, read-only to the service) comes with a later layer.
# Keep the image small: apt caches and docs are not needed.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
