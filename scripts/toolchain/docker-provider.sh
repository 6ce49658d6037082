#!/usr/bin/env bash
# Build the Pulumi docker resource plugin (pulumi-resource-docker) offline from
# Go modules and install it where the Pulumi engine looks for it.
#
# What gets built (see scripts/toolchain/docker-provider/README.md):
#   the Terraform docker provider (kreuzwerker, module path
#   github.com/terraform-providers/terraform-provider-docker, pinned below)
#   bridged with pulumi-terraform-bridge, with stackspace's own token mapping
#   (docker-provider/provider/resources.go) matching the PyPI pulumi-docker SDK.
#   The provider module github.com/pulumi/pulumi-docker/provider is NOT served
#   by the module proxy, so Pulumi's native `docker:index/image:Image` resource
#   (docker build + push) is absent; everything Terraform-backed is there.
#
# Usage: scripts/toolchain/docker-provider.sh
#   STACKSPACE_CACHE   cache root (default $HOME/.cache/stackspace)
#   PULUMI_HOME        plugin home (default $STACKSPACE_CACHE/pulumi-home)
# Idempotent: a stamp keyed by version, upstream pin, go.sum and our sources
# skips the build when nothing changed. The last line printed is the path of
# the installed plugin binary.
set -euo pipefail

PLUGIN_VERSION="5.2.0" # == PyPI pulumi-docker SDK version the project pins
UPSTREAM_MOD="github.com/kreuzwerker/terraform-provider-docker"
# Upstream v4.6.0 + fixes (2026-09-16): the first pseudo-version the module
# proxy serves that has every field of SDK 5.2.0 (device_cgroup_rules,
# upload owner/group, ...).
UPSTREAM_VER="v0.0.0-20260916201441-96d331c98ff4"
VERSION_PKG="stackspace.dev/toolchain/docker-provider/version"
BUILD_TAGS="no_compose" # upstream tag; pulumi-docker ships no docker_compose

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MOD="$HERE/docker-provider"
CACHE="${STACKSPACE_CACHE:-$HOME/.cache/stackspace}"
export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOFLAGS=-mod=mod
export GOTOOLCHAIN=local CGO_ENABLED=0
BUILD="$CACHE/plugins-build/docker-v$PLUGIN_VERSION"
SRC="$BUILD/src"
LOG="$BUILD/build.log"
BIN="$BUILD/pulumi-resource-docker"
PHOME="${PULUMI_HOME:-$CACHE/pulumi-home}"
DEST_DIR="$PHOME/plugins/resource-docker-v$PLUGIN_VERSION"
DEST="$DEST_DIR/pulumi-resource-docker"

die() {
  echo "docker-provider: $*" >&2
  exit 1
}

# run DESCRIPTION CMD...: output goes to the log; on failure one line says why.
run() {
  local what="$1"
  shift
  echo "== $what" >>"$LOG"
  if ! "$@" >>"$LOG" 2>&1; then
    local last
    last="$(grep -v '^\s*$' "$LOG" | tail -n 1 | cut -c1-300)"
    die "$what failed: $last (full log: $LOG)"
  fi
}

install_plugin() {
  mkdir -p "$DEST_DIR"
  cp "$BIN" "$DEST.tmp.$$"
  chmod 0755 "$DEST.tmp.$$"
  mv -f "$DEST.tmp.$$" "$DEST"
  # A leftover marker from an interrupted `pulumi plugin install` would make
  # the engine treat the plugin as broken.
  rm -f "$PHOME/plugins/resource-docker-v$PLUGIN_VERSION.partial"
}

command -v go >/dev/null 2>&1 || die "go is not on PATH (Go >= 1.25.8 needed)"
[ -f "$MOD/go.mod" ] && [ -f "$MOD/go.sum" ] || die "missing $MOD/go.mod or go.sum"
GO_MINOR="$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
[ -n "$GO_MINOR" ] && [ "$GO_MINOR" -ge 25 ] || die "Go >= 1.25.8 needed, found $(go env GOVERSION)"

KEY="$(
  {
    echo "$PLUGIN_VERSION $UPSTREAM_VER $BUILD_TAGS $(go env GOVERSION)"
    cd "$MOD" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) | LC_ALL=C sort | xargs sha256sum
  } | sha256sum | cut -d' ' -f1
)"
STAMP="$BUILD/.stamp"

