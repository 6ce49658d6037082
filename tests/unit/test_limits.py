"""Pure rules of the Docker limits: the runtime's pids_limit setting, when a
container's PidsLimit must be set, storage requests in bytes, the over rule,
which volumes of a /system/df answer are whose, and the storage gauges."""

from __future__ import annotations

import pytest

from components.runtime import DEFAULT_PIDS_LIMIT, parse_runtime
from components.spec import SpecError
from components.workload_start import needs_pids_update, never_started
from service.metrics import Metrics
from service.storage_usage import (
    StorageReport,
    StorageUsage,
    is_over,
    requested_bytes,
    volume_sizes,
)
from service.store import Store
from tests.unit.test_metrics import scrape, value

DOCKER = {"name": "local", "type": "docker", "host": "unix:///nonexistent.sock"}


def test_pids_limit_defaults_and_takes_a_runtime_value():
    assert parse_runtime(DOCKER).pids_limit == DEFAULT_PIDS_LIMIT == 1024
    assert parse_runtime({**DOCKER, "pids_limit": 64}).pids_limit == 64


@pytest.mark.parametrize("bad", [0, 15, -1, 4_194_305, "64", 64.0, True, None])
def test_a_bad_pids_limit_is_refused_naming_the_field(bad):
    with pytest.raises(SpecError) as e:
        parse_runtime({**DOCKER, "pids_limit": bad})
    assert list(e.value.errors) == ["runtime.pids_limit"]


def test_pids_limit_is_docker_only():
    with pytest.raises(SpecError) as e:
        parse_runtime({"name": "k", "type": "kubernetes", "pids_limit": 64})
    assert list(e.value.errors) == ["runtime.pids_limit"]


@pytest.mark.parametrize(("current", "expected"), [
    (None, True), (0, True), (-1, True), (100, True), (2048, True), (1024, False)])
def test_a_container_without_exactly_the_limit_is_updated(current, expected):
    assert needs_pids_update(current, 1024) is expected


@pytest.mark.parametrize(("state", "expected"), [
    ({"StartedAt": "0001-01-01T00:00:00Z", "Status": "created"}, True),
    ({"StartedAt": "2026-12-05T00:00:04.062115746Z", "Status": "exited"}, False),
    ({}, False)])
def test_a_container_never_started_is_told_from_a_stopped_one(state, expected):
    assert never_started({"State": state}) is expected


@pytest.mark.parametrize(("text", "size"), [
    ("1Gi", 2**30), ("2Mi", 2 * 2**20), ("10G", 10**10), ("1.5Gi", 3 * 2**29), ("512", 512)])
def test_storage_requests_in_bytes(text, size):
    assert requested_bytes(text) == size


@pytest.mark.parametrize(("used", "requested", "over"), [
    (None, 100, False), (0, 100, False), (100, 100, False), (101, 100, True)])
def test_over_only_past_the_request(used, requested, over):
    assert is_over(used, requested) is over
    assert StorageReport(requested, used).to_dict()["over"] is over


def test_volume_sizes_keeps_labelled_storage_volumes_only():
    def vol(labels, size):
        return {"Name": "v", "Labels": labels, "UsageData": {"Size": size, "RefCount": 1}}

    ws = {"stackspace.dev/owner": "alice", "stackspace.dev/workspace": "demo",
          "stackspace.dev/role": "storage"}
    df = {"Volumes": [
        vol({**ws, "stackspace.dev/installation": "abc"}, 5),
        vol(ws, 7),  # a legacy installation's (no id)
        vol({**ws, "stackspace.dev/workspace": "other", "stackspace.dev/role": "init"}, 9),
        vol({**ws, "stackspace.dev/workspace": "uncounted"}, -1),  # not computed
        vol(None, 11),  # someone else's volume
        {"Name": "bare"},
    ]}
    assert volume_sizes(df) == {("alice", "demo", "abc"): 5, ("alice", "demo", ""): 7}
    assert volume_sizes({"Volumes": None}) == {}


def test_storage_gauges_report_the_request_and_never_wait(tmp_path):
    store = Store(tmp_path / "s.db")
    metrics = Metrics(store)
    # The engine cannot be reached: the scrape answers at once, with nothing measured.
    metrics.report_storage(StorageUsage([parse_runtime(DOCKER)], max_age=3600))
    store.create_workspace("alice", "demo", "alice-demo", DOCKER,
                           {"name": "demo", "resources": {"storage": "2Gi"}}, {}, quota=10)
    s = scrape(metrics)
    labels = {"owner": "alice", "workspace": "demo", "runtime": "local"}
    assert value(s, "stackspace_workspace_storage_requested_bytes", **labels) == 2 * 2**30
    assert value(s, "stackspace_workspace_storage_used_bytes", **labels) is None
    assert value(s, "stackspace_workspace_storage_over", **labels) == 0
