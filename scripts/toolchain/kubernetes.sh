#!/usr/bin/env bash
# Builds the binaries of the single-node test cluster (scripts/test-cluster)
# from the Go module proxy and caches them outside the repository:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#   kubectl and pause (the pod sandbox process).
# Versions are pinned by the tools modules under scripts/toolchain/kubernetes/
# (k8s/go.mod: k8s.io/kubernetes with every staging module replaced by the
# published v0.MINOR.PATCH; etcd/go.mod: go.etcd.io/etcd/server/v3).
# The build is skipped when the stamp (versions + go.sum hashes + this
# script) matches. Prints the bin directory as its only line on stdout;
# progress goes to stderr.
# Usage: kubernetes.sh [--print-version]
set -euo pipefail
main() {
  here=$(cd "$(dirname "$0")" && pwd)
  mods="$here/kubernetes"
  cache=${STACKSPACE_CACHE:-$HOME/.cache/stackspace}

  k8s_version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$mods/k8s/go.mod")
  etcd_version=$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' "$mods/etcd/go.mod")
  if [[ -z $k8s_version || -z $etcd_version ]]; then
    echo "kubernetes.sh: cannot read pinned versions from $mods/*/go.mod" >&2
    exit 1
  fi
  if [[ ${1:-} == --print-version ]]; then
    echo "kubernetes $k8s_version etcd $etcd_version"
    exit 0
  fi

  out="$cache/kubernetes/$k8s_version"
  bin="$out/bin"
  binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl pause)
  # Bump when a change here changes what gets built (flags, binaries).
  recipe=1
  key=$( {
    echo "recipe=$recipe k8s=$k8s_version etcd=$etcd_version"
    cat "$mods/k8s/go.mod" "$mods/k8s/go.sum" "$mods/k8s/tools.go" \
        "$mods/etcd/go.mod" "$mods/etcd/go.sum" "$mods/etcd/main.go" \
        "$mods/pause/go.mod" "$mods/pause/main.go"
  } | sha256sum | cut -c1-16)

  complete() {
    [[ -f $out/stamp && $(cat "$out/stamp") == "$key" ]] || return 1
    local b
    for b in "${binaries[@]}"; do [[ -x $bin/$b ]] || return 1; done
  }

  if complete; then
    echo "$bin"
    exit 0
  fi

  mkdir -p "$out"
  exec 9>"$out/build.lock"
  flock 9
  if complete; then # built by a concurrent run while we waited for the lock
    echo "$bin"
    exit 0
  fi

  command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"
  command -v go >/dev/null || {
    echo "kubernetes.sh: the Go toolchain (go >= 1.26) is required" >&2
    exit 1
  }
  export GOMODCACHE=${GOMODCACHE:-$cache/go/mod}
  export GOCACHE=${GOCACHE:-$cache/go/build}
  export GOFLAGS=-mod=mod
  export CGO_ENABLED=0

  start=$SECONDS
  work=$(mktemp -d "$out/build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/bin"

  # Kubernetes stamps its version into these packages (hack/lib/version.sh).
  minor=${k8s_version#v1.}
  minor=${minor%%.*}
  ldv=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldv+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldv+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done

  build() { # build NAME MODULE_DIR LDFLAGS PACKAGE...
    local name=$1 src=$2 ldflags=$3
    shift 3
    echo "kubernetes.sh: building $name ($((SECONDS - start))s)" >&2
    rm -rf "${work:?}/$name"
    mkdir -p "$work/$name"
    cp "$src"/go.* "$src"/*.go "$work/$name/"
    (cd "$work/$name" && go build -trimpath -ldflags "-s -w $ldflags" -o "$work/bin/" "$@")
  }

  build pause "$mods/pause" "" .
  build etcd "$mods/etcd" "-X go.etcd.io/etcd/api/v3/version.GitSHA=$etcd_version" .
  build kubernetes "$mods/k8s" "$ldv" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kubectl

  rm -rf "$bin"
  mv "$work/bin" "$bin"
  echo "$key" >"$out/stamp"
  echo "kubernetes.sh: built kubernetes $k8s_version and etcd $etcd_version in $((SECONDS - start))s" >&2
  echo "$bin"
}

# Parsed whole before it runs, so editing this file during a build is safe.
{
  main "$@"
  exit
}
