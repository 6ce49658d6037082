"""Stable, collision-free names for workspace stacks and their resources.

A stack is named from owner and workspace name plus a hash of the pair, so two
pairs that read alike once joined ('a-b'/'c' vs 'a'/'b-c') still differ, and
the result is valid as a Pulumi stack name, a Kubernetes object name, a Docker
object name and a file name.

Runtime object names also mix in the installation id (service.store), so two
installations sharing a Docker Engine or a namespace never pick the same name;
the empty id (a store made before ids existed) gives exactly the old names.
"""

from __future__ import annotations

import hashlib
import re

from components.spec import validate_name

STACK_PREFIX = "ws"
_OWNER = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
# An installation id: what service.store generates (8 hex), or "" for legacy.
_INSTALLATION = re.compile(r"^[a-z0-9]{0,16}$")


def validate_owner(owner: str) -> str:
    if not isinstance(owner, str) or not _OWNER.match(owner):
        raise ValueError("owner must be a DNS-1123 label of at most 40 chars")
    return owner


def validate_installation(installation: str) -> str:
    if not isinstance(installation, str) or not _INSTALLATION.match(installation):
        raise ValueError("installation must be empty or up to 16 lowercase letters/digits")
    return installation


def pair_hash(owner: str, name: str, installation: str = "") -> str:
    # Owners and names hold no ':' or '/', so '<id>:<owner>/<name>' never reads
    # as another installation's or a legacy pair.
    key = f"{installation}:{owner}/{name}" if installation else f"{owner}/{name}"
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def stack_name(owner: str, name: str) -> str:
    """Pulumi stack name for a workspace: 'ws-<owner>-<name>-<hash8>' (<= 93 chars)."""
    validate_owner(owner)
    validate_name(name)
    return f"{STACK_PREFIX}-{owner}-{name}-{pair_hash(owner, name)}"


def resource_base(owner: str, name: str, installation: str = "") -> str:
    """Base for runtime object names: '<name>-<hash8>' (<= 49 chars, DNS-1123).

    The owner is left out of the readable part so that the longest derived
    name ('<base>-init-<fingerprint8>') stays within Kubernetes' 63-char label
    limit; the hash keeps names unique across owners and installations (the
    id goes into the hash only, so the length is the same with or without it).
    """
    validate_installation(installation)
    return f"{name}-{pair_hash(owner, name, installation)}"
