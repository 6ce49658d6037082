"""How much storage Docker workspaces use, against what they asked for
(`resources.storage`; SPEC §8: storage use is enforced or reported).

A Docker named volume has no size cap on a plain local driver (an XFS project
quota needs a daemon whose data root is XFS mounted with pquota), so the use
is reported: in `GET /workspaces/{name}` and in /metrics, with the workspace
flagged `over` when it uses more than its request. Nothing is exec'd into a
workspace: the engine's own disk-usage call (`GET /system/df?type=volume`,
UsageData.Size per volume) measures every volume of a host at once.

That call walks every volume's files, so it is never made on a request's
path: readers get the last measurement at once and, when it is older than
`max_age`, start one new measurement of that runtime in the background (one
at a time per runtime). An idle service measures nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from components.base import LABEL_INSTALLATION, LABEL_OWNER, LABEL_ROLE, LABEL_WORKSPACE
from components.clients import docker_client
from components.runtime import DockerRuntime, Runtime, parse_runtime
from components.spec import WorkspaceSpec, quantity_value

log = logging.getLogger("stackspace.storage")

# (owner, workspace, installation id or "") of one workspace's storage volume.
VolumeKey = tuple[str, str, str]


def is_over(used_bytes: int | None, requested_bytes: int) -> bool:
    """Whether a workspace uses more storage than it asked for; unmeasured is not over."""
    return used_bytes is not None and used_bytes > requested_bytes


def requested_bytes(storage: str) -> int:
    """`resources.storage` (a quantity such as "1Gi") in bytes."""
    return int(quantity_value(storage))


@dataclass(frozen=True)
class StorageReport:
    requested_bytes: int
    used_bytes: int | None = None  # None: not measured (yet, or not on this runtime)
    measured_at: float | None = None

    @property
    def over(self) -> bool:
        return is_over(self.used_bytes, self.requested_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {"requested_bytes": self.requested_bytes, "used_bytes": self.used_bytes,
                "over": self.over, "measured_at": self.measured_at, "enforced": False}


def volume_sizes(df: dict[str, Any]) -> dict[VolumeKey, int]:
    """The storage volumes stackspace labelled, by workspace, from a
    /system/df answer. A size the engine did not compute (-1) is left out."""
    sizes: dict[VolumeKey, int] = {}
    for vol in df.get("Volumes") or []:
        labels = vol.get("Labels") or {}
        size = (vol.get("UsageData") or {}).get("Size", -1)
        if labels.get(LABEL_ROLE) != "storage" or size is None or size < 0:
            continue
        owner, name = labels.get(LABEL_OWNER), labels.get(LABEL_WORKSPACE)
        if owner and name:
            sizes[(owner, name, labels.get(LABEL_INSTALLATION, ""))] = int(size)
    return sizes


def measure_docker(rt: DockerRuntime) -> dict[VolumeKey, int]:
    """One disk-usage pass of the runtime's engine (volumes only where the
    engine knows `type`, API 1.42+; older engines ignore it and count all)."""
    client = docker_client(rt, timeout=600)
    try:
        api = client.api
        answer = api._result(api._get(api._url("/system/df"), params={"type": "volume"}), True)
        return volume_sizes(answer)
    finally:
        client.close()


@dataclass(frozen=True)
class StorageRequest:
    runtime: Runtime | None  # where the volume lives (None: a runtime no longer configured)
    key: VolumeKey
    requested_bytes: int


@dataclass
class _Measurement:
    sizes: dict[VolumeKey, int]
    at: float


class StorageUsage:
    """The service process's cache of volume sizes, per Docker runtime."""

    def __init__(self, runtimes: Iterable[Runtime], max_age: float = 60.0):
        self.runtimes = {rt.name: rt for rt in runtimes}
        self.max_age = max_age
        self._lock = threading.Lock()
        self._cache: dict[str, _Measurement] = {}
        self._busy: set[str] = set()
        self._tried: dict[str, float] = {}  # runtime -> monotonic time of the last attempt

    def request_of(self, ws: dict[str, Any]) -> StorageRequest:
        """What a stored workspace row says about its storage (a row version's
        facts: service.views keeps them with the row's rendered JSON)."""
        return StorageRequest(self._runtime(ws),
                              (ws["owner"], ws["name"], ws.get("installation") or ""),
                              requested_bytes(WorkspaceSpec.stored(ws["spec"]).resources.storage))

    def report(self, ws: dict[str, Any]) -> StorageReport:
        """The workspace's storage use as last measured (never waits for a measurement)."""
        return self.usage(self.request_of(ws))

    def usage(self, req: StorageRequest) -> StorageReport:
        """The use of `req`'s volume as last measured (never waits for a measurement)."""
        if not isinstance(req.runtime, DockerRuntime):
            return StorageReport(req.requested_bytes)
        m = self._fresh(req.runtime)
        used = m.sizes.get(req.key) if m else None
        return StorageReport(req.requested_bytes, used, m.at if m and used is not None else None)

    def _runtime(self, ws: dict[str, Any]) -> Runtime | None:
        rt = self.runtimes.get(ws["runtime"])
        if rt is None and ws.get("runtime_config"):
            rt = parse_runtime(ws["runtime_config"])
        return rt

    def _fresh(self, rt: DockerRuntime) -> _Measurement | None:
        """The last measurement; starts a new one in the background when the
        last attempt (a failed one too) is older than max_age."""
        if time.monotonic() - self._tried.get(rt.name, -1e18) > self.max_age:
            # Due (checked again under the lock): requests in between take
            # no lock, which the request threads would queue on.
            with self._lock:
                now = time.monotonic()
                if rt.name not in self._busy and \
                        now - self._tried.get(rt.name, -1e18) > self.max_age:
                    self._busy.add(rt.name)
                    self._tried[rt.name] = now
                    threading.Thread(target=self._refresh, args=(rt,), daemon=True,
                                     name=f"storage-usage-{rt.name}").start()
        return self._cache.get(rt.name)

    def _refresh(self, rt: DockerRuntime) -> None:
        sizes = None
        try:
            sizes = measure_docker(rt)
        except Exception as e:  # noqa: BLE001 - the last measurement stays; retried later
            log.warning("cannot measure storage use", extra={"runtime": rt.name,
                                                             "error_type": type(e).__name__})
        with self._lock:
            if sizes is not None:
                self._cache[rt.name] = _Measurement(sizes, time.time())
            self._busy.discard(rt.name)
