"""The installation id in names, stack config, labels and selectors: two
installations on one runtime get distinct names and never select each other's
objects; the empty (legacy) id changes nothing that existed before."""

from __future__ import annotations

import hashlib
import re

import pytest

from components.base import (
    WorkspaceInputs,
    label_filters,
    label_selector,
    same_installation,
    workspace_labels,
)
from components.runtime import DockerRuntime
from components.spec import WorkspaceSpec
from proxy.backends import KubernetesExec, workspace_selector
from stacks.config import KEY_INSTALLATION, StackConfig
from stacks.naming import resource_base

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DOCKER = DockerRuntime(name="local", host="unix:///run/test-docker.sock")
# What the runtime objects of a workspace were named and labelled before ids existed.
LEGACY_KEYS = {"owner", "spec", "secrets", "running", "deleting", "runtime"}


def test_legacy_names_are_exactly_the_old_ones():
    old_hash = hashlib.sha256(b"alice/app").hexdigest()[:8]
    assert resource_base("alice", "app") == resource_base("alice", "app", "") == f"app-{old_hash}"


@pytest.mark.parametrize("owner,name", [("alice", "app"), ("o" * 40, "n" * 40), ("a", "b")])
def test_names_differ_per_installation_and_stay_valid(owner, name):
    legacy = resource_base(owner, name)
    a = resource_base(owner, name, "0a1b2c3d")
    b = resource_base(owner, name, "d3c2b1a0")
    assert len({legacy, a, b}) == 3
    assert a == resource_base(owner, name, "0a1b2c3d")  # stable
    for base in (a, b):
        assert DNS1123.match(base) and len(base) == len(legacy) <= 49
        # the longest derived name (the init Job/container) fits a label value
        assert len(f"{base}-init-{'f' * 8}") <= 63
        assert base.startswith(f"{name}-")


def test_installation_cannot_pose_as_another_pair():
    # '<id>:<owner>/<name>' never reads as a legacy pair or another id's pair.
    assert resource_base("b", "c", "a") != resource_base("a", "c", "b")
    assert resource_base("alice", "app", "abc") != resource_base("abc", "app")


@pytest.mark.parametrize("bad", ["UPPER", "with-dash", "x" * 17, "a:b", "a/b", " "])
def test_bad_installation_ids_are_refused_naming_the_key(bad):
    with pytest.raises(ValueError, match="stackspace:installation"):
        StackConfig(owner="alice", spec=WorkspaceSpec.parse({"name": "app"}),
                    runtime=DOCKER, running=True, installation=bad)
    with pytest.raises(ValueError, match="installation"):
        resource_base("alice", "app", bad)


def _round_trip(cfg: StackConfig) -> StackConfig:
    values = {k: v for k, (v, _secret) in cfg.to_config().items()}
    return StackConfig.from_values(values.get)


def test_stack_config_carries_the_id_only_when_there_is_one():
    spec = WorkspaceSpec.parse({"name": "app"})
    legacy = StackConfig(owner="alice", spec=spec, runtime=DOCKER, running=True)
    assert set(legacy.to_config()) == LEGACY_KEYS  # byte-identical legacy stack config
    assert _round_trip(legacy) == legacy and _round_trip(legacy).installation == ""

    new = StackConfig(owner="alice", spec=spec, runtime=DOCKER, running=True,
                      installation="0a1b2c3d")
    values = new.to_config()
    assert values[KEY_INSTALLATION] == ("0a1b2c3d", False)
    assert {k: v for k, v in values.items() if k != KEY_INSTALLATION} == legacy.to_config()
    assert _round_trip(new) == new


def test_labels_and_selectors_include_the_id_only_when_there_is_one():
    spec = WorkspaceSpec.parse({"name": "app"})
    legacy = WorkspaceInputs(owner="alice", spec=spec, running=True)
    assert legacy.labels == {"stackspace.dev/workspace": "app", "stackspace.dev/owner": "alice"}
    new = WorkspaceInputs(owner="alice", spec=spec, running=True, installation="0a1b2c3d")
    assert new.labels == {**legacy.labels, "stackspace.dev/installation": "0a1b2c3d"}
    assert new.labels_with("storage")["stackspace.dev/installation"] == "0a1b2c3d"

    labels = workspace_labels("alice", "app", "0a1b2c3d")
    assert label_selector(labels) == ("stackspace.dev/workspace=app,stackspace.dev/owner=alice,"
                                      "stackspace.dev/installation=0a1b2c3d")
    assert "stackspace.dev/installation=0a1b2c3d" in label_filters(labels)
    assert workspace_labels("alice", "app", "") == legacy.labels
    # Docker cannot filter on a label's absence: a legacy lookup drops what
    # an installation with an id made, after the filter.
    old = workspace_labels("alice", "app", "")
    assert same_installation(old, legacy.labels)
    assert not same_installation(old, labels)
    assert same_installation(labels, labels)


