# Shared settings for the toolchain builders (sourced, not run).
# Everything is cached outside the repository, under STACKSPACE_CACHE, keyed by
# versions and by the hash of the inputs that produced it.
export STACKSPACE_CACHE=${STACKSPACE_CACHE:-$HOME/.cache/stackspace}
export GOMODCACHE=$STACKSPACE_CACHE/go/mod
export GOCACHE=$STACKSPACE_CACHE/go/build
export GOFLAGS=-mod=mod
export GOTOOLCHAIN=local
PULUMI_VERSION=3.259.0
PULUMI_BIN=$STACKSPACE_CACHE/pulumi/$PULUMI_VERSION/bin
export PULUMI_HOME=${PULUMI_HOME:-$STACKSPACE_CACHE/pulumi-home}

log() { echo "toolchain: $*" >&2; }

# stamp_ok FILE KEY: true when FILE records KEY (the build inputs are unchanged).
stamp_ok() { [[ -f $1 && "$(cat "$1")" == "$2" ]]; }

# inputs_key DIR: a hash of the files in a build-input directory, by content and
# relative path, so two checkouts in different places share the cached build.
inputs_key() { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16; }
