"""stackspace in a Kubernetes cluster: what `stackspace install` creates.

In the install namespace: the service's data volume when it keeps local
state (a protected PersistentVolumeClaim: `uninstall` keeps it unless asked),
the service Deployment and the exec proxy Deployment
(separate, each with its Service and ServiceAccount), the Secret holding the
shared secrets (mounted as the service's `secrets_dir`) and the database and
backend URLs (environment from the Secret), and the service's config file. In
the workspace namespace: a Role per ServiceAccount and its RoleBinding: the
only rights either gets (deploy/rbac.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json

import pulumi
import pulumi_kubernetes as k8s
import rbac
from settings import Settings, load

from components.kubernetes import PVC_IMMUTABLE

APP = "stackspace"
UID = 10001  # the image's service user (images/stackspace/recipe.sh)
CONFIG_DIR = "/etc/stackspace"
SECRETS_DIR = "/var/run/stackspace/secrets"
DATA_DIR = "/var/lib/stackspace"
SHARED_SECRET_FILES = ["passphrase", "ticket-key", "store.key"]
DATA_CLAIM = "stackspace-data"


def labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/part-of": APP,
            "app.kubernetes.io/component": component}


def service_config(s: Settings) -> str:
    """The service's config file (the runtime is this cluster, reached in-cluster)."""
    runtime: dict[str, object] = {"name": "cluster", "type": "kubernetes",
                                  "namespace": s.workspace_namespace}
    if s.storage_class:
        runtime["storage_class"] = s.storage_class
    return json.dumps({
        "data_dir": DATA_DIR,
        "secrets_dir": SECRETS_DIR,
        "listen": f"{s.listen_host}:{s.service_port}",
        "proxy_listen": f"{s.listen_host}:{s.proxy_port}",
        "proxy_url": s.proxy_url,
        "proxy_internal_url": s.proxy_internal_url,
        "runtimes": [runtime],
    }, indent=2, sort_keys=True)


def pod_spec(s: Settings, account: str, container: dict, volumes: list[dict]) -> dict:
    spec: dict = {
        "serviceAccountName": account,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                            "fsGroup": UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "image": s.image,
            "imagePullPolicy": "IfNotPresent",
            "securityContext": {"allowPrivilegeEscalation": False, "privileged": False,
                                "capabilities": {"drop": ["ALL"]}},
            **container,
        }],
        "volumes": volumes,
    }
    if s.host_network:
        spec["hostNetwork"] = True
        spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    return spec


def api_server_env(s: Settings) -> list[dict]:
    """In-cluster clients find the API server here (a cluster whose API server
    listens on the node's loopback only, with pods on the node's network)."""
    if not s.api_server:
        return []
    host, _, port = s.api_server.rpartition(":")
    return [{"name": "KUBERNETES_SERVICE_HOST", "value": host},
            {"name": "KUBERNETES_SERVICE_PORT", "value": port}]


def probe(s: Settings, check: dict) -> dict:
    """A readiness probe; on the node's network the servers listen on loopback."""
    if s.host_network:
        for handler in check.values():
            handler["host"] = "127.0.0.1"
    return {**check, "periodSeconds": 2}


def secret_env(name: str, secret: str, key: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def secret_volume(secret_name: pulumi.Input[str], keys: list[str]) -> dict:
    """The Secret's files, readable by the service user (fsGroup) and nobody else."""
    return {"name": "secrets", "secret": {"secretName": secret_name, "defaultMode": 0o440,
                                          "items": [{"key": k, "path": k} for k in keys]}}


def database_env(s: Settings, secret_name: pulumi.Input[str]) -> list[dict]:
    if s.database_url is None:
        return []
    return [secret_env("STACKSPACE_DATABASE_URL", secret_name, "database-url")]


def data_volume(s: Settings, opts: pulumi.ResourceOptions) -> dict:
    """The service's data dir: a PersistentVolumeClaim when it keeps local state
    (one replica: the install refuses more), scratch space otherwise."""
    if not s.keeps_local_state:
        return {"name": "data", "emptyDir": {}}
    claim = k8s.core.v1.PersistentVolumeClaim(
        "data",
        metadata={"name": DATA_CLAIM, "namespace": s.namespace, "labels": labels("data")},
        spec={"accessModes": ["ReadWriteOnce"],
              "resources": {"requests": {"storage": s.data_size}},
              **({"storageClassName": s.data_storage_class} if s.data_storage_class else {})},
        # Like a workspace's storage: never replaced nor deleted by an update;
        # only `uninstall --delete-data` lifts the protection.
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
            protect=True, ignore_changes=PVC_IMMUTABLE)))
    return {"name": "data", "persistentVolumeClaim": {"claimName": claim.metadata.name}}


