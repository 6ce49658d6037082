"""The Kubernetes backend: one workspace as a PVC, an init Job and a
Deployment of one pod.

Storage (the PVC) is protected unless the delete path asked otherwise, and the
fields whose change would make Kubernetes replace it are ignored, so no plan
other than delete's can lose the workspace's files. The Deployment brings a
deleted or evicted pod back on the same storage without any stackspace call.
Secrets reach pods only through Secret objects (mounted or secretKeyRef):
nothing secret is written into a Job or pod spec.
"""

from __future__ import annotations

import base64
import json
import socket

import pulumi
import pulumi_kubernetes as k8s

from components.base import WorkspaceInputs, cpu_cores, memory_bytes
from components.egress import FIELD as EGRESS_FIELD
from components.egress import EgressRule, network_policy_egress, parse_allowlist
from components.init_script import INIT_SCRIPT, init_fingerprint, init_inputs
from components.runtime import KubernetesRuntime
from components.spec import (
    WORKSPACE_GID,
    WORKSPACE_ROOT,
    WORKSPACE_UID,
    SpecError,
    WorkspaceSpec,
    registry_host,
)

# Where the init Job mounts its input Secret (file contents, credential). The
# spec's config budget (components/spec.py) keeps it far below the 1 MiB cap.
INIT_INPUT_DIR = "/var/run/stackspace-init"

# Replacing a PVC loses its data: these changes are never applied in place.
PVC_IMMUTABLE = ["spec.storageClassName", "spec.accessModes", "spec.volumeName",
                 "spec.selector", "metadata.name", "metadata.namespace"]


def resolve_names(rules: tuple[EgressRule, ...]) -> dict[str, list[str]]:
    """The addresses of the allowlist's host names, as this program's host
    resolves them at each deploy (a NetworkPolicy takes addresses only)."""
    found: dict[str, list[str]] = {}
    for rule in rules:
        if rule.is_name and rule.host not in found:
            try:
                infos = socket.getaddrinfo(rule.host, None, proto=socket.IPPROTO_TCP)
            except OSError as e:
                raise SpecError({EGRESS_FIELD: f"cannot resolve {rule.host}: {e}"}) from None
            found[rule.host] = sorted({str(info[4][0]) for info in infos})
    return found


def _security_context() -> dict:
    return {
        "runAsNonRoot": True,
        "runAsUser": WORKSPACE_UID,
        "runAsGroup": WORKSPACE_GID,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_spec(runtime: KubernetesRuntime, pull_secret: k8s.core.v1.Secret | None) -> dict:
    """Pod-level settings shared by the init Job and the workspace pod."""
    spec: dict = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"fsGroup": WORKSPACE_GID, "runAsNonRoot": True},
    }
    if runtime.node_selector:
        spec["nodeSelector"] = dict(runtime.node_selector)
    if pull_secret is not None:
        spec["imagePullSecrets"] = [{"name": pull_secret.metadata.name}]
    return spec


def dockerconfigjson(spec: WorkspaceSpec) -> str:
    """`.dockerconfigjson` of an imagePullSecret for the spec's image registry."""
    creds = spec.image_credentials
    assert creds is not None
    host = registry_host(spec.image)
    if host == "docker.io":
        host = "https://index.docker.io/v1/"
    auth = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    return json.dumps({"auths": {host: {"username": creds.username, "password": creds.password,
                                        "auth": auth}}}, sort_keys=True)


