"""The install's settings, from the stack's config (`stackspace install` sets them).

Checked before any object is declared, so bad input fails naming the key and
nothing changes in the cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi

from components.spec import quantity_value

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
HOST_PORT = re.compile(r"^[A-Za-z0-9.\-]+:[0-9]{1,5}$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
DEFAULT_DATA_SIZE = "1Gi"


@dataclass(frozen=True)
class Settings:
    namespace: str
    workspace_namespace: str
    image: str
    create_namespaces: bool
    service_replicas: int
    proxy_replicas: int
    service_port: int
    proxy_port: int
    proxy_url: str
    host_network: bool
    api_server: str | None
    storage_class: str | None
    service_type: str
    kubeconfig: str | None
    context: str | None
    render_dir: str | None
    # Secret inputs stay Outputs so they are encrypted in the install's state.
    passphrase: pulumi.Output[str]
    ticket_key: pulumi.Output[str]
    store_key: pulumi.Output[str]
    admin_token: pulumi.Output[str]
    database_url: pulumi.Output[str] | None
    backend_url: pulumi.Output[str] | None
    # The service's data volume (when it keeps local state): size and class.
    data_size: str = DEFAULT_DATA_SIZE
    data_storage_class: str | None = None

    @property
    def keeps_local_state(self) -> bool:
        """The data dir holds what must outlive the pod: the SQLite store without a
        database, the file:// Pulumi state without a backend. It then sits on a
        PersistentVolumeClaim, never an emptyDir."""
        return self.database_url is None or self.backend_url is None

    @property
    def listen_host(self) -> str:
        # On the node's network only loopback: nothing outside the node reaches it.
        return "127.0.0.1" if self.host_network else "0.0.0.0"  # noqa: S104

    @property
    def proxy_internal_url(self) -> str:
        """Where the service reaches the proxy itself (the file API's execs): inside
        the cluster, whatever ingress `proxy_url` names for clients."""
        return internal_proxy_url(self.namespace, self.proxy_port, self.host_network)

    @property
    def service_address(self) -> str:
        """Where the proxy reaches the service (activity reports)."""
        if self.host_network:
            return f"127.0.0.1:{self.service_port}"
        return f"stackspace-service.{self.namespace}.svc:{self.service_port}"


def internal_proxy_url(namespace: str, proxy_port: int, host_network: bool) -> str:
    if host_network:
        return f"ws://127.0.0.1:{proxy_port}/exec"
    return f"ws://stackspace-proxy.{namespace}.svc:{proxy_port}/exec"


def _name(cfg: pulumi.Config, key: str, default: str | None = None) -> str:
    value = cfg.get(key) or default
    if not value or not DNS_LABEL.match(value):
        raise ValueError(f"{key}: must be a DNS label (lowercase letters, digits, '-')")
    return value


def _port(cfg: pulumi.Config, key: str, default: int) -> int:
    value = cfg.get_int(key) or default
    if not 1 <= value <= 65535:
        raise ValueError(f"{key}: must be a TCP port (1-65535)")
    return value


def _data_size(cfg: pulumi.Config) -> str:
    value = cfg.get("dataSize") or DEFAULT_DATA_SIZE
    try:
        ok = quantity_value(value) >= 2**20
    except ValueError:
        ok = False
    if not ok:
        raise ValueError("dataSize: must be a storage quantity of at least 1Mi, like '1Gi'")
    return value


def _storage_class(cfg: pulumi.Config, key: str, default: str | None = None) -> str | None:
    value = cfg.get(key) or default
    if value is not None and not DNS_SUBDOMAIN.match(value):
        raise ValueError(f"{key}: must be a StorageClass name (lowercase letters, digits, "
                         "'-', '.')")
    return value


def load() -> Settings:
    cfg = pulumi.Config()
    namespace = _name(cfg, "namespace", "stackspace")
    workspace_namespace = _name(cfg, "workspaceNamespace", "stackspace-workspaces")
    if workspace_namespace == namespace:
        raise ValueError("workspaceNamespace: must differ from namespace (the service's "
                         "rights are limited to the workspace namespace)")
    image = cfg.require("image")
    database_url = cfg.get_secret("databaseUrl")
    service_replicas = cfg.get_int("serviceReplicas") or 1
    if service_replicas < 1 or (database_url is None and service_replicas != 1):
        raise ValueError("serviceReplicas: more than one replica needs databaseUrl "
                         "(the embedded SQLite store is one replica's)")
    backend_url = cfg.get_secret("backendUrl")
    if service_replicas > 1 and backend_url is None:
        raise ValueError("serviceReplicas: more than one replica needs backendUrl (a shared "
                         "Pulumi backend such as postgres://, not one pod's files)")
    proxy_replicas = cfg.get_int("proxyReplicas") or 1
    if proxy_replicas < 1 or (database_url is None and proxy_replicas != 1):
        raise ValueError("proxyReplicas: more than one proxy needs databaseUrl (a ticket is "
                         "single-use across proxies through the shared database)")
    api_server = cfg.get("apiServer")
    if api_server and not HOST_PORT.match(api_server):
        raise ValueError("apiServer: must be HOST:PORT")
    service_type = cfg.get("serviceType") or "ClusterIP"
    if service_type not in ("ClusterIP", "NodePort", "LoadBalancer"):
        raise ValueError("serviceType: must be ClusterIP, NodePort or LoadBalancer")
    host_network = cfg.get_bool("hostNetwork") or False
    proxy_port = _port(cfg, "proxyPort", 8081)
    proxy_url = cfg.get("proxyUrl") or internal_proxy_url(namespace, proxy_port, host_network)
    if not re.match(r"^wss?://[^\s/]+(/\S*)?$", proxy_url):
        raise ValueError("proxyUrl: must be a ws:// or wss:// URL")
    storage_class = _storage_class(cfg, "storageClass")
    return Settings(
        namespace=namespace,
        workspace_namespace=workspace_namespace,
        image=image,
        create_namespaces=cfg.get_bool("createNamespaces") is not False,
        service_replicas=service_replicas,
        proxy_replicas=proxy_replicas,
        service_port=_port(cfg, "servicePort", 8080),
        proxy_port=proxy_port,
        proxy_url=proxy_url,
        host_network=host_network,
        api_server=api_server,
        storage_class=storage_class,
        service_type=service_type,
        kubeconfig=cfg.get("kubeconfig"),
        context=cfg.get("context"),
        render_dir=cfg.get("renderDir"),
        passphrase=cfg.require_secret("passphrase"),
        ticket_key=cfg.require_secret("ticketKey"),
        store_key=cfg.require_secret("storeKey"),
        admin_token=cfg.require_secret("adminToken"),
        database_url=database_url,
        backend_url=backend_url,
        data_size=_data_size(cfg),
        # The workspaces' class unless told otherwise; neither: the cluster's default.
        data_storage_class=_storage_class(cfg, "dataStorageClass", storage_class),
    )