def service_pod(s: Settings, account: pulumi.Input[str], secret_name: pulumi.Input[str],
                config_volume: dict, data: dict) -> dict:
    """`stackspace serve`: the API and the runner, with the shared secrets as files."""
    env = [secret_env("STACKSPACE_ADMIN_TOKEN", secret_name, "admin-token"),
           *api_server_env(s), *database_env(s, secret_name)]
    if s.backend_url is not None:
        env.append(secret_env("PULUMI_BACKEND_URL", secret_name, "backend-url"))
    pod = pod_spec(s, account, {
        "name": "service",
        "args": ["serve", "--config", f"{CONFIG_DIR}/config.json"],
        "env": env,
        "ports": [{"name": "http", "containerPort": s.service_port}],
        "readinessProbe": probe(s, {"httpGet": {"path": "/healthz", "port": s.service_port}}),
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True},
                         {"name": "data", "mountPath": DATA_DIR}],
    }, [config_volume, secret_volume(secret_name, SHARED_SECRET_FILES), data])
    # The data volume's files are the service's already: no recursive chown of
    # the whole state at each start.
    pod["securityContext"]["fsGroupChangePolicy"] = "OnRootMismatch"
    return pod


def proxy_pod(s: Settings, account: pulumi.Input[str], secret_name: pulumi.Input[str],
              config_volume: dict) -> dict:
    """`stackspace proxy`: of the shared files it needs the ticket key alone; the
    database (when there is one) records redeemed tickets across proxies."""
    return pod_spec(s, account, {
        "name": "proxy",
        "args": ["proxy", "--config", f"{CONFIG_DIR}/config.json", "--api", s.service_address],
        "env": [*api_server_env(s), *database_env(s, secret_name)],
        "ports": [{"name": "ws", "containerPort": s.proxy_port}],
        "readinessProbe": probe(s, {"tcpSocket": {"port": s.proxy_port}}),
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True}],
    }, [config_volume, secret_volume(secret_name, ["ticket-key"])])


