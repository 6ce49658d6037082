"""stacks/guard.py: when a run's state proves its plan cannot touch storage,
so it may skip the guard's preview; every other state previews."""

from __future__ import annotations

import copy

import pytest

from components.runtime import DockerRuntime, KubernetesRuntime
from components.spec import WorkspaceSpec
from stacks.config import StackConfig
from stacks.guard import ATTEST_OUTPUT, attestation, preview_needed

STACK = "ws-alice-guard-unit-0123abcd"
KEY = b"passphrase"
VOLUME = "docker:index/volume:Volume"
PVC = "kubernetes:core/v1:PersistentVolumeClaim"


def config(running: bool = True, **spec: object) -> StackConfig:
    return StackConfig(owner="alice", spec=WorkspaceSpec.parse({"name": "guard-unit", **spec}),
                       runtime=DockerRuntime(name="local", host="unix:///x.sock"),
                       running=running)


def urn(type_: str, name: str, parent: str = "stackspace:docker:Workspace") -> str:
    chain = f"{parent}${type_}" if parent else type_
    return f"urn:pulumi:{STACK}::stackspace::{chain}::{name}"


def state(attest: str, storage_type: str = VOLUME, parent: str = "stackspace:docker:Workspace"
          ) -> dict:
    """A deployment as the last successful Docker run leaves it."""
    return {"resources": [
        {"type": "pulumi:pulumi:Stack", "urn": urn("pulumi:pulumi:Stack", "root", ""),
         "outputs": {"storage": "guard-unit-home", ATTEST_OUTPUT: attest}},
        {"type": parent, "urn": urn(parent, "guard-unit", "")},
        {"type": storage_type, "urn": urn(storage_type, "storage", parent), "protect": True},
        {"type": "docker:index/container:Container",
         "urn": urn("docker:index/container:Container", "workspace")},
    ]}


def test_start_and_stop_of_an_attested_state_skip_the_preview():
    attest = attestation(config(running=True), KEY)
    # `running` is not part of the attestation: stop and start share it.
    assert attestation(config(running=False), KEY) == attest
    assert preview_needed(state(attest), STACK, "docker", attest) is None


def test_a_new_or_empty_stack_needs_no_preview():
    assert preview_needed(None, STACK, "docker", "a") is None
    assert preview_needed({"resources": []}, STACK, "docker", "a") is None


@pytest.mark.parametrize("change", [
    {"image": "debian:12"},
    {"env": {"A": "1"}},
    {"resources": {"storage": "20Gi"}},
    {"secret_env": {"TOKEN": "s3cret"}},
])
def test_any_spec_change_previews(change):
    recorded = attestation(config(), KEY)
    changed = attestation(config(**change), KEY)
    assert changed != recorded
    assert preview_needed(state(recorded), STACK, "docker", changed) is not None


def test_a_runtime_change_previews():
    cfg = config()
    moved = StackConfig(owner=cfg.owner, spec=cfg.spec, running=True,
                        runtime=DockerRuntime(name="local", host="tcp://elsewhere:2376"))
    assert attestation(moved, KEY) != attestation(cfg, KEY)


def test_the_attestation_is_keyed():
    assert attestation(config(), KEY) != attestation(config(), b"other")


def test_operator_edits_to_storage_in_state_preview():
    attest = attestation(config(), KEY)
    unprotected = state(attest)
    unprotected["resources"][2]["protect"] = False
    renamed = state(attest)
    renamed["resources"][2]["urn"] = urn(VOLUME, "storage-was")
    extra = state(attest)
    extra["resources"].append({"type": VOLUME, "urn": urn(VOLUME, "old"), "protect": True})
    missing = state(attest)
    del missing["resources"][2]
    other_stack = state(attest)
    other_stack["resources"][2]["urn"] = urn(VOLUME, "storage").replace(STACK, "ws-other")
    for deployment in (unprotected, renamed, extra, missing, other_stack):
        assert preview_needed(deployment, STACK, "docker", attest) is not None


def test_pending_operations_or_a_missing_attestation_preview():
    attest = attestation(config(), KEY)
    pending = state(attest)
    pending["pending_operations"] = [{"type": "creating", "resource": {}}]
    assert preview_needed(pending, STACK, "docker", attest) is not None
    unattested = copy.deepcopy(state(attest))
    del unattested["resources"][0]["outputs"][ATTEST_OUTPUT]
    assert preview_needed(unattested, STACK, "docker", attest) is not None


def test_storage_of_the_other_backend_previews():
    attest = attestation(config(), KEY)
    k8s = state(attest, PVC, "stackspace:kubernetes:Workspace")
    assert preview_needed(k8s, STACK, "kubernetes", attest) is None
    assert preview_needed(k8s, STACK, "docker", attest) is not None


def test_kubeconfig_content_is_attested(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("cluster: a\n")
    cfg = StackConfig(owner="alice", spec=WorkspaceSpec.parse({"name": "guard-unit"}),
                      runtime=KubernetesRuntime(name="kube", kubeconfig=str(kubeconfig)),
                      running=True)
    before = attestation(cfg, KEY)
    kubeconfig.write_text("cluster: b\n")
    assert attestation(cfg, KEY) != before