def _matches(selector: str, labels: dict[str, str]) -> bool:
    """Kubernetes' meaning of the `k=v` and `!k` terms the selectors use."""
    terms = selector.split(",")
    absent = [t[1:] for t in terms if t.startswith("!")]
    equal = [t.split("=", 1) for t in terms if not t.startswith("!")]
    return all(labels.get(k) == v for k, v in equal) and not any(k in labels for k in absent)


def test_proxy_selects_only_its_own_installations_pod():
    ours = {**workspace_labels("alice", "dev", "0a1b2c3d"), "stackspace.dev/role": "workspace"}
    theirs = {**workspace_labels("alice", "dev", "d3c2b1a0"), "stackspace.dev/role": "workspace"}
    legacy = {**workspace_labels("alice", "dev", ""), "stackspace.dev/role": "workspace"}
    selector = workspace_selector("alice", "dev", "0a1b2c3d")
    assert _matches(selector, ours)
    assert not _matches(selector, theirs) and not _matches(selector, legacy)
    # A legacy ticket finds the legacy pod, never one of an installation with an id.
    old = workspace_selector("alice", "dev", "")
    assert _matches(old, legacy) and not _matches(old, ours)


def test_the_signed_ticket_target_carries_the_id_to_the_kubernetes_exec():
    from components.runtime import KubernetesRuntime
    from proxy.backends import ExecRequest
    from service.terminals import Terminals

    kube = KubernetesRuntime(name="cluster", kubeconfig="/tmp/kubeconfig", namespace="ws")
    terminals = Terminals(b"k" * 32, "ws://127.0.0.1:1", [kube])
    ws = {"runtime": "cluster", "owner": "alice", "name": "dev", "installation": "0a1b2c3d"}
    target = terminals.target(ws)
    assert target["installation"] == "0a1b2c3d"
    proc = KubernetesExec(kube, target, ExecRequest(["true"], tty=False))
    assert proc.installation == "0a1b2c3d"
    # A legacy workspace (and a ticket minted before ids existed) selects as before.
    legacy = terminals.target({**ws, "installation": ""})
    assert KubernetesExec(kube, legacy, ExecRequest(["true"], tty=False)).installation == ""
    old_ticket = {k: v for k, v in target.items() if k != "installation"}
    assert KubernetesExec(kube, old_ticket, ExecRequest(["true"], tty=False)).installation == ""


def test_the_runner_builds_each_workspace_with_the_id_it_was_created_under(tmp_path):
    """A new workspace's run carries the store's id; one made before ids
    existed (NULL) runs with "" and so with exactly its old stack config."""
    from service.runner import OperationRunner
    from service.store import Store
    from stacks.automation import PulumiSettings

    runtime = {"name": "local", "type": "docker", "host": "unix:///run/test-docker.sock"}
    store = Store(tmp_path / "stackspace.db")
    created, _ = store.create_workspace("alice", "new", "ws-alice-new", runtime,
                                        {"name": "new"}, {}, quota=5)
    store.db.execute(
        "INSERT INTO workspaces(owner, name, stack, runtime, spec, runtime_config, desired,"
        " state, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?)",
        ("alice", "old", "ws-alice-old", "local", '{"name": "old"}',
         '{"name": "local", "type": "docker", "host": "unix:///run/test-docker.sock"}',
         "stopped", "stopped", 1.0, 1.0))
    started, _ = store.request_operation("alice", "old", "start", queue=True)
    runner = OperationRunner(store, PulumiSettings(backend_url=f"file://{tmp_path}",
                                                   passphrase="x", pulumi_home=tmp_path))
    new = runner._job(created, store.workspace("alice", "new")).config
    assert new.installation == store.installation_id != ""
    old = runner._job(started, store.workspace("alice", "old")).config
    assert old.installation == "" and set(old.to_config()) == LEGACY_KEYS
    store.close()