class KubernetesWorkspace(pulumi.ComponentResource):
    pvc_name: pulumi.Output[str]
    deployment_name: pulumi.Output[str] | None

    def __init__(self, name: str, inputs: WorkspaceInputs, runtime: KubernetesRuntime,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("stackspace:kubernetes:Workspace", name, None, opts)
        spec = inputs.spec
        base = inputs.base_name
        ns = runtime.namespace
        child = pulumi.ResourceOptions(parent=self)

        provider = k8s.Provider(
            "k8s",
            kubeconfig=runtime.kubeconfig,
            context=runtime.context,
            namespace=ns,
            # A renamed kubeconfig context must not replace every resource.
            cluster_identifier=runtime.name,
            opts=child,
        )
        popts = pulumi.ResourceOptions(parent=self, provider=provider)

        def meta(obj_name: str, role: str) -> dict:
            return {"name": obj_name, "namespace": ns, "labels": inputs.labels_with(role)}

        def secret(res_name: str, obj_name: str, data: dict[str, str],
                   kind: str = "Opaque") -> k8s.core.v1.Secret:
            return k8s.core.v1.Secret(
                res_name, metadata=meta(obj_name, "secrets"), type=kind,
                string_data=pulumi.Output.secret(data), opts=popts)

        pull_secret = None
        if spec.image_credentials is not None:
            pull_secret = secret("image-pull", f"{base}-pull",
                                 {".dockerconfigjson": dockerconfigjson(spec)},
                                 "kubernetes.io/dockerconfigjson")

        # Init's inputs (file contents, credential) as a Secret mounted into
        # the Job: no content in its env (the 128 KiB env-string cap), no
        # secret in its spec.
        init = init_inputs(spec, f"{INIT_INPUT_DIR}/", remove_inputs=False)
        input_secret = (secret("init-input", f"{base}-input", init.files)
                        if init.files else None)

        env_secret = None
        if spec.secret_env:
            env_secret = secret("env", f"{base}-env", dict(spec.secret_env))

        storage_class = runtime.storage_class
        self.pvc = k8s.core.v1.PersistentVolumeClaim(
            "storage",
            metadata=meta(f"{base}-home", "storage"),
            spec={
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": spec.resources.storage}},
                **({"storageClassName": storage_class} if storage_class else {}),
            },
            opts=pulumi.ResourceOptions.merge(popts, pulumi.ResourceOptions(
                protect=not inputs.deleting,
                ignore_changes=PVC_IMMUTABLE,
            )),
        )

        home = {"name": "home", "persistentVolumeClaim": {"claimName": self.pvc.metadata.name}}
        mounts = [{"name": "home", "mountPath": WORKSPACE_ROOT}]
        init_volumes = [home]
        init_mounts = list(mounts)
        if input_secret is not None:
            init_volumes.append({"name": "init-input", "secret": {
                "secretName": input_secret.metadata.name, "defaultMode": 0o440}})
            init_mounts.append({"name": "init-input", "mountPath": INIT_INPUT_DIR,
                                "readOnly": True})

        # The Job's name carries the init fingerprint (repository + file
        # entries): start/stop and image/env/command updates leave it alone; a
        # changed `files` entry runs a new init, which writes only that entry.
        self.init_job = k8s.batch.v1.Job(
            "init",
            metadata=meta(f"{base}-init-{init_fingerprint(spec)}", "init"),
            spec={
                "backoffLimit": 0,
                "template": {
                    "metadata": {"labels": inputs.labels_with("init")},
                    "spec": {
                        **_pod_spec(runtime, pull_secret),
                        "restartPolicy": "Never",
                        "volumes": init_volumes,
                        "containers": [{
                            "name": "init",
                            "image": spec.image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["/bin/sh", "-c", INIT_SCRIPT],
                            "env": [{"name": k, "value": v} for k, v in init.env.items()],
                            "volumeMounts": init_mounts,
                            "securityContext": _security_context(),
                            "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
                        }],
                    },
                },
            },
            opts=pulumi.ResourceOptions.merge(popts, pulumi.ResourceOptions(
                custom_timeouts=pulumi.CustomTimeouts(create="10m"),
                depends_on=[r for r in (input_secret, pull_secret) if r is not None],
                # A failed init run again (stacks.init_retry) keeps its name:
                # made first, it would be applied onto the failed Job and
                # awaited as failed again.
                delete_before_replace=True,
                # An image update is not an init change: no new init run. A
                # failed init made again takes today's image (perhaps the fix).
                ignore_changes=[] if inputs.retry_init
                else ["spec.template.spec.containers[0].image"],
            )),
        )

        self.initialized = self.init_job.status.apply(
            lambda status: bool(status and (status.succeeded or 0) > 0))

        policy: dict = {"podSelector": {"matchLabels": inputs.labels},
                        "policyTypes": ["Ingress"], "ingress": []}
        if runtime.egress_allow is not None:
            # The outbound allowlist (components.egress): egress too, for the
            # workspace's pods and its init Job's (the name is kept: no replacement).
            rules = parse_allowlist(list(runtime.egress_allow))
            policy["policyTypes"] = ["Ingress", "Egress"]
            policy["egress"] = network_policy_egress(rules, resolve_names(rules))
        self.network_policy = k8s.networking.v1.NetworkPolicy(
            "deny-ingress",
            metadata=meta(f"{base}-deny-ingress", "network-policy"),
            spec=policy,
            opts=popts,
        )

        self.deployment = None
        if inputs.running:
            cpu = f"{int(cpu_cores(spec) * 1000)}m"
            memory = str(memory_bytes(spec))
            env: list = [{"name": k, "value": v} for k, v in spec.env.items()]
            if env_secret is not None:
                env += [{"name": k, "valueFrom": {"secretKeyRef": {
                    "name": env_secret.metadata.name, "key": k}}} for k in sorted(spec.secret_env)]
            pod_spec = {
                **_pod_spec(runtime, pull_secret),
                "hostname": spec.name,
                "restartPolicy": "Always",
                # The pause container becomes PID 1 and the workspace command
                # an ordinary process: SIGTERM stops `sleep` at once instead of
                # being ignored by a PID 1 until the grace period runs out.
                "shareProcessNamespace": True,
                "terminationGracePeriodSeconds": 10,
                "volumes": [home],
                "containers": [{
                    "name": "workspace",
                    "image": spec.image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": list(spec.command),
                    "workingDir": WORKSPACE_ROOT,
                    "env": env,
                    "volumeMounts": mounts,
                    "securityContext": _security_context(),
                    "resources": {"requests": {"cpu": cpu, "memory": memory},
                                  "limits": {"cpu": cpu, "memory": memory}},
                }],
            }
            selector = inputs.labels_with("workspace")
            # One pod, brought back by Kubernetes if it is deleted or evicted.
            # Recreate: the old pod releases the ReadWriteOnce volume before a
            # new one (after an update) mounts it.
            self.deployment = k8s.apps.v1.Deployment(
                "workspace",
                metadata=meta(base, "workspace"),
                spec={
                    "replicas": 1,
                    "strategy": {"type": "Recreate"},
                    "selector": {"matchLabels": selector},
                    "template": {"metadata": {"labels": selector}, "spec": pod_spec},
                },
                opts=pulumi.ResourceOptions.merge(popts, pulumi.ResourceOptions(
                    depends_on=[self.init_job, *([env_secret] if env_secret else [])],
                    custom_timeouts=pulumi.CustomTimeouts(create="5m", update="5m"),
                )),
            )

        self.pvc_name = self.pvc.metadata.name
        self.deployment_name = self.deployment.metadata.name if self.deployment else None
        self.register_outputs({
            "namespace": ns,
            "storage": self.pvc_name,
            "deployment": self.deployment_name,
        })
