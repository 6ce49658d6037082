"""GET /metrics and event timestamps over HTTP: what a scraper and an SSE
client see for operations that ran (the real engine for the histograms)."""

from __future__ import annotations

import json
import secrets
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_api_lifecycle import wait_op


def scrape(svc) -> dict[str, list]:
    r = svc.call("GET", "/metrics", None)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float | None:
    hits = [s.value for s in samples.get(name, [])
            if all(s.labels.get(k) == v for k, v in labels.items())]
    return hits[0] if hits else None


def sse_events(svc, token: str, op_id: str) -> list[dict]:
    """The data of every event of an ended operation's stream."""
    body = svc.call("GET", f"/api/v1/operations/{op_id}/events", token, stream=True).text
    return [json.loads(line[len("data: "):]) for line in body.splitlines()
            if line.startswith("data: ")]


def test_metrics_count_requests_and_the_store_and_events_carry_their_time(idle_service):
    """No engine: requests, the store's gauges and a cancelled operation's end event."""
    svc = idle_service
    assert svc.call("GET", "/api/v1/workspaces", "wrong").status_code == 401
    r = svc.call("POST", "/api/v1/workspaces", svc.alice, json={"name": "metered"})
    assert r.status_code == 202
    s = scrape(svc)
    assert value(s, "stackspace_http_requests_total", method="GET",
                 route="/api/v1/workspaces", status="401") == 1
    assert value(s, "stackspace_http_requests_total", method="POST",
                 route="/api/v1/workspaces", status="202") == 1
    assert value(s, "stackspace_http_request_duration_seconds_count", method="POST",
                 route="/api/v1/workspaces") == 1
    assert value(s, "stackspace_workspaces", state="provisioning") == 1
    assert value(s, "stackspace_operations", status="queued") == 1
    assert "stackspace_operation_duration_seconds_count" not in s  # nothing has run

    op_id = r.json()["id"]
    assert svc.call("POST", f"/api/v1/operations/{op_id}/cancel", svc.alice).status_code == 202
    events = sse_events(svc, svc.alice, op_id)
    assert events[-1]["type"] == "end" and events[-1]["status"] == "cancelled"
    op = svc.call("GET", f"/api/v1/operations/{op_id}", svc.alice).json()
    assert op["created"] <= events[-1]["at"] <= time.time()
    s = scrape(svc)
    assert value(s, "stackspace_operations", status="cancelled") == 1
    assert value(s, "stackspace_operations", status="queued") is None


@pytest.mark.e2e
def test_operations_on_the_engine_fill_the_histograms_and_stamp_events(service):
    svc = service
    name = f"metrics-{secrets.token_hex(3)}"
    ops = {"create": wait_op(svc, svc.alice, svc.call(
        "POST", "/api/v1/workspaces", svc.alice, json={"name": name}).json()["id"])}
    for kind, method, suffix in (("stop", "POST", "/stop"), ("start", "POST", "/start"),
                                 ("delete", "DELETE", "")):
        ops[kind] = wait_op(svc, svc.alice, svc.call(
            method, f"/api/v1/workspaces/{name}{suffix}", svc.alice).json()["id"])
    assert {k: o["status"] for k, o in ops.items()} == dict.fromkeys(ops, "succeeded")

    s = scrape(svc)
    for kind, op in ops.items():
        labels = {"kind": kind, "runtime": "local", "result": "succeeded"}
        assert value(s, "stackspace_operation_duration_seconds_count", **labels) == 1, kind
        # The phases an operation reports are the phases the histogram holds.
        assert op["timings"], kind
        for phase, seconds in op["timings"].items():
            assert value(s, "stackspace_operation_phase_duration_seconds_sum", kind=kind,
                         phase=phase) == pytest.approx(seconds), (kind, phase)
    assert value(s, "stackspace_operation_phase_duration_seconds_count", kind="stop",
                 phase="preview") == 1
    assert value(s, "stackspace_operation_phase_duration_seconds_count", kind="delete",
                 phase="destroy") == 1

    events = sse_events(svc, svc.alice, ops["create"]["id"])
    assert any(e["type"] == "resource" for e in events) and events[-1]["type"] == "end"
    stamps = [e["at"] for e in events]
    assert stamps == sorted(stamps)
    assert ops["create"]["started"] <= stamps[0] and stamps[-1] <= time.time()
    assert stamps[-1] >= ops["create"]["ended"]
