#!/usr/bin/env bash
# Builds the Pulumi CLI from the Go module proxy at the pinned version, unless a
# `pulumi` on PATH is already at least that version. Prints the bin directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

if existing=$(command -v pulumi 2>/dev/null) && [[ $existing != "$PULUMI_BIN/pulumi" ]]; then
  have=$("$existing" version 2>/dev/null | sed 's/^v//')
  if [[ -n $have ]] && [[ $(printf '%s\n%s\n' "$PULUMI_VERSION" "$have" | sort -V | head -1) == "$PULUMI_VERSION" ]]; then
    log "using installed pulumi $have at $existing"
    dirname "$existing"
    exit 0
  fi
fi

key="$PULUMI_VERSION $(inputs_key "$here/pulumi-cli")"
stamp=$PULUMI_BIN/.pulumi.stamp
if [[ -x $PULUMI_BIN/pulumi ]] && stamp_ok "$stamp" "$key"; then
  echo "$PULUMI_BIN"
  exit 0
fi
log "building pulumi CLI v$PULUMI_VERSION (cold: several minutes)"
mkdir -p "$PULUMI_BIN"
cd "$here/pulumi-cli"
go build -trimpath -o "$PULUMI_BIN/pulumi.tmp" \
  -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION" \
  github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
mv "$PULUMI_BIN/pulumi.tmp" "$PULUMI_BIN/pulumi"
echo "$key" > "$stamp"
echo "$PULUMI_BIN"
