#!/usr/bin/env bash
# Build stackspace-session, the static helper the exec proxy copies into
# workspaces to keep sessions alive there (proxy/session_helper, SPEC §5).
# Pure Go, no modules to download, CGO off: one static linux binary per
# GOARCH. Cached under $STACKSPACE_CACHE/session-helper keyed by the sources and
# the Go version; the last line printed is the stable path of the amd64 binary
# (the proxy's default, or STACKSPACE_SESSION_HELPER).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
src=$(cd "$(dirname "$0")/../../proxy/session_helper" && pwd)
command -v go >/dev/null 2>&1 || { log "go is not on PATH"; exit 1; }
key="$(inputs_key "$src")-$(go env GOVERSION)"
out=$STACKSPACE_CACHE/session-helper
mkdir -p "$out"
for arch in amd64 arm64; do
  bin=$out/stackspace-session-linux-$arch
  if ! stamp_ok "$bin.stamp" "$key" || [[ ! -x $bin ]]; then
    log "building stackspace-session for linux/$arch"
    (cd "$src" && CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath \
        -ldflags "-s -w" -o "$bin.tmp" .)
    mv -f "$bin.tmp" "$bin"
    echo "$key" > "$bin.stamp"
  fi
done
echo "$out/stackspace-session-linux-amd64"
