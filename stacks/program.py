"""The Pulumi program: one stack's `stackspace:*` config -> one workspace.

Run by the Pulumi CLI through the Python language host (Pulumi.yaml points
here), whether the service drives it with the Automation API or an operator
runs `pulumi preview --stack <ws>` by hand.
"""

from __future__ import annotations

import os

import pulumi

from components.base import WorkspaceInputs
from components.docker import DockerWorkspace
from components.kubernetes import KubernetesWorkspace
from components.runtime import DockerRuntime
from stacks import code_version
from stacks.config import NAMESPACE, StackConfig
from stacks.guard import ATTEST_OUTPUT, attestation
from stacks.naming import resource_base


def build(cfg: StackConfig, attest: str | None = None,
          retry_init: bool = False) -> pulumi.ComponentResource:
    """Declare the workspace's components for the given config. `attest`
    (stacks.guard): recorded as a stack output once the engine accepted the
    storage resource. `retry_init`: the run makes a failed init step again
    (stacks.init_retry)."""
    inputs = WorkspaceInputs(
        owner=cfg.owner,
        spec=cfg.spec,
        running=cfg.running and not cfg.deleting,
        deleting=cfg.deleting,
        base_name=resource_base(cfg.owner, cfg.spec.name, cfg.installation),
        installation=cfg.installation,
        retry_init=retry_init,
    )
    if isinstance(cfg.runtime, DockerRuntime):
        ws: pulumi.ComponentResource = DockerWorkspace(cfg.spec.name, inputs, cfg.runtime)
        pulumi.export("storage", ws.volume.name)
        pulumi.export("container", ws.container.name if ws.container else None)
    else:
        ws = KubernetesWorkspace(cfg.spec.name, inputs, cfg.runtime)
        pulumi.export("storage", ws.pvc_name)
        pulumi.export("namespace", cfg.runtime.namespace)
        # The pod's name changes whenever the Deployment replaces it: clients
        # find it by the labels stackspace.dev/{workspace,owner,role=workspace}
        # (and stackspace.dev/installation when the installation has an id).
        pulumi.export("deployment", ws.deployment_name)
    # Whether init has run to its end (the repository cloned): until then the
    # API lets the user correct `repository`.
    pulumi.export("initialized", ws.initialized)
    pulumi.export("runtime", cfg.runtime.name)
    pulumi.export("running", inputs.running)
    # Which component code this run applied (the API's code_version, outdated).
    pulumi.export(code_version.OUTPUT, code_version.current())
    if attest is not None:
        storage = ws.volume if isinstance(ws, DockerWorkspace) else ws.pvc
        pulumi.export(ATTEST_OUTPUT, storage.id.apply(lambda _: attest))
    return ws


def main() -> None:
    config = pulumi.Config(NAMESPACE)
    cfg = StackConfig.from_values(config.get)
    # The same attestation the service's runs record, so an operator's preview
    # of an unchanged stack shows no change at all.
    passphrase = os.environ.get("PULUMI_CONFIG_PASSPHRASE")
    build(cfg, attestation(cfg, passphrase.encode()) if passphrase else None)
