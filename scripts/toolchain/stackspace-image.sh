#!/usr/bin/env bash
# Builds the stackspace image offline (no registry, no docker build) as a
# docker-archive that `ctr images import` and `docker load` accept, with three
# layers, heaviest and least often changed first:
#   1. base: Debian bookworm + Python + stackspace's dependencies
#      (images/stackspace/recipe.sh), cached by the recipe's and pyproject's hash;
#   2. toolchain: the Pulumi CLI, the Python language host and the resource
#      plugins built by scripts/setup, cached by their versions;
#   3. source: the project's Python packages (seconds to rebuild).
# The tag is a hash of the three layers, so a code change gives a new tag.
# Prints two lines last: the image reference, then the archive's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
source "$here/lib.sh"
images=$STACKSPACE_CACHE/images
mkdir -p "$images"
NAME=localhost/stackspace/stackspace
APP=/opt/stackspace/app
UID_=10001

work=$(mktemp -d "$images/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- 1. base --------------------------------------------------------------------
recipe=$repo/images/stackspace/recipe.sh
base_key=$(cat "$recipe" "$repo/pyproject.toml" | sha256sum | cut -c1-12)
base=$images/stackspace-base-$base_key.rootfs.tar
if [[ ! -s $base ]]; then
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >&2
  log "stackspace image: building the base layer (recipe $base_key)"
  bash "$recipe" "$work/rootfs" "$repo/pyproject.toml"
  tar -C "$work/rootfs" --numeric-owner -cf "$base.tmp" .
  mv "$base.tmp" "$base"
  rm -rf "$work/rootfs"
fi

# --- 2. toolchain ----------------------------------------------------------------
bin=$PULUMI_BIN
[[ -x $bin/pulumi && -x $bin/pulumi-language-python ]] ||
  { log "no Pulumi CLI in $bin: run scripts/setup first"; exit 1; }
plugins=()
for p in "$PULUMI_HOME"/plugins/resource-kubernetes-v* "$PULUMI_HOME"/plugins/resource-docker-v*; do
  [[ -d $p ]] || continue
  plugins+=("$(basename "$p")")
done
((${#plugins[@]})) || { log "no resource plugins in $PULUMI_HOME/plugins: run scripts/setup"; exit 1; }
tool_key=$( (echo "$PULUMI_VERSION"; cat "$bin"/.*.stamp; printf '%s\n' "${plugins[@]}") |
  sha256sum | cut -c1-12)
toolchain=$images/stackspace-toolchain-$tool_key.tar
if [[ ! -s $toolchain ]]; then
  log "stackspace image: packing the toolchain layer (${plugins[*]})"
  t=$work/toolchain
  mkdir -p "$t/opt/stackspace/pulumi/bin" "$t/home/stackspace/.pulumi/plugins"
  cp "$bin"/pulumi "$bin"/pulumi-language-python "$bin"/pulumi-language-python-exec \
    "$t/opt/stackspace/pulumi/bin/"
  for p in "${plugins[@]}"; do
    cp -a "$PULUMI_HOME/plugins/$p" "$t/home/stackspace/.pulumi/plugins/"
  done
  # Pulumi writes under its home (locks, logs): the service user owns it.
  tar -C "$t" --numeric-owner --owner=0 --group=0 --mtime=@0 --sort=name \
    -cf "$toolchain.tmp" opt/stackspace/pulumi
  tar -C "$t" --numeric-owner --owner=$UID_ --group=$UID_ --mtime=@0 --sort=name \
    -rf "$toolchain.tmp" home/stackspace/.pulumi
  mv "$toolchain.tmp" "$toolchain"
  rm -rf "$t"
fi

# --- 3. source ----------------------------------------------------------------
s=$work/source
mkdir -p "$s$APP" "$s/usr/local/bin"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard -- \
   Pulumi.yaml __main__.py components stacks service proxy | grep -zv '^$' |
   xargs -0 -I{} cp --parents {} "$s$APP/")
cat >"$s/usr/local/bin/stackspace" <<'WRAP'
#!/bin/sh
exec /opt/stackspace/app/.venv/bin/python -m service.cli "$@"
WRAP
chmod 0755 "$s/usr/local/bin/stackspace"
# The session helper the proxy copies into workspaces (proxy/sessions.py).
helper=$(bash "$here/session-helper.sh" | tail -1)
mkdir -p "$s/opt/stackspace/session-helper"
cp "${helper%-amd64}"-amd64 "${helper%-amd64}"-arm64 "$s/opt/stackspace/session-helper/"
source_tar=$work/source.tar
# Code is root's and read-only to the service: each run works in a private
# directory of its own (stacks' settings live in the store, not the checkout).
tarx() { tar -C "$s" --numeric-owner --mtime=@0 --sort=name --mode=go-w "$@"; }
tarx --owner=0 --group=0 --no-recursion -cf "$source_tar" usr usr/local usr/local/bin opt \
  opt/stackspace "${APP#/}"
tarx --owner=0 --group=0 -rf "$source_tar" usr/local/bin/stackspace \
  opt/stackspace/session-helper $(cd "$s" && ls -d "${APP#/}"/*)

# --- image ----------------------------------------------------------------------
src_sum=$(sha256sum "$source_tar" | cut -c1-16)
tag=$(echo "$base_key $tool_key $src_sum" | sha256sum | cut -c1-12)
out=$images/stackspace-$tag.image.tar
if [[ ! -s $out ]]; then
  log "stackspace image: writing $NAME:$tag"
  python3 "$here/kubernetes/mkimage.py" --name "$NAME:$tag" \
    --rootfs-tar "$base" --rootfs-tar "$toolchain" --rootfs-tar "$source_tar" \
    --env "PATH=/usr/local/bin:$APP/.venv/bin:/opt/stackspace/pulumi/bin:/usr/bin:/bin" \
    --env HOME=/home/stackspace --env PULUMI_HOME=/home/stackspace/.pulumi \
    --env STACKSPACE_PULUMI_BIN=/opt/stackspace/pulumi/bin \
    --env STACKSPACE_SESSION_HELPER=/opt/stackspace/session-helper/stackspace-session-linux-amd64 \
    --env PULUMI_SKIP_UPDATE_CHECK=true --env PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true \
    --env PYTHONUNBUFFERED=1 \
    --user "$UID_:$UID_" --workdir "$APP" --entrypoint /usr/local/bin/stackspace --cmd serve \
    --out "$out.tmp" >/dev/null
  mv "$out.tmp" "$out"
fi
touch "$base" "$toolchain"  # in use: kept by the pruning below
# Older builds are superseded; the two newest of each kind stay (two checkouts,
# e.g. a branch and main, may alternate without rebuilding).
for kind in 'stackspace-base-*.rootfs.tar' 'stackspace-toolchain-*.tar' 'stackspace-*.image.tar'; do
  find "$images" -maxdepth 1 -name "$kind" -printf '%T@ %p\n' | sort -rn | tail -n +3 |
    cut -d' ' -f2- | xargs -r rm -f
done
echo "$NAME:$tag"
echo "$out"
