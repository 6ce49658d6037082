"""The service's Prometheus metrics: what the runner and the API record is
what a scraper reads, per service instance."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from service.metrics import Metrics, metrics_for
from service.store import Store


def scrape(metrics: Metrics) -> dict[str, list]:
    """Samples by name, parsed the way Prometheus's text parser reads them."""
    body, content_type = metrics.exposition(None)
    assert content_type.startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float | None:
    hits = [s.value for s in samples.get(name, [])
            if all(s.labels.get(k) == v for k, v in labels.items())]
    return hits[0] if hits else None


def test_an_ended_operation_shows_in_both_histograms(tmp_path):
    metrics = Metrics(Store(tmp_path / "s.db"))
    metrics.observe_operation("stop", "local", "succeeded", 4.2,
                              {"config": 0.3, "preview": 1.5, "up": 2.1, "total": 3.9})
    s = scrape(metrics)
    op = {"kind": "stop", "runtime": "local", "result": "succeeded"}
    assert value(s, "stackspace_operation_duration_seconds_count", **op) == 1
    assert value(s, "stackspace_operation_duration_seconds_sum", **op) == 4.2
    # 4.2 s falls in the 5 s bucket, not the 3 s one
    assert value(s, "stackspace_operation_duration_seconds_bucket", le="3.0", **op) == 0
    assert value(s, "stackspace_operation_duration_seconds_bucket", le="5.0", **op) == 1
    assert value(s, "stackspace_operation_duration_seconds_bucket", le="900.0", **op) == 1
    for phase, seconds in (("config", 0.3), ("preview", 1.5), ("up", 2.1), ("total", 3.9)):
        assert value(s, "stackspace_operation_phase_duration_seconds_sum",
                     kind="stop", phase=phase) == seconds
    assert value(s, "stackspace_operation_phase_duration_seconds_count",
                 kind="stop", phase="destroy") is None


def test_gauges_count_the_store_at_scrape_time(tmp_path):
    store = Store(tmp_path / "s.db")
    metrics = Metrics(store)
    assert value(scrape(metrics), "stackspace_workspaces", state="provisioning") is None
    runtime = {"name": "local", "type": "docker"}
    for name in ("one", "two"):
        store.create_workspace("alice", name, f"alice-{name}", runtime, {"name": name}, {},
                               quota=10)
    store.update_workspace("alice", "two", state="running")
    s = scrape(metrics)
    assert value(s, "stackspace_workspaces", state="provisioning") == 1
    assert value(s, "stackspace_workspaces", state="running") == 1
    assert value(s, "stackspace_operations", status="queued") == 2


def test_each_service_instance_counts_alone(tmp_path):
    a, b = Store(tmp_path / "a.db"), Store(tmp_path / "b.db")
    assert metrics_for(a) is metrics_for(a)
    metrics_for(a).observe_request("GET", "/healthz", 200, 0.01)
    metrics_for(a).observe_request("GET", "/healthz", 200, 0.01)
    metrics_for(b).observe_request("GET", "/healthz", 200, 0.01)
    route = {"method": "GET", "route": "/healthz", "status": "200"}
    assert value(scrape(metrics_for(a)), "stackspace_http_requests_total", **route) == 2
    assert value(scrape(metrics_for(b)), "stackspace_http_requests_total", **route) == 1


def test_openmetrics_when_the_scraper_asks_for_it(tmp_path):
    metrics = Metrics(Store(tmp_path / "s.db"))
    metrics.observe_operation("create", "local", "failed", 1.0, {"total": 1.0})
    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")
