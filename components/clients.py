"""API clients for a runtime: the Docker SDK for Docker runtimes, the official
Kubernetes client for Kubernetes runtimes.

One place builds them, for everything that talks to a runtime outside the
Pulumi engine (doctor, the service's orphan sweep, the exec proxy). No Pulumi
imports here: the exec proxy must not need the Pulumi SDK.
"""

from __future__ import annotations

from typing import Any

from components.runtime import DockerRuntime, KubernetesRuntime


def docker_client(rt: DockerRuntime, timeout: float = 30) -> Any:
    """A `docker.DockerClient` for the runtime's engine (unix, tcp:// + TLS, ssh://)."""
    import docker

    tls = None
    if rt.host.startswith("tcp://"):
        tls = docker.tls.TLSConfig(client_cert=(rt.cert_file, rt.key_file),
                                   ca_cert=rt.ca_file, verify=True)
    return docker.DockerClient(base_url=rt.host, tls=tls, timeout=timeout)


def kube_api_client(rt: KubernetesRuntime) -> Any:
    """A `kubernetes.client.ApiClient` for the runtime's kubeconfig and context
    (in-cluster config when no kubeconfig is given)."""
    from kubernetes import config

    if rt.kubeconfig is None:
        try:
            config.load_incluster_config()
            from kubernetes import client

            return client.ApiClient()
        except config.ConfigException:
            pass
    return config.new_client_from_config(config_file=rt.kubeconfig, context=rt.context)
