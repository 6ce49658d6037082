#!/usr/bin/env bash
# Builds Pulumi's Python language host (pulumi-language-python) from the Go
# module proxy and installs it, with its pulumi-language-python-exec script,
# next to the Pulumi CLI in $STACKSPACE_CACHE/pulumi/<cli-version>/bin.
# Idempotent: skipped when a stamp records the same versions and inputs.
# Prints the bin directory as its last line.
#
# Which language host: since sdk v3.80.0 the host is its own Go module
# (github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3), published
# only as pseudo-versions, and the module proxy reachable here serves none of
# them (every release commit from v3.180.0 to v3.260.0 was refused). So this
# builds the last host that shipped inside the sdk/v3 module, v3.79.0 (see
# language-python/go.mod). It works with CLI 3.259 (Run, config, secrets,
# preview/up/destroy, Automation API local and inline programs), with caveats:
#   - the Pulumi.yaml runtime options (virtualenv, toolchain, typechecker) are
#     not seen by this host: it runs `python3` from PATH, or $PULUMI_PYTHON_CMD.
#     Put the project's venv first on PATH, or set PULUMI_PYTHON_CMD.
#   - the interpreter needs pip (plugin discovery runs `python -m pip list`).
#   - pulumi.get_root_directory() is None in programs it runs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

HOST_SDK_VERSION=3.79.0
mod_dir=$here/language-python
if ! grep -q "github.com/pulumi/pulumi/sdk/v3 v$HOST_SDK_VERSION\$" "$mod_dir/go.mod"; then
  log "error: $mod_dir/go.mod does not require sdk/v3 v$HOST_SDK_VERSION; update HOST_SDK_VERSION in $0"
  exit 1
fi
if ! command -v go >/dev/null 2>&1; then
  log "error: go is not installed (needed to build pulumi-language-python)"
  exit 1
fi

bin=$PULUMI_BIN
key="cli=$PULUMI_VERSION host=$HOST_SDK_VERSION $(inputs_key "$mod_dir")"
stamp=$bin/.pulumi-language-python.stamp
if [[ -x $bin/pulumi-language-python && -x $bin/pulumi-language-python-exec ]] && stamp_ok "$stamp" "$key"; then
  echo "$bin"
  exit 0
fi

mkdir -p "$bin"
log "building pulumi-language-python (sdk v$HOST_SDK_VERSION) into $bin (cold: a few minutes)"
start=$SECONDS
(
  cd "$mod_dir"
  go build -trimpath -o "$bin/pulumi-language-python.tmp" \
    -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$HOST_SDK_VERSION" \
    github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python
)
mv "$bin/pulumi-language-python.tmp" "$bin/pulumi-language-python"
log "built pulumi-language-python in $((SECONDS - start))s"

# The -exec script comes from the CLI's own sdk/v3 version, to match the CLI
# and the PyPI `pulumi` SDK; it takes the arguments the v3.79.0 host passes.
sdk_dir=$(cd "$mod_dir" && go mod download -json "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_VERSION" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
exec_src=$sdk_dir/python/cmd/pulumi-language-python-exec
if [[ -z $sdk_dir || ! -f $exec_src ]]; then
  log "error: pulumi-language-python-exec not found in sdk/v3@v$PULUMI_VERSION (dir: '${sdk_dir}')"
  exit 1
fi
cp "$exec_src" "$bin/pulumi-language-python-exec.tmp"
chmod 755 "$bin/pulumi-language-python-exec.tmp"
mv "$bin/pulumi-language-python-exec.tmp" "$bin/pulumi-language-python-exec"

echo "$key" > "$stamp"
echo "$bin"
