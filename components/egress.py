"""An outbound allowlist for workspaces (a runtime's `egress_allow`): the hosts,
addresses or CIDRs, each with an optional TCP port, that workspaces may
connect to; everything else outbound is refused. Pure logic, no I/O: parsing
and validation, the Docker network holder's script and its arguments, and a
Kubernetes NetworkPolicy's egress rules.

Entries: `git.example.com:443`, `git.example.com:22`, `10.0.0.0/8`,
`192.0.2.7`, `[2001:db8::/32]:443`, `2001:db8::1`. Without a port every
protocol and port is allowed to the address; with one, TCP to that port (as a
NetworkPolicy port's default protocol). A host name is resolved when the
rules are applied (the holder's start on Docker, each deploy on Kubernetes),
as a NetworkPolicy's ipBlock needs addresses: a name whose addresses change
later needs the workspace restarted (Docker) or a new run (Kubernetes).

On Docker the rules are kernel-enforced iptables OUTPUT rules in the network
namespace of a small per-workspace holder container (components.docker):
the workspace container joins that namespace without NET_ADMIN, so nothing in
it can change them; the holder sets the chain's policy to DROP first (fail
closed), then allows loopback (Docker's resolver 127.0.0.11 included),
replies, DNS to the namespace's nameservers and the allowlist, then rejects
the rest (a TCP reset: clients fail at once with "connection refused").
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from components.spec import SpecError

FIELD = "runtime.egress_allow"
MAX_ENTRIES = 64
# RFC 1123 host names (at least one label; labels of letters, digits, hyphens).
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
# The network holder's image (scripts/toolchain/egress-image.sh builds it from
# the host's busybox, iptables and getent; scripts/docker-engine and
# scripts/test-docker-host import it; no registry needed).
HOLDER_IMAGE = "stackspace/egress:1"
HOLDER_MISSING = (f"egress_allow needs the image {HOLDER_IMAGE} on the Docker host "
                  "(scripts/toolchain/egress-image.sh --import DOCKER_HOST puts it there)")
# The holder's log line once every rule is in place (components.workload_start waits for it).
READY_LINE = "stackspace-egress: ready"
HOLDER_ERROR = "stackspace-egress: error:"  # how its failures start


@dataclass(frozen=True)
class EgressRule:
    """One allowlist entry: `host` is a host name or a CIDR in canonical form."""

    host: str
    port: int | None = None

    @property
    def is_name(self) -> bool:
        return not _is_network(self.host)

    @property
    def family(self) -> int | None:
        """4 or 6 for an address, None for a host name (resolved to either)."""
        return None if self.is_name else ipaddress.ip_network(self.host).version


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def parse_entry(entry: Any, field: str) -> EgressRule:
    """One entry, or a SpecError naming `field` (e.g. runtime.egress_allow[2])."""
    if not isinstance(entry, str) or not entry.strip():
        raise SpecError({field: "must be a host, an address or a CIDR, with an optional :port"})
    text = entry.strip()
    if "://" in text:
        raise SpecError({field: f"{text!r} is a URL: give its host and port "
                                "(git.example.com:443)"})
    host, port_text = text, None
    if text.startswith("["):  # [IPv6 address or CIDR]:port
        close = text.find("]")
        if close < 0 or (text[close + 1:] and not text[close + 1:].startswith(":")):
            raise SpecError({field: f"{text!r}: an IPv6 address with a port is [address]:port"})
        host, port_text = text[1:close], text[close + 2:] if text[close + 1:] else None
        if not _is_network(host):
            raise SpecError({field: f"{text!r}: {host!r} is not an IPv6 address or CIDR"})
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    port = _port(port_text, text, field) if port_text is not None else None
    if _is_network(host):
        try:
            network = ipaddress.ip_network(host, strict=True)
        except ValueError:
            raise SpecError({field: f"{text!r}: {host!r} has host bits set past its prefix "
                                    f"(did you mean {ipaddress.ip_network(host, strict=False)}?)"}
                            ) from None
        return EgressRule(str(network), port)
    if ":" in host or not _HOSTNAME.match(host) or host.replace(".", "").isdigit():
        raise SpecError({field: f"{text!r} is not a host name, an address or a CIDR "
                                "(with an optional :port; IPv6 with a port: [address]:port)"})
    return EgressRule(host.rstrip(".").lower(), port)


def _port(text: str, entry: str, field: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise SpecError({field: f"{entry!r}: the port must be a number from 1 to 65535"})
    return int(text)


def parse_allowlist(value: Any, field: str = FIELD) -> tuple[EgressRule, ...]:
    """A runtime's `egress_allow` (a list of entries), validated; duplicates dropped."""
    if not isinstance(value, list | tuple):
        raise SpecError({field: "must be a list of hosts, addresses or CIDRs (each with an "
                                "optional :port)"})
    if len(value) > MAX_ENTRIES:
        raise SpecError({field: f"at most {MAX_ENTRIES} entries"})
    rules: list[EgressRule] = []
    for i, entry in enumerate(value):
        rule = parse_entry(entry, f"{field}[{i}]")
        if rule not in rules:
            rules.append(rule)
    return tuple(rules)


