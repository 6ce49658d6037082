"""What is really on the engine for one workspace, found by its label
(`stackspace.dev/workspace`), whatever Pulumi's state says."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

LABEL = "stackspace.dev/workspace"
ROLE = "stackspace.dev/role"


@dataclass(frozen=True)
class Workload:
    name: str
    running: bool


class EngineView(Protocol):
    runtime: str

    def workloads(self, name: str) -> list[Workload]: ...
    def storage(self, name: str) -> dict[str, str]: ...
    def objects(self, name: str) -> list[str]: ...
    def roles(self, name: str) -> set[str]: ...
    def write_file(self, workload: str, path: str, text: str) -> None: ...
    def read_file(self, workload: str, path: str) -> str: ...


@dataclass(frozen=True)
class Listed:
    """A container as the engine lists it."""

    name: str
    status: str
    labels: dict[str, str]


class DockerView:
    runtime = "docker"

    def __init__(self, client: Any):
        self.client = client

    def _containers(self, name: str) -> list[Any]:
        # The low-level list answers in one call: the SDK's list inspects each
        # container after listing, and one removed in between (an init
        # container finishing, a sweep, a replace) is a NotFound.
        found = self.client.api.containers(all=True, filters={"label": f"{LABEL}={name}"})
        return [Listed(c["Names"][0].lstrip("/"), c["State"], c.get("Labels") or {})
                for c in found]

    def workloads(self, name: str) -> list[Workload]:
        return [Workload(c.name, c.status == "running") for c in self._containers(name)
                if c.labels.get(ROLE) == "workspace"]

    def storage(self, name: str) -> dict[str, str]:
        vols = self.client.volumes.list(filters={"label": f"{LABEL}={name}"})
        return {v.name: v.id for v in vols}

    def objects(self, name: str) -> list[str]:
        return ([f"container/{c.name} ({c.status})" for c in self._containers(name)]
                + [f"volume/{v}" for v in self.storage(name)])

    def roles(self, name: str) -> set[str]:
        """Roles (storage, init, workspace) of the objects the engine holds now."""
        found = {c.labels.get(ROLE, "?") for c in self._containers(name)}
        return found | ({"storage"} if self.storage(name) else set())

    def _exec(self, workload: str, cmd: list[str]) -> str:
        code, out = self.client.containers.get(workload).exec_run(cmd, user="1000")
        assert code == 0, out
        return out.decode()

    def write_file(self, workload: str, path: str, text: str) -> None:
        self._exec(workload, ["sh", "-c", f"printf %s '{text}' > /workspace/{path}"])

    def read_file(self, workload: str, path: str) -> str:
        return self._exec(workload, ["cat", f"/workspace/{path}"])


class KubernetesView:
    runtime = "kubernetes"

    def __init__(self, api_client: Any, namespace: str):
        from kubernetes import client

        self.api = api_client
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.net = client.NetworkingV1Api(api_client)
        self.ns = namespace

    def _sel(self, name: str) -> str:
        return f"{LABEL}={name}"

    def workloads(self, name: str) -> list[Workload]:
        pods = self.core.list_namespaced_pod(self.ns, label_selector=self._sel(name)).items
        # A terminating pod is on its way out (a Deployment's rollout or scale-down).
        return [Workload(p.metadata.name, p.status.phase == "Running")
                for p in pods if (p.metadata.labels or {}).get(ROLE) == "workspace"
                and p.metadata.deletion_timestamp is None]

    def storage(self, name: str) -> dict[str, str]:
        pvcs = self.core.list_namespaced_persistent_volume_claim(
            self.ns, label_selector=self._sel(name)).items
        return {p.metadata.name: p.metadata.uid for p in pvcs}

    def objects(self, name: str) -> list[str]:
        sel = self._sel(name)
        found = [f"pod/{p.metadata.name}" for p in
                 self.core.list_namespaced_pod(self.ns, label_selector=sel).items]
        found += [f"job/{j.metadata.name}" for j in
                  self.batch.list_namespaced_job(self.ns, label_selector=sel).items]
        found += [f"secret/{s.metadata.name}" for s in
                  self.core.list_namespaced_secret(self.ns, label_selector=sel).items]
        found += [f"pvc/{p}" for p in self.storage(name)]
        found += [f"networkpolicy/{n.metadata.name}" for n in
                  self.net.list_namespaced_network_policy(self.ns, label_selector=sel).items]
        return found

    def roles(self, name: str) -> set[str]:
        sel = self._sel(name)
        found = {(p.metadata.labels or {}).get(ROLE, "?") for p in
                 self.core.list_namespaced_pod(self.ns, label_selector=sel).items}
        found |= {"init" for _ in self.batch.list_namespaced_job(self.ns,
                                                                  label_selector=sel).items}
        return found | ({"storage"} if self.storage(name) else set())

    def _exec(self, workload: str, cmd: list[str]) -> str:
        from kubernetes import client
        from kubernetes.stream import stream

        return stream(client.CoreV1Api(self.api).connect_get_namespaced_pod_exec, workload,
                      self.ns, command=cmd, stderr=True, stdin=False, stdout=True, tty=False)

    def write_file(self, workload: str, path: str, text: str) -> None:
        self._exec(workload, ["sh", "-c", f"printf %s '{text}' > /workspace/{path}"])

    def read_file(self, workload: str, path: str) -> str:
        return self._exec(workload, ["cat", f"/workspace/{path}"])
