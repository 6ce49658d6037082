"""Stable, collision-free names for workspace stacks and their resources.

A stack is named from owner and workspace name plus a hash of the pair, so two
pairs that read alike once joined ('a-b'/'c' vs 'a'/'b-c') still differ, and
the result is valid as a Pulumi stack name, a Kubernetes object name, a Docker
object name and a file name.
"""

from __future__ import annotations

import hashlib
import re

from components.spec import validate_name

STACK_PREFIX = "ws"
_OWNER = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")


def validate_owner(owner: str) -> str:
    if not isinstance(owner, str) or not _OWNER.match(owner):
        raise ValueError("owner must be a DNS-1123 label of at most 40 chars")
    return owner


def pair_hash(owner: str, name: str) -> str:
    return hashlib.sha256(f"{owner}/{name}".encode()).hexdigest()[:8]


def stack_name(owner: str, name: str) -> str:
    """Pulumi stack name for a workspace: 'ws-<owner>-<name>-<hash8>' (<= 93 chars)."""
    validate_owner(owner)
    validate_name(name)
    return f"{STACK_PREFIX}-{owner}-{name}-{pair_hash(owner, name)}"


def resource_base(owner: str, name: str) -> str:
    """Base for runtime object names: '<name>-<hash8>' (<= 49 chars, DNS-1123).

    The owner is left out of the readable part so that the longest derived
    name ('<base>-init-<fingerprint8>') stays within Kubernetes' 63-char label
    limit; the hash keeps names unique across owners.
    """
    return f"{name}-{pair_hash(owner, name)}"
