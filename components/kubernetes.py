"""The Kubernetes backend: one workspace as a PVC, an init Job and a Pod.

Storage (the PVC) is protected unless the delete path asked otherwise, and the
fields whose change would make Kubernetes replace it are ignored, so no plan
other than delete's can lose the workspace's files.
"""

from __future__ import annotations

import hashlib
import json

import pulumi
import pulumi_kubernetes as k8s

from components.base import WorkspaceInputs, cpu_cores, memory_bytes
from components.init_script import INIT_SCRIPT, init_env, init_fingerprint
from components.runtime import KubernetesRuntime
from components.spec import WORKSPACE_GID, WORKSPACE_ROOT, WORKSPACE_UID

# Replacing a PVC loses its data: these changes are never applied in place.
PVC_IMMUTABLE = ["spec.storageClassName", "spec.accessModes", "spec.volumeName",
                 "spec.selector", "metadata.name", "metadata.namespace"]


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


def _pod_spec(runtime: KubernetesRuntime) -> dict:
    """Pod-level settings shared by the init Job and the workspace Pod."""
    spec: dict = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"fsGroup": WORKSPACE_GID, "runAsNonRoot": True},
    }
    if runtime.node_selector:
        spec["nodeSelector"] = dict(runtime.node_selector)
    return spec


class KubernetesWorkspace(pulumi.ComponentResource):
    pvc_name: pulumi.Output[str]
    pod_name: pulumi.Output[str] | None

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

        plain_env, secret_env = init_env(spec)
        secret = None
        if secret_env:
            secret = k8s.core.v1.Secret(
                "secrets",
                metadata=meta(f"{base}-secrets", "secrets"),
                type="Opaque",
                string_data=pulumi.Output.secret(secret_env),
                opts=popts,
            )

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

        volumes = [{"name": "home",
                    "persistentVolumeClaim": {"claimName": self.pvc.metadata.name}}]
        mounts = [{"name": "home", "mountPath": WORKSPACE_ROOT}]

        env = [{"name": k, "value": v} for k, v in plain_env.items()]
        if secret is not None:
            env += [{"name": k, "valueFrom": {"secretKeyRef": {
                "name": secret.metadata.name, "key": k}}} for k in sorted(secret_env)]
        # The Job's name carries the init fingerprint: start/stop leave it alone,
        # a changed repository/files spec runs a new init (which still skips the
        # clone once the marker exists).
        self.init_job = k8s.batch.v1.Job(
            "init",
            metadata=meta(f"{base}-init-{init_fingerprint(spec)}", "init"),
            spec={
                "backoffLimit": 0,
                "template": {
                    "metadata": {"labels": inputs.labels_with("init")},
                    "spec": {
                        **_pod_spec(runtime),
                        "restartPolicy": "Never",
                        "volumes": volumes,
                        "containers": [{
                            "name": "init",
                            "image": spec.image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["/bin/sh", "-c", INIT_SCRIPT],
                            "env": env,
                            "volumeMounts": mounts,
                            "securityContext": _security_context(),
                            "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
                        }],
                    },
                },
            },
            opts=pulumi.ResourceOptions.merge(popts, pulumi.ResourceOptions(
                custom_timeouts=pulumi.CustomTimeouts(create="10m"),
                depends_on=[secret] if secret is not None else [],
            )),
        )

        self.network_policy = k8s.networking.v1.NetworkPolicy(
            "deny-ingress",
            metadata=meta(f"{base}-deny-ingress", "network-policy"),
            spec={"podSelector": {"matchLabels": inputs.labels},
                  "policyTypes": ["Ingress"], "ingress": []},
            opts=popts,
        )

        self.pod = None
        if inputs.running:
            cpu = f"{int(cpu_cores(spec) * 1000)}m"
            memory = str(memory_bytes(spec))
            pod_spec = {
                **_pod_spec(runtime),
                "hostname": spec.name,
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 10,
                "volumes": volumes,
                "containers": [{
                    "name": "workspace",
                    "image": spec.image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": list(spec.command),
                    "workingDir": WORKSPACE_ROOT,
                    "env": [{"name": k, "value": v} for k, v in spec.env.items()],
                    "volumeMounts": mounts,
                    "securityContext": _security_context(),
                    "resources": {"requests": {"cpu": cpu, "memory": memory},
                                  "limits": {"cpu": cpu, "memory": memory}},
                }],
            }
            # The name carries a hash of the spec: a changed spec is a new Pod
            # (Pod specs are immutable), and the provider's dry-run of the
            # replacement never collides with the old Pod's name.
            shape = [spec.image, list(spec.command), spec.env, cpu, memory,
                     runtime.node_selector]
            digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()
            self.pod = k8s.core.v1.Pod(
                "workspace",
                metadata=meta(f"{base}-{digest[:6]}", "workspace"),
                spec=pod_spec,
                opts=pulumi.ResourceOptions.merge(popts, pulumi.ResourceOptions(
                    depends_on=[self.init_job],
                    # A Pod's spec is immutable in place: any change recreates it
                    # on the same storage. The old Pod goes first, so a
                    # ReadWriteOnce volume is free for the new one on any node.
                    replace_on_changes=["spec"],
                    delete_before_replace=True,
                    custom_timeouts=pulumi.CustomTimeouts(create="5m"),
                )),
            )

        self.pvc_name = self.pvc.metadata.name
        self.pod_name = self.pod.metadata.name if self.pod else None
        self.register_outputs({
            "namespace": ns,
            "storage": self.pvc_name,
            "pod": self.pod_name,
        })