def deploy(s: Settings) -> None:
    provider = k8s.Provider(
        "k8s", kubeconfig=s.kubeconfig, context=s.context,
        render_yaml_to_directory=s.render_dir,
        # The same cluster under a renamed context must not replace everything.
        cluster_identifier="stackspace-install")

    namespaces: list[pulumi.Resource] = []
    if s.create_namespaces:
        # Protected with the data volume: deleting the namespace would delete its
        # claim, and both stay in the install's state for a later install to adopt.
        namespaces.append(k8s.core.v1.Namespace(
            "namespace", metadata={"name": s.namespace, "labels": labels("install")},
            opts=pulumi.ResourceOptions(provider=provider, protect=s.keeps_local_state)))
        # Users' workspaces live here: uninstall never deletes it (nor them), and
        # leaves it unlabelled, like a namespace the operator had made. While the
        # data is kept it stays in the state too: a later install adopts it.
        namespaces.append(k8s.core.v1.Namespace(
            "workspace-namespace", metadata={"name": s.workspace_namespace},
            opts=pulumi.ResourceOptions(provider=provider, retain_on_delete=True,
                                        protect=s.keeps_local_state)))
    in_ns = pulumi.ResourceOptions(provider=provider, depends_on=namespaces)

    def meta(name: str, component: str, namespace: str | None = None) -> dict:
        return {"name": name, "namespace": namespace or s.namespace,
                "labels": labels(component)}

    secret_data: dict[str, pulumi.Input[str]] = {
        "passphrase": s.passphrase, "ticket-key": s.ticket_key, "store.key": s.store_key,
        "admin-token": s.admin_token}
    if s.database_url is not None:
        secret_data["database-url"] = s.database_url
    if s.backend_url is not None:
        secret_data["backend-url"] = s.backend_url
    secret = k8s.core.v1.Secret(
        "secrets", metadata=meta("stackspace-secrets", "secrets"), type="Opaque",
        string_data=pulumi.Output.secret(secret_data), opts=in_ns)
    config = k8s.core.v1.ConfigMap(
        "config", metadata=meta("stackspace-config", "config"),
        data={"config.json": service_config(s)}, opts=in_ns)

    def account(component: str, rules: list[dict]) -> k8s.core.v1.ServiceAccount:
        name = f"stackspace-{component}"
        sa = k8s.core.v1.ServiceAccount(f"{component}-account",
                                        metadata=meta(name, component), opts=in_ns)
        role = k8s.rbac.v1.Role(f"{component}-role",
                                metadata=meta(name, component, s.workspace_namespace),
                                rules=rules, opts=in_ns)
        k8s.rbac.v1.RoleBinding(
            f"{component}-binding", metadata=meta(name, component, s.workspace_namespace),
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                      "name": role.metadata.name},
            subjects=[{"kind": "ServiceAccount", "name": sa.metadata.name,
                       "namespace": s.namespace}],
            opts=in_ns)
        return sa

    service_sa = account("service", rbac.SERVICE_RULES)
    proxy_sa = account("proxy", rbac.PROXY_RULES)

    secret_name = secret.metadata.name
    config_volume = {"name": "config", "configMap": {"name": config.metadata.name}}
    # Pods restart when their config or the Secret's values change (environment
    # and files from them are read at start). The digest is keyed: not a hash
    # anyone could test passwords against.
    restart_on = pulumi.Output.all(
        s.ticket_key, s.passphrase, s.store_key, s.admin_token,
        s.database_url or "", s.backend_url or "", service_config(s),
    ).apply(lambda v: hmac.new(v[0].encode(), "\0".join(v).encode(),
                               hashlib.sha256).hexdigest()[:16])
    annotations = {"stackspace.dev/inputs": pulumi.Output.unsecret(restart_on)}

    data = data_volume(s, in_ns)
    # One pod at a time on the data volume: the old one stops before the new one
    # opens the same SQLite file (and a ReadWriteOnce claim moves between nodes).
    # On the node's network too: a new pod cannot bind the port the old one holds.
    recreate = {"type": "Recreate"}
    workload("service", s, s.service_replicas, s.service_port, service_sa, annotations, in_ns,
             service_pod(s, service_sa.metadata.name, secret_name, config_volume, data),
             recreate if s.keeps_local_state or s.host_network else None)
    workload("proxy", s, s.proxy_replicas, s.proxy_port, proxy_sa, annotations, in_ns,
             proxy_pod(s, proxy_sa.metadata.name, secret_name, config_volume),
             recreate if s.host_network else None)

    pulumi.export("namespace", s.namespace)
    pulumi.export("workspaceNamespace", s.workspace_namespace)
    pulumi.export("image", s.image)
    pulumi.export("proxyUrl", s.proxy_url)
    pulumi.export("adminToken", s.admin_token)


def workload(component: str, s: Settings, replicas: int, port: int,
             account: k8s.core.v1.ServiceAccount, pod_annotations: dict[str, pulumi.Input[str]],
             opts: pulumi.ResourceOptions, spec: dict, strategy: dict | None = None) -> None:
    """A Deployment and its Service."""
    name = f"stackspace-{component}"
    selector = labels(component)
    k8s.apps.v1.Deployment(
        component, metadata={"name": name, "namespace": s.namespace, "labels": selector},
        spec={"replicas": replicas, "selector": {"matchLabels": selector},
              **({"strategy": strategy} if strategy else {}),
              "template": {"metadata": {"labels": selector, "annotations": pod_annotations},
                           "spec": spec}},
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
            depends_on=[account],
            # The API server refuses a switch to Recreate over the defaulted
            # rollingUpdate a server-side apply does not own: a new Deployment.
            replace_on_changes=["spec.strategy"], delete_before_replace=True)))
    # Pods on the node's network have the node's (here loopback) address, which no
    # endpoint may carry: do not wait for endpoints that cannot come.
    annotations = {"pulumi.com/skipAwait": "true"} if s.host_network else {}
    k8s.core.v1.Service(
        component + "-service",
        metadata={"name": name, "namespace": s.namespace, "labels": selector,
                  "annotations": annotations},
        spec={"type": s.service_type, "selector": selector,
              "ports": [{"name": component, "port": port, "targetPort": port}]},
        opts=opts)


def main() -> None:
    deploy(load())
