"""Runtimes: the operator-configured places where workspaces run (SPEC §2).

A runtime is configuration, not a secret holder: TLS key material and
kubeconfigs are referenced by path on the service host, never copied into
stack config.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from components.egress import FIELD as EGRESS_FIELD
from components.egress import parse_allowlist
from components.spec import SpecError, validate_name

_DOCKER_HOST = re.compile(r"^(unix:///\S+|tcp://[A-Za-z0-9.-]+:[0-9]+|ssh://[\w.-]+@[\w.-]+(:[0-9]+)?)$")
_NETWORK_MODE = re.compile(r"^(bridge|none|host|[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")
# Docker network modes of stackspace's own: a bridge network shared by the
# host's workspaces with inter-container traffic off (enable_icc=false), so no
# workspace reaches another's ports, whoever owns them; "internal" also has no
# route out (no outbound network at all). Made by stackspace on first use
# (service.runtime_objects.ensure_network); the engine needs its iptables on.
ISOLATED, INTERNAL = "isolated", "internal"
SHARED_NETWORKS = {ISOLATED: "stackspace-isolated", INTERNAL: "stackspace-internal"}
NO_ALLOWLIST_MODES = ("host", "none", INTERNAL)
# A Docker workspace's process limit (HostConfig.PidsLimit) unless the runtime
# sets its own: room for builds and language servers, far from a host's pid_max.
DEFAULT_PIDS_LIMIT = 1024
PIDS_LIMIT_RANGE = (16, 4_194_304)  # init + a shell at least; Linux's largest pid_max
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class DockerRuntime:
    name: str
    host: str = "unix:///var/run/docker.sock"
    type: Literal["docker"] = "docker"
    network_mode: str = ISOLATED
    # Processes (threads included) the workspace container may hold at once.
    pids_limit: int = DEFAULT_PIDS_LIMIT
    # For tcp:// hosts: paths to the client TLS material on the service host.
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # For ssh:// hosts: the private key and the known_hosts file to use (paths on
    # the service host). Host keys are always checked strictly.
    ssh_identity_file: str | None = None
    ssh_known_hosts_file: str | None = None
    # Outbound allowlist (components.egress): None lets workspaces reach what
    # the network mode lets them; a list (even empty) refuses everything else.
    egress_allow: tuple[str, ...] | None = None


@dataclass(frozen=True)
class KubernetesRuntime:
    name: str
    type: Literal["kubernetes"] = "kubernetes"
    kubeconfig: str | None = None  # path; None means in-cluster / default
    context: str | None = None
    namespace: str = "stackspace"
    storage_class: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    egress_allow: tuple[str, ...] | None = None  # as DockerRuntime's


Runtime = DockerRuntime | KubernetesRuntime


def parse_runtime(data: Any) -> Runtime:
    """Validate one runtime entry from the service config or stack config."""
    if not isinstance(data, dict):
        raise SpecError({"runtime": "must be an object"})
    kind = data.get("type")
    validate_name(data.get("name"), "runtime.name")
    if kind == "docker":
        allowed = {"name", "type", "host", "network_mode", "ca_file", "cert_file", "key_file",
                   "ssh_identity_file", "ssh_known_hosts_file", "pids_limit", "egress_allow"}
        _reject_unknown(data, allowed)
        rt = DockerRuntime(**_with_allowlist(data))
        if not _DOCKER_HOST.match(rt.host):
            raise SpecError({"runtime.host": "must be unix:///path, tcp://host:port or "
                             "ssh://user@host"})
        if not _NETWORK_MODE.match(rt.network_mode):
            raise SpecError({"runtime.network_mode": "must be isolated, internal, bridge, none, "
                                                     "host or a network's name"})
        if rt.egress_allow is not None and rt.network_mode in NO_ALLOWLIST_MODES:
            # host: the rules would be the host's own; none/internal: no route to allow.
            raise SpecError({EGRESS_FIELD: f"not with network_mode {rt.network_mode} (use "
                                           "isolated, bridge or a network's name)"})
        low, high = PIDS_LIMIT_RANGE
        if (not isinstance(rt.pids_limit, int) or isinstance(rt.pids_limit, bool)
                or not low <= rt.pids_limit <= high):
            raise SpecError({"runtime.pids_limit": f"must be an integer from {low} to {high}"})
        if rt.host.startswith("tcp://") and not (rt.ca_file and rt.cert_file and rt.key_file):
            raise SpecError({"runtime.host": "tcp:// hosts need ca_file, cert_file and key_file "
                             "(the daemon must require TLS)"})
        ssh_files = {"ssh_identity_file": rt.ssh_identity_file,
                     "ssh_known_hosts_file": rt.ssh_known_hosts_file}
        for key, value in ssh_files.items():
            if value is not None and not rt.host.startswith("ssh://"):
                raise SpecError({f"runtime.{key}": "only for ssh:// hosts"})
            if value is not None and (not isinstance(value, str) or not value.startswith("/")):
                raise SpecError({f"runtime.{key}": "must be an absolute path"})
        return rt
    if kind == "kubernetes":
        allowed = {"name", "type", "kubeconfig", "context", "namespace", "storage_class",
                   "node_selector", "egress_allow"}
        _reject_unknown(data, allowed)
        rt = KubernetesRuntime(**_with_allowlist(data))
        validate_name(rt.namespace, "runtime.namespace")
        for k, v in rt.node_selector.items():
            if not _LABEL_VALUE.match(k) or not (v == "" or _LABEL_VALUE.match(v)):
                raise SpecError({"runtime.node_selector": f"bad label {k}={v}"})
        return rt
    raise SpecError({"runtime.type": f"unknown runtime type {kind!r} (docker|kubernetes)"})


def _with_allowlist(data: dict) -> dict:
    """The runtime's fields with `egress_allow` validated and kept as given
    (a tuple: the dataclass stays hashable; stack config shows the entries)."""
    fields = {k: v for k, v in data.items() if k != "type"}
    if fields.get("egress_allow") is not None:
        parse_allowlist(fields["egress_allow"])
        fields["egress_allow"] = tuple(e.strip() for e in fields["egress_allow"])
    return fields


def docker_network(rt: DockerRuntime) -> str:
    """What a Docker container's network_mode is for the runtime's setting."""
    return SHARED_NETWORKS.get(rt.network_mode, rt.network_mode)


def runtime_dict(rt: Runtime) -> dict[str, Any]:
    return {k: v for k, v in asdict(rt).items() if v is not None}


def _reject_unknown(data: dict, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise SpecError({f"runtime.{k}": "unknown field" for k in unknown})
