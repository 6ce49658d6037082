"""Who this service replica is, and which replicas on this host are dead.

Several replicas share one store; each operation a replica runs is leased to
its replica id (service.store, service.runner). A replica on another host is
dead when its leases run out, and only then. A replica on this host can be
known dead sooner, by its pid: that is what lets a restarted single service
recover its interrupted operations at once instead of a lease later.

The default id is ``<hostname>-<pid>-<hex>`` (service.config); an operator may set another
(STACKSPACE_REPLICA_ID, e.g. a pod name), and such ids are only ever found dead
by their leases. Hostnames are assumed distinct across the hosts of one
installation (true of pods and of machines named by their operator).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from stacks.settings import process_alive


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # the id names an earlier process that had our pid (a container's pid 1)
    return process_alive(pid) and not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Dead but not yet reaped: e.g. the HTTP worker of a killed service,
    orphaned to an init that reaps slowly."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def dead_here(owner: str | None, me: str) -> bool:
    """Whether `owner` (not this replica, `me`) is a default replica id of this
    host whose process is gone. (A reused pid only makes us wait for the lease:
    the safe direction.)"""
    if not owner or owner == me:
        return False
    found = re.fullmatch(rf"{re.escape(socket.gethostname())}-(\d+)-[0-9a-f]+", owner)
    return bool(found) and not pid_alive(int(found.group(1)))


def is_default_id(replica_id: str, pid: int) -> bool:
    """Whether `replica_id` is the default id made by process `pid` of this host."""
    return re.fullmatch(rf"{re.escape(socket.gethostname())}-{pid}-[0-9a-f]+",
                        replica_id) is not None


def engine_tag_prefix(instance: str, nonce: str) -> str:
    """What the engine processes of this replica carry (service.pool.ENGINE_TAG):
    ``<instance>:<pid>-<nonce>``, so a later replica on this host can tell a
    dead replica's leftovers from a live one's."""
    return f"{instance}:{os.getpid()}-{nonce}"


def left_by_dead_replica(tag: str, instance: str) -> bool:
    """An engine tag of `instance` whose replica process is gone (or is an
    earlier process with our pid)."""
    head, _, rest = tag.partition(":")
    if head != instance:
        return False
    found = re.match(r"(\d+)-", rest)
    return bool(found) and not pid_alive(int(found.group(1)))