def holder_args(rules: tuple[EgressRule, ...]) -> list[str]:
    """The holder script's arguments: one `HOST PORT` pair per rule (PORT `-`
    for every port). Every value was validated: no shell ever reads them as code."""
    return [v for r in rules for v in (r.host, str(r.port) if r.port else "-")]


# The holder's entrypoint (`/bin/sh -c HOLDER_SCRIPT holder HOST PORT ...`):
# a constant that reads its allowlist from its arguments. It runs in the
# holder image (busybox sh, iptables, getent), as root with NET_ADMIN only.
# ip6tables is best effort only where the kernel has no IPv6 in the namespace.
HOLDER_SCRIPT = r"""
set -eu
say() { echo "stackspace-egress: $*"; }
fail() { echo "stackspace-egress: error: $*" >&2; exit 1; }
v6=1
for t in iptables ip6tables; do
  if ! "$t" -P OUTPUT DROP 2>/tmp/err; then
    [ "$t" = ip6tables ] && [ ! -e /proc/net/if_inet6 ] && { v6=0; continue; }
    fail "cannot set $t rules: $(cat /tmp/err)"
  fi
  "$t" -F OUTPUT
  "$t" -A OUTPUT -o lo -j ACCEPT
  "$t" -A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
done
allow() {  # allow ADDRESS PORT
  case "$1" in *:*) [ "$v6" = 1 ] || return 0; t=ip6tables ;; *) t=iptables ;; esac
  if [ "$2" = - ]; then "$t" -A OUTPUT -d "$1" -j ACCEPT
  else "$t" -A OUTPUT -d "$1" -p tcp --dport "$2" -j ACCEPT; fi
}
# DNS to the namespace's own nameservers (127.0.0.11 is loopback: allowed above).
for ns in $(sed -n 's/^nameserver[[:space:]]*\([0-9a-fA-F.:]*\).*/\1/p' /etc/resolv.conf); do
  case "$ns" in 127.*) continue ;; esac
  case "$ns" in *:*) t=ip6tables; [ "$v6" = 1 ] || continue ;; *) t=iptables ;; esac
  for p in udp tcp; do "$t" -A OUTPUT -d "$ns" -p "$p" --dport 53 -j ACCEPT; done
done
while [ $# -ge 2 ]; do
  host=$1 port=$2; shift 2
  case "$host" in
    *[!0-9a-fA-F.:/]*)
      addrs=$(RES_OPTIONS="timeout:2 attempts:2" timeout 20 getent ahosts "$host" \
               | awk '{print $1}' | sort -u) || true
      [ -n "$addrs" ] || fail "cannot resolve $host (runtime.egress_allow)"
      for a in $addrs; do allow "$a" "$port"; done ;;
    *) allow "$host" "$port" ;;
  esac
done
for t in iptables ip6tables; do
  [ "$t" = ip6tables ] && [ "$v6" = 0 ] && continue
  "$t" -A OUTPUT -p tcp -j REJECT --reject-with tcp-reset
  "$t" -A OUTPUT -j REJECT
done
say ready
sleep 2147483647 &
trap 'kill $! 2>/dev/null; exit 0' TERM INT
wait $!
"""


def network_policy_egress(rules: tuple[EgressRule, ...],
                          addresses: dict[str, list[str]]) -> list[dict[str, Any]]:
    """A NetworkPolicy's `egress` for the allowlist: DNS to the cluster's DNS
    pods (kube-system), then one rule per entry, `addresses` giving each host
    name's addresses (resolved by the caller)."""
    dns = {"to": [{"namespaceSelector": {"matchLabels": {
                       "kubernetes.io/metadata.name": "kube-system"}},
                   "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
           "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    egress: list[dict[str, Any]] = [dns]
    for rule in rules:
        cidrs = ([str(ipaddress.ip_network(a)) for a in addresses[rule.host]]
                 if rule.is_name else [rule.host])
        entry: dict[str, Any] = {"to": [{"ipBlock": {"cidr": c}} for c in sorted(set(cidrs))]}
        if rule.port:
            entry["ports"] = [{"protocol": "TCP", "port": rule.port}]
        egress.append(entry)
    return egress
