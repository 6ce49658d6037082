#!/usr/bin/env bash
# Builds the network holder image of the outbound allowlist (components/egress.py)
# offline: a root filesystem of this Debian host's busybox-static (sh, sed, awk,
# sort, sleep), iptables (xtables-nft-multi and its extensions) and getent, with
# their libraries. Cached as a tarball keyed by the hash of those inputs; prints
# its path.
#   egress-image.sh                  build (if needed), print the tarball's path
#   egress-image.sh --import HOST    also import it into the engine at DOCKER_HOST=HOST
#                                    as stackspace/egress:1 unless already there
set -euo pipefail
IMAGE=stackspace/egress:1
cache=${STACKSPACE_CACHE:-$HOME/.cache/stackspace}
bins=(/bin/busybox /usr/sbin/xtables-nft-multi /usr/bin/getent)
xt=/usr/lib/x86_64-linux-gnu/xtables
[[ -d $xt ]] || xt=$(dirname "$(find /usr/lib -name libxt_conntrack.so -print -quit)")
for b in "${bins[@]}"; do
  [[ -x $b ]] || { echo "egress-image: $b missing (scripts/setup installs busybox-static, iptables)" >&2; exit 1; }
done
libs=$(for b in "${bins[@]}"; do ldd "$b" 2>/dev/null | grep -o '/[^ ]*' || true; done | sort -u)
# By content only (not paths): every checkout computes the same recipe.
hash=$( (sha256sum "$0" "${bins[@]}" $libs; find "$xt" -name '*.so' -print0 | sort -z | xargs -0 sha256sum) \
        | cut -d' ' -f1 | sha256sum | cut -c1-12)
out="$cache/images/egress-$hash.rootfs.tar"
if [[ ! -s $out ]]; then
  mkdir -p "$cache/images"
  work=$(mktemp -d "$cache/images/build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  root=$work/rootfs
  mkdir -p "$root"/{bin,sbin,usr/sbin,usr/bin,etc,tmp,run} "$root$xt"
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in sh sed awk sort sleep cat timeout; do ln -s busybox "$root/bin/$applet"; done
  cp /usr/sbin/xtables-nft-multi "$root/usr/sbin/"
  for t in iptables ip6tables; do ln -s xtables-nft-multi "$root/usr/sbin/$t"; done
  cp /usr/bin/getent "$root/usr/bin/"
  for lib in $libs; do mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; done
  cp "$xt"/*.so "$root$xt/"
  tar -C "$root" --numeric-owner -cf "$out.tmp" .
  mv "$out.tmp" "$out"
fi
if [[ ${1:-} == --import ]]; then
  host=${2:?usage: egress-image.sh --import DOCKER_HOST}
  current=$(DOCKER_HOST=$host docker image inspect "$IMAGE" \
            --format '{{index .Config.Labels "dev.stackspace.recipe"}}' 2>/dev/null || true)
  if [[ $current != "$hash" ]]; then
    echo "egress-image: importing $IMAGE (recipe $hash)" >&2
    DOCKER_HOST=$host docker import --change "LABEL dev.stackspace.recipe=$hash" \
      --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' "$out" "$IMAGE" >/dev/null
  fi
fi
echo "$out"
