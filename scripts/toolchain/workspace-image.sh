#!/usr/bin/env bash
# Builds the default workspace image root filesystem offline (debootstrap) and
# caches it as a tarball keyed by the recipe's hash. Prints the tarball path.
# Importing it into an engine is done by the caller (docker-engine.sh,
# scripts/test-cluster).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
recipe="$here/../../images/workspace/recipe.sh"
cache=${STACKSPACE_CACHE:-$HOME/.cache/stackspace}
hash=$(sha256sum "$recipe" | cut -c1-12)
out="$cache/images/workspace-$hash.rootfs.tar"
if [[ -s $out ]]; then
  echo "$out"
  exit 0
fi
command -v debootstrap >/dev/null || {
  echo "workspace-image: installing debootstrap" >&2
  apt-get install -y -qq debootstrap >&2
}
mkdir -p "$cache/images"
work=$(mktemp -d "$cache/images/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "workspace-image: building rootfs (recipe $hash)" >&2
bash "$recipe" "$work/rootfs"
tar -C "$work/rootfs" --numeric-owner -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "$out"
