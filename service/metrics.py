"""Prometheus metrics of one service instance (prometheus_client).

Each service instance (one Store) gets its own registry, not the library's
global default one, so tests and several apps in one process never add to
each other's counts. The API records HTTP traffic, the operation runner
records every operation that ends, and the workspace/operation gauges are
read from the store at scrape time, so they are right even after a restart
(ended operations from a summary table: a scrape reads no history).
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from service import op_counts
from service.storage_usage import StorageUsage
from service.store import Store

# From half a second (an empty engine pass at best) to the 15 minutes a slow
# image pull or clone may take. Coder's coderd_workspace_creation_duration_seconds
# and DWO's devworkspace_startup_time cover the same span.
OPERATION_BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900)
# One phase of an operation (config write, preview, up, destroy...).
PHASE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 30, 60, 120, 300, 600, 900)
# API requests answer from SQLite; only 202s that enqueue work do any writing.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _StoreGauges(Collector):
    """Workspaces by state and operations by status, counted at scrape time."""

    def __init__(self, store: Store):
        self.store = store

    def describe(self) -> Iterable[Metric]:
        # Known up front, so registering does not run the store queries.
        yield GaugeMetricFamily("stackspace_workspaces", "Workspaces by state",
                                labels=["state"])
        yield GaugeMetricFamily("stackspace_operations", "Operations by status",
                                labels=["status"])

    def collect(self) -> Iterable[Metric]:
        workspaces = GaugeMetricFamily("stackspace_workspaces", "Workspaces by state",
                                       labels=["state"])
        for state, n in self.store.db.execute(
                "SELECT state, COUNT(*) FROM workspaces GROUP BY state"):
            workspaces.add_metric([state], n)
        operations = GaugeMetricFamily("stackspace_operations", "Operations by status",
                                       labels=["status"])
        # Bounded whatever the history: live for work in flight, totals for the rest.
        for status, n in op_counts.by_status(self.store.db).items():
            operations.add_metric([status], n)
        yield workspaces
        yield operations


class _StorageGauges(Collector):
    """Each workspace's storage: requested, used as last measured (Docker;
    service.storage_usage), and whether it is over its request."""

    NAMES = (("stackspace_workspace_storage_requested_bytes", "resources.storage in bytes"),
             ("stackspace_workspace_storage_used_bytes",
              "Bytes the workspace's storage holds, as last measured (Docker)"),
             ("stackspace_workspace_storage_over",
              "1 when the workspace uses more storage than it requested"))
    LABELS = ["owner", "workspace", "runtime"]

    def __init__(self, store: Store, usage: StorageUsage):
        self.store, self.usage = store, usage

    def describe(self) -> Iterable[Metric]:
        for name, text in self.NAMES:
            yield GaugeMetricFamily(name, text, labels=self.LABELS)

    def collect(self) -> Iterable[Metric]:
        requested, used, over = (GaugeMetricFamily(name, text, labels=self.LABELS)
                                 for name, text in self.NAMES)
        # Only the columns it needs (not each row's stack settings), once per scrape.
        for owner, name, runtime, runtime_config, installation, spec in self.store.db.execute(
                "SELECT owner, name, runtime, runtime_config, installation, spec"
                " FROM workspaces"):
            ws = {"owner": owner, "name": name, "runtime": runtime,
                  "runtime_config": json.loads(runtime_config or "null"),
                  "installation": installation or "", "spec": json.loads(spec)}
            try:
                report = self.usage.report(ws)
            except ValueError:  # a row this code cannot read: its own GET says why
                continue
            labels = [owner, name, runtime]
            requested.add_metric(labels, report.requested_bytes)
            if report.used_bytes is not None:
                used.add_metric(labels, report.used_bytes)
            over.add_metric(labels, 1 if report.over else 0)
        yield from (requested, used, over)


class Metrics:
    def __init__(self, store: Store):
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "stackspace_http_requests", "HTTP requests answered",
            ["method", "route", "status"], registry=self.registry)
        self.http_latency = Histogram(
            "stackspace_http_request_duration_seconds",
            "Time to answer an HTTP request (for event streams: until the stream opens)",
            ["method", "route"], buckets=HTTP_BUCKETS, registry=self.registry)
        self.operation_duration = Histogram(
            "stackspace_operation_duration_seconds",
            "Operation time from request to end (queue wait included), by kind, "
            "runtime and result",
            ["kind", "runtime", "result"], buckets=OPERATION_BUCKETS, registry=self.registry)
        self.phase_duration = Histogram(
            "stackspace_operation_phase_duration_seconds",
            "Time of one phase of an operation (config, preview, up, destroy, ...; "
            "total is the worker's whole run)",
            ["kind", "phase"], buckets=PHASE_BUCKETS, registry=self.registry)
        self.registry.register(_StoreGauges(store))
        self._store = store
        self._storage: _StorageGauges | None = None
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def report_storage(self, usage: StorageUsage) -> None:
        """Export the storage gauges from `usage` (once per registry: the
        first service app of a store sets it)."""
        if getattr(self, "_storage", None) is None:
            self._storage = _StorageGauges(self._store, usage)
            self.registry.register(self._storage)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        # The labelled series of each endpoint and status, looked up once (the
        # client's own look-up takes a lock and builds its key every request).
        series = self._series.get((method, route, status))
        if series is None:
            series = self._series[(method, route, status)] = (
                self.http_requests.labels(method, route, str(status)),
                self.http_latency.labels(method, route))
        series[0].inc()
        series[1].observe(seconds)

    def observe_operation(self, kind: str, runtime: str, result: str, seconds: float,
                          timings: Mapping[str, float]) -> None:
        """Record an operation that ended: its duration and each phase's."""
        self.operation_duration.labels(kind, runtime, result).observe(max(0.0, seconds))
        for phase, phase_seconds in timings.items():
            self.phase_duration.labels(kind, phase).observe(max(0.0, phase_seconds))

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the format the scraper asked for: (body, content type)."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


_by_store: weakref.WeakKeyDictionary[Store, Metrics] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def metrics_for(store: Store) -> Metrics:
    """The metrics of the service instance that owns `store` (the API and the
    runner share one Store, so they find the same registry)."""
    with _lock:
        metrics = _by_store.get(store)
        if metrics is None:
            metrics = _by_store[store] = Metrics(store)
        return metrics
