"""API clients for a runtime: the Docker SDK for Docker runtimes, the official
Kubernetes client for Kubernetes runtimes.

One place builds them, for everything that talks to a runtime outside the
Pulumi engine (doctor, the service's orphan sweep, the exec proxy). No Pulumi
imports here: the exec proxy must not need the Pulumi SDK.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlsplit

from components.runtime import DockerRuntime, KubernetesRuntime


def docker_client(rt: DockerRuntime, timeout: float = 30) -> Any:
    """A `docker.DockerClient` for the runtime's engine (unix, tcp:// + TLS, ssh://)."""
    import docker

    if rt.host.startswith("ssh://"):
        return _ssh_docker_client(rt, timeout)
    if not rt.host.startswith("tcp://"):
        return docker.DockerClient(base_url=rt.host, timeout=timeout, max_pool_size=32)
    tls = docker.tls.TLSConfig(client_cert=(rt.cert_file, rt.key_file), ca_cert=rt.ca_file,
                               verify=True)
    # Built without connecting, then told to ignore the environment: requests would
    # otherwise verify against REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE instead of ca_file.
    client = docker.DockerClient(base_url=rt.host, tls=tls, timeout=timeout, max_pool_size=32,
                                 version="1.41")
    client.api.trust_env = False
    client.api._version = client.api._retrieve_server_version()
    return client


class HostKeyError(Exception):
    """The SSH host's key is unknown or does not match the runtime's known_hosts."""


def check_ssh_host_key(rt: DockerRuntime, timeout: float = 20) -> None:
    """Raise HostKeyError (naming the runtime) unless the ssh:// host presents a key its
    known_hosts lists; only the key exchange, no login. Run before the Pulumi provider
    (which uses the ssh binary) so a bad host fails with this error and creates nothing."""
    import socket

    import paramiko

    url = urlsplit(rt.host)
    host, port = url.hostname or "", url.port or 22
    path = rt.ssh_known_hosts_file or os.path.expanduser("~/.ssh/known_hosts")
    known = paramiko.HostKeys(path) if os.path.exists(path) else paramiko.HostKeys()
    entry = known.lookup(host if port == 22 else f"[{host}]:{port}")
    if not entry:
        raise HostKeyError(f"runtime {rt.name!r}: no host key for {host}:{port} in {path}")
    try:
        sock = socket.create_connection((host, port), timeout)
    except OSError as exc:
        raise ConnectionError(f"runtime {rt.name!r}: cannot reach {host}:{port}: {exc}") from exc
    transport = paramiko.Transport(sock)
    try:
        transport.get_security_options().key_types = [
            t for t in transport.get_security_options().key_types if t in entry]
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
    except paramiko.SSHException as exc:
        raise HostKeyError(f"runtime {rt.name!r}: {host}:{port} offered no host key listed "
                           f"in {path}: {exc}") from exc
    finally:
        transport.close()
    if entry.get(key.get_name()) != key:
        raise HostKeyError(f"runtime {rt.name!r}: the host key of {host}:{port} does not "
                           f"match {path}")


SSH_POOL = 4


def _ssh_docker_client(rt: DockerRuntime, timeout: float) -> Any:
    """The Docker SDK over SSH (paramiko: `docker system dial-stdio` on the host), with
    the runtime's identity and known_hosts and strict host-key checking. The SDK's own
    adapter reads ~/.ssh (of $HOME) and would take any key the agent offers."""
    import docker
    import paramiko
    from docker.transport.sshconn import SSHHTTPAdapter

    class StrictSSHAdapter(SSHHTTPAdapter):  # type: ignore[misc]
        def _create_paramiko_client(self, base_url: str) -> None:
            logging.getLogger("paramiko").setLevel(logging.WARNING)
            url = urlsplit(base_url)
            self.ssh_client = paramiko.SSHClient()
            if rt.ssh_known_hosts_file:
                self.ssh_client.load_host_keys(rt.ssh_known_hosts_file)
            else:
                self.ssh_client.load_system_host_keys()
            self.ssh_client.set_missing_host_key_policy(paramiko.RejectPolicy())
            self.ssh_params = {"hostname": url.hostname, "port": url.port or 22,
                               "username": url.username, "timeout": timeout,
                               "banner_timeout": timeout, "auth_timeout": timeout}
            if rt.ssh_identity_file:
                self.ssh_params.update(key_filename=rt.ssh_identity_file,
                                       look_for_keys=False, allow_agent=False)

        def get_connection(self, url: Any, proxies: Any = None) -> Any:
            # At most SSH_POOL requests' channels at once: a burst waits for a
            # free one instead of opening more, whose sessions sshd frees only
            # once their `dial-stdio` ends (then counts them against MaxSessions).
            pool = super().get_connection(url, proxies)
            pool.block = True
            return pool

        def _connect(self) -> None:
            try:
                super()._connect()
            except paramiko.BadHostKeyException as exc:
                raise HostKeyError(f"runtime {rt.name!r}: the host key of "
                                   f"{exc.hostname} does not match its known_hosts "
                                   "entry") from exc
            except paramiko.SSHException as exc:
                if "not found in known_hosts" in str(exc):
                    raise HostKeyError(f"runtime {rt.name!r}: the host key of "
                                       f"{urlsplit(rt.host).hostname} is not in "
                                       f"{rt.ssh_known_hosts_file or '~/.ssh/known_hosts'}"
                                       ) from exc
                raise

    # The SDK would connect with its own adapter while constructing (version
    # negotiation): build without connecting, mount the strict adapter, then ask.
    client = docker.DockerClient(base_url=rt.host, version="1.41", use_ssh_client=True,
                                 timeout=timeout)
    # Every pooled API connection is a session (channel) on ONE SSH connection, and
    # sshd allows 10 by default (MaxSessions); each attached exec stream takes one
    # more. A large pool of idle channels made the next exec fail ("no more
    # sessions" in sshd's log) after a burst of short execs (the file API's).
    adapter = StrictSSHAdapter(rt.host, timeout=timeout, max_pool_size=SSH_POOL)
    client.api.mount("http+docker://ssh", adapter)
    client.api._custom_adapter = adapter
    client.api._version = client.api._retrieve_server_version()
    return client


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