if [ -x "$BIN" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ]; then
  if ! cmp -s "$BIN" "$DEST" 2>/dev/null; then
    install_plugin
  fi
  echo "$DEST"
  exit 0
fi

mkdir -p "$BUILD"
: >"$LOG"
rm -f "$STAMP"
echo "docker-provider: building pulumi-resource-docker v$PLUGIN_VERSION (cold: about 10-20 min on 2 cores plus ~1 GB of modules; log: $LOG)" >&2
start=$(date +%s)

# 1. Scratch copy of our tools module.
rm -rf "$SRC"
mkdir -p "$SRC"
cp -r "$MOD/." "$SRC/"

# 2. The upstream module from the module proxy, plus our shim package inside
#    it (a package under the module may import its internal/provider).
UP_JSON="$(cd "$BUILD" && GOFLAGS= go mod download -json "$UPSTREAM_MOD@$UPSTREAM_VER" 2>>"$LOG")" ||
  die "module proxy did not serve $UPSTREAM_MOD@$UPSTREAM_VER (log: $LOG)"
UP_DIR="$(printf '%s\n' "$UP_JSON" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
[ -n "$UP_DIR" ] && [ -f "$UP_DIR/go.mod" ] || die "no source dir for $UPSTREAM_MOD@$UPSTREAM_VER (log: $LOG)"
grep -q '^module github.com/terraform-providers/terraform-provider-docker$' "$UP_DIR/go.mod" ||
  die "$UPSTREAM_MOD@$UPSTREAM_VER declares an unexpected module path"
cp -r "$UP_DIR" "$SRC/upstream"
chmod -R u+w "$SRC/upstream"
mkdir -p "$SRC/upstream/shim"
cp "$MOD/_overlay/shim/shim.go" "$SRC/upstream/shim/shim.go"

LDVER="-X $VERSION_PKG.Version=$PLUGIN_VERSION"

# 3. tfgen: generate schema.json + bridge-metadata.json next to the plugin main.
cd "$SRC"
run "go build pulumi-tfgen-docker" go build -tags "$BUILD_TAGS" -ldflags "$LDVER" \
  -o "$BUILD/pulumi-tfgen-docker" ./cmd/pulumi-tfgen-docker
# --skip-examples: converting HCL examples needs the pulumi CLI and its
# terraform converter plugin; schema descriptions still come from upstream docs/.
run "pulumi-tfgen-docker schema" "$BUILD/pulumi-tfgen-docker" schema --skip-examples \
  --out "$SRC/cmd/pulumi-resource-docker"
for f in schema.json bridge-metadata.json; do
  [ -s "$SRC/cmd/pulumi-resource-docker/$f" ] || die "tfgen did not write $f (log: $LOG)"
done

# 4. Every token of the pulumi-docker 5.2.0 SDK that is Terraform-backed must
#    be in the schema (docker:index/image:Image is the native one we lack).
for tok in buildxBuilder:BuildxBuilder container:Container network:Network plugin:Plugin \
  registryImage:RegistryImage remoteImage:RemoteImage secret:Secret service:Service \
  serviceConfig:ServiceConfig tag:Tag volume:Volume getLogs:getLogs getNetwork:getNetwork \
  getPlugin:getPlugin getRegistryImage:getRegistryImage \
  getRegistryImageManifests:getRegistryImageManifests getRemoteImage:getRemoteImage; do
  grep -q "\"docker:index/$tok\"" "$SRC/cmd/pulumi-resource-docker/schema.json" ||
    die "generated schema lacks docker:index/$tok"
done

# 5. The plugin, version stamped at link time as pulumi-docker's Makefile does.
run "go build pulumi-resource-docker" go build -tags "$BUILD_TAGS" -ldflags "-s -w $LDVER" \
  -o "$BIN.tmp" ./cmd/pulumi-resource-docker
got="$("$BIN.tmp" -version 2>/dev/null | tail -n 1 || true)"
[ "$got" = "$PLUGIN_VERSION" ] || die "built plugin reports version '$got', want $PLUGIN_VERSION"
mv -f "$BIN.tmp" "$BIN"

install_plugin
echo "$KEY" >"$STAMP"
echo "docker-provider: built in $(($(date +%s) - start)) s" >&2
echo "$DEST"
