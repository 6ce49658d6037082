#!/usr/bin/env bash
# Builds the pulumi-kubernetes provider plugin (pulumi-resource-kubernetes)
# from the Go module proxy and installs it as a Pulumi plugin:
#   $PULUMI_HOME/plugins/resource-kubernetes-v<VERSION>/pulumi-resource-kubernetes
#
# Inputs (scripts/toolchain/kubernetes-provider/):
#   go.mod/go.sum/tools.go  a tools module that requires
#                           github.com/pulumi/pulumi-kubernetes/provider/v4 (served by
#                           the proxy only at pseudo-versions: upstream tags the repo
#                           root and sdk/, never provider/) with upstream's local
#                           `sdk/v4 => ../sdk` replace swapped for the published SDK.
#   plugin-version          the release that module version corresponds to; it is
#                           stamped into the binary (-X .../pkg/version.Version) and
#                           the schema, and must equal the pulumi-kubernetes SDK pin.
#
# The provider's main package embeds schema-embed.json and
# terraform-mapping-embed.json, which upstream generates (`go generate`) from the
# committed schema.json and terraform-mapping.json. Files in the module cache are
# read-only, so the package is copied into the build directory under the cache,
# generated there, and built against the tools module's go.mod/go.sum.
#
# Idempotent: nothing is rebuilt while the stamp (versions + hash of the tools
# module + this script) matches. Progress goes to stderr; the last line on stdout
# is the installed plugin binary's path.
# Usage: kubernetes-provider.sh [--print-version]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
mod="$here/kubernetes-provider"
provider_module=github.com/pulumi/pulumi-kubernetes/provider/v4
main_pkg=cmd/pulumi-resource-kubernetes
plugin_name=pulumi-resource-kubernetes

log() { echo "kubernetes-provider: $*" >&2; }
die() { log "error: $*"; exit 1; }

version=$(tr -d ' \t\r\n' < "$mod/plugin-version")
module_version=$(awk -v m="$provider_module" '$1 == "require" && $2 == m {print $3}' "$mod/go.mod")
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "bad version '$version' in $mod/plugin-version"
[[ -n $module_version ]] || die "cannot read the $provider_module requirement from $mod/go.mod"
if [[ ${1:-} == --print-version ]]; then
  echo "kubernetes $version ($provider_module $module_version)"
  exit 0
fi

export STACKSPACE_CACHE=${STACKSPACE_CACHE:-$HOME/.cache/stackspace}
export GOMODCACHE=$STACKSPACE_CACHE/go/mod
export GOCACHE=$STACKSPACE_CACHE/go/build
export GOFLAGS=-mod=mod
export GOTOOLCHAIN=local
# The checksum database mirror reachable here lacks these module versions (its
# lookups answer 404); go.sum in the tools module pins their hashes instead.
export GONOSUMDB=github.com/pulumi/pulumi-kubernetes,github.com/pulumi/cloud-ready-checks,github.com/pulumi/pulumi/pkg/v3
export PULUMI_HOME=${PULUMI_HOME:-$STACKSPACE_CACHE/pulumi-home}

out="$STACKSPACE_CACHE/plugins-build/kubernetes-v$version"
bin="$out/$plugin_name"
plugin_dir="$PULUMI_HOME/plugins/resource-kubernetes-v$version"
installed="$plugin_dir/$plugin_name"
key=$( {
  echo "version=$version module=$module_version"
  cat "$mod/go.mod" "$mod/go.sum" "$mod/tools.go" "$0"
} | sha256sum | cut -c1-16)

built() { [[ -x $bin && -f $out/stamp && $(cat "$out/stamp") == "$key" ]]; }
installed_ok() {
  [[ -x $installed && ! -e $PULUMI_HOME/plugins/resource-kubernetes-v$version.partial ]] &&
    cmp -s "$bin" "$installed"
}
install_plugin() {
  mkdir -p "$plugin_dir"
  cp "$bin" "$installed.tmp"
  chmod 755 "$installed.tmp"
  mv -f "$installed.tmp" "$installed"
  rm -f "$PULUMI_HOME/plugins/resource-kubernetes-v$version.partial"
  log "installed plugin resource kubernetes v$version"
}

if built && installed_ok; then
  echo "$installed"
  exit 0
fi

mkdir -p "$out"
exec 9>"$out/build.lock"
flock 9

if ! built; then
  command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"
  command -v go >/dev/null || die "the Go toolchain (go >= 1.24) is required"
  log "building $plugin_name v$version from $provider_module@$module_version (cold: 10+ minutes on 2 cores)"
  start=$SECONDS

  cd "$mod"
  # `go list -m` reports no Dir for a module that is not downloaded yet (cold cache).
  go mod download "$provider_module" || die "cannot download $provider_module@$module_version"
  src_pkg=$(go list -m -f '{{.Dir}}' "$provider_module") || die "cannot download $provider_module@$module_version"
  src_pkg="$src_pkg/$main_pkg"
  [[ -f $src_pkg/main.go && -f $src_pkg/schema.json ]] || die "unexpected layout in $src_pkg"

  work="$out/src"
  rm -rf "$work"
  mkdir -p "$work/$main_pkg"
  cp "$mod/go.mod" "$mod/go.sum" "$work/"
  cp "$src_pkg"/* "$work/$main_pkg/"
  chmod -R u+w "$work"

  cd "$work"
  log "generating schema-embed.json and terraform-mapping-embed.json (VERSION=$version)"
  VERSION=$version go generate "./$main_pkg"
  [[ -s $main_pkg/schema-embed.json && -s $main_pkg/terraform-mapping-embed.json ]] ||
    die "go generate did not produce the embedded files"

  log "compiling"
  CGO_ENABLED=0 go build -trimpath -o "$bin.tmp" \
    -ldflags "-s -w -X $provider_module/pkg/version.Version=$version" \
    "./$main_pkg"
  mv -f "$bin.tmp" "$bin"
  echo "$key" > "$out/stamp"
  log "built $bin in $((SECONDS - start))s"
fi

installed_ok || install_plugin
echo "$installed"
