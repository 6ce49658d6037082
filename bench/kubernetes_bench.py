"""Benchmark: workspace lifecycle on Kubernetes through the stackspace service
vs. the raw floor, on the shared test cluster (scripts/test-cluster).

Measured in one run, in a namespace of its own that is deleted at the end:
  - raw floor: the same PVC, init Job, NetworkPolicy and Deployment (one
    pod) the Kubernetes component declares, made directly with the official
    kubernetes client, waiting for what the Pulumi provider waits for: the PVC
    bound (or pending under WaitForFirstConsumer), the Job complete, the
    Deployment rolled out and available; stop = delete the Deployment
    (foreground) and wait until it is gone; start = create it and wait
    available; delete = remove everything and wait until the PVC is gone;
  - empty `pulumi up`: an up of the unchanged workspace stack (the engine's
    fixed cost per operation);
  - stackspace: create / stop / start / delete through the HTTP API until the
    operation has succeeded, with the phase timings the operation reports.
Run: scripts/setup && source ~/.cache/stackspace/toolchain.env && \
     .venv/bin/python bench/kubernetes_bench.py [--kubeconfig PATH]
(without --kubeconfig, `scripts/test-cluster up` starts or reuses the cluster).
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.service_bench import Service  # noqa: E402
from components.base import LABEL_OWNER, LABEL_ROLE, LABEL_WORKSPACE  # noqa: E402
from components.clients import kube_api_client  # noqa: E402
from components.init_script import INIT_SCRIPT, init_inputs  # noqa: E402
from components.kubernetes import (  # noqa: E402
    INIT_INPUT_DIR,
    _pod_spec,
    _security_context,
)
from components.runtime import KubernetesRuntime, parse_runtime  # noqa: E402
from components.spec import WORKSPACE_ROOT, WorkspaceSpec  # noqa: E402
from service.store import Store  # noqa: E402
from stacks.automation import StackRunner  # noqa: E402
from stacks.settings import PulumiSettings, StackFiles  # noqa: E402

# Small enough to fit next to other engineers' pods on the shared 2-CPU node.
RESOURCES = {"cpu": "250m", "memory": "128Mi", "storage": "32Mi"}
POLL = 0.05  # seconds between reads while waiting for a state


def wait_for(what: str, read: Callable[[], Any], ready: Callable[[Any], bool],
             timeout: float = 600) -> None:
    """Poll `read` until `ready(result)`; a 404 reads as None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            obj = read()
        except ApiException as e:
            if e.status != 404:
                raise
            obj = None
        if ready(obj):
            return
        time.sleep(POLL)
    raise TimeoutError(f"{what} not reached in {timeout:.0f}s")


def condition(obj: Any, kind: str) -> bool:
    conditions = (obj.status.conditions or []) if obj is not None and obj.status else []
    return any(c.type == kind and c.status == "True" for c in conditions)


class RawWorkspace:
    """One workspace's objects, declared as components/kubernetes.py declares them."""

    def __init__(self, api: client.ApiClient, runtime: KubernetesRuntime, name: str):
        self.core, self.batch = client.CoreV1Api(api), client.BatchV1Api(api)
        self.net, self.storage = client.NetworkingV1Api(api), client.StorageV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.ns, self.runtime = runtime.namespace, runtime
        self.spec = WorkspaceSpec.parse({"name": name, "resources": RESOURCES})
        self.base = f"raw-{name}"

    def _meta(self, name: str, role: str) -> dict:
        return {"name": name, "namespace": self.ns, "labels": self._labels(role)}

    def _labels(self, role: str) -> dict:
        return {LABEL_WORKSPACE: self.spec.name, LABEL_OWNER: "bench", LABEL_ROLE: role}

    def _volumes(self) -> tuple[list[dict], list[dict]]:
        return ([{"name": "home", "persistentVolumeClaim": {"claimName": f"{self.base}-home"}}],
                [{"name": "home", "mountPath": WORKSPACE_ROOT}])

    def _pvc_ready(self, pvc: Any) -> bool:
        if pvc is None:
            return False
        if pvc.status.phase == "Bound":
            return True
        sc_name = pvc.spec.storage_class_name
        if pvc.status.phase == "Pending" and sc_name:
            sc = self.storage.read_storage_class(sc_name)
            return sc.volume_binding_mode == "WaitForFirstConsumer"
        return False

    def create(self) -> None:
        pvc = f"{self.base}-home"
        self.core.create_namespaced_persistent_volume_claim(self.ns, {
            "metadata": self._meta(pvc, "storage"),
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": self.spec.resources.storage}}}})
        wait_for("PVC bound", lambda: self.core.read_namespaced_persistent_volume_claim(
            pvc, self.ns), self._pvc_ready)
        volumes, mounts = self._volumes()
        init = init_inputs(self.spec, f"{INIT_INPUT_DIR}/", remove_inputs=False)
        job = f"{self.base}-init"
        self.batch.create_namespaced_job(self.ns, {
            "metadata": self._meta(job, "init"),
            "spec": {"backoffLimit": 0, "template": {
                "metadata": {"labels": self._labels("init")},
                "spec": {**_pod_spec(self.runtime, None), "restartPolicy": "Never",
                         "volumes": volumes,
                         "containers": [{
                             "name": "init", "image": self.spec.image,
                             "imagePullPolicy": "IfNotPresent",
                             "command": ["/bin/sh", "-c", INIT_SCRIPT],
                             "env": [{"name": k, "value": v} for k, v in init.env.items()],
                             "volumeMounts": mounts, "securityContext": _security_context(),
                             "resources": {"limits": {"cpu": "1", "memory": "512Mi"}}}]}}}})

        def job_done(j: Any) -> bool:
            if condition(j, "Failed"):
                raise RuntimeError("raw init Job failed")
            return condition(j, "Complete")

        wait_for("init Job complete",
                 lambda: self.batch.read_namespaced_job_status(job, self.ns), job_done)
        self.net.create_namespaced_network_policy(self.ns, {
            "metadata": self._meta(f"{self.base}-deny-ingress", "network-policy"),
            "spec": {"podSelector": {"matchLabels": {LABEL_WORKSPACE: self.spec.name,
                                                     LABEL_OWNER: "bench"}},
                     "policyTypes": ["Ingress"], "ingress": []}})
        self.start()

    def start(self) -> None:
        volumes, mounts = self._volumes()
        cpu, memory = self.spec.resources.cpu, self.spec.resources.memory
        selector = self._labels("workspace")
        pod_spec = {**_pod_spec(self.runtime, None), "hostname": self.spec.name,
                    "restartPolicy": "Always", "shareProcessNamespace": True,
                    "terminationGracePeriodSeconds": 10, "volumes": volumes,
                    "containers": [{
                        "name": "workspace", "image": self.spec.image,
                        "imagePullPolicy": "IfNotPresent", "command": list(self.spec.command),
                        "workingDir": WORKSPACE_ROOT, "env": [], "volumeMounts": mounts,
                        "securityContext": _security_context(),
                        "resources": {"requests": {"cpu": cpu, "memory": memory},
                                      "limits": {"cpu": cpu, "memory": memory}}}]}
        self.apps.create_namespaced_deployment(self.ns, {
            "metadata": self._meta(self.base, "workspace"),
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                     "selector": {"matchLabels": selector},
                     "template": {"metadata": {"labels": selector}, "spec": pod_spec}}})

        def rolled_out(d: Any) -> bool:
            st = d.status if d is not None else None
            return bool(st and (st.observed_generation or 0) >= d.metadata.generation
                        and st.updated_replicas == 1 and st.available_replicas == 1
                        and condition(d, "Available"))

        wait_for("Deployment available",
                 lambda: self.apps.read_namespaced_deployment_status(self.base, self.ns),
                 rolled_out)

    def stop(self) -> None:
        self.apps.delete_namespaced_deployment(self.base, self.ns,
                                               propagation_policy="Foreground")
        wait_for("Deployment gone",
                 lambda: self.apps.read_namespaced_deployment(self.base, self.ns),
                 lambda d: d is None)

    def delete(self) -> None:
        self.stop()
        self.net.delete_namespaced_network_policy(f"{self.base}-deny-ingress", self.ns)
        job = f"{self.base}-init"
        self.batch.delete_namespaced_job(job, self.ns, propagation_policy="Foreground")
        wait_for("Job gone", lambda: self.batch.read_namespaced_job(job, self.ns),
                 lambda j: j is None)
        pvc = f"{self.base}-home"
        self.core.delete_namespaced_persistent_volume_claim(pvc, self.ns)
        wait_for("PVC gone", lambda: self.core.read_namespaced_persistent_volume_claim(
            pvc, self.ns), lambda c: c is None)


def raw_floor(api: client.ApiClient, runtime: KubernetesRuntime) -> dict[str, float]:
    ws = RawWorkspace(api, runtime, f"floor-{secrets.token_hex(3)}")
    out = {}
    for kind in ("create", "stop", "start", "delete"):
        t = time.monotonic()
        getattr(ws, kind)()
        out[kind] = time.monotonic() - t
    return out


def cluster_kubeconfig() -> str:
    proc = subprocess.run([str(REPO / "scripts" / "test-cluster"), "up"], capture_output=True,
                          text=True, check=True, timeout=3600)
    return proc.stdout.strip().splitlines()[-1]


def phases(op: dict) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in op.get("timings", {}).items())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubeconfig", help="default: scripts/test-cluster up")
    parser.add_argument("--pool", type=int, default=None, help="worker pool size")
    args = parser.parse_args()
    kubeconfig = args.kubeconfig or cluster_kubeconfig()
    pool = args.pool or max(2, os.cpu_count() or 2)
    namespace = f"stackspace-bench-{secrets.token_hex(3)}"
    runtime_dict = {"name": "cluster", "type": "kubernetes", "kubeconfig": kubeconfig,
                    "namespace": namespace}
    runtime = parse_runtime(runtime_dict)
    assert isinstance(runtime, KubernetesRuntime)
    api = kube_api_client(runtime)
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    timing: dict[str, float] = {}
    ops: dict[str, dict] = {}
    try:
        floor = raw_floor(api, runtime)
        with tempfile.TemporaryDirectory(prefix="stackspace-kbench-") as tmp:
            svc = Service(Path(tmp), "", pool, runtimes=[runtime_dict])
            name = "kbench-one"
            try:
                for kind, method, path, body in (
                        ("create", "POST", "/workspaces", {"name": name,
                                                           "resources": RESOURCES}),
                        ("stop", "POST", f"/workspaces/{name}/stop", None),
                        ("start", "POST", f"/workspaces/{name}/start", None)):
                    timing[kind] = svc.run(method, path, body)
                    ops[kind] = svc.last_op
                # Empty up: the same stack, nothing to change.
                settings = PulumiSettings(
                    backend_url=f"file://{svc.data / 'state'}", passphrase="bench",
                    pulumi_home=Path(os.environ.get("PULUMI_HOME", "")),
                    bin_dir=Path(os.environ["STACKSPACE_PULUMI_BIN"]))
                runner = StackRunner(settings)
                # The stack's settings live in the service's store, not the checkout.
                ws = Store(svc.data / "stackspace.db").workspace("admin", name)
                stack = ws["stack"]
                runner.use(StackFiles(settings.pulumi_home, stack, ws["stack_settings"]))
                t = time.monotonic()
                # The operator's `pulumi up` of the same stack (no changes), as service_bench.
                runner.stack(stack).up(color="never", suppress_progress=True)
                empty_up = time.monotonic() - t
                timing["delete"] = svc.run("DELETE", f"/workspaces/{name}")
                ops["delete"] = svc.last_op
            finally:
                if "delete" not in timing:  # leave no stack behind a failed run
                    try:
                        svc.run("DELETE", f"/workspaces/{name}")
                    except Exception as e:  # noqa: BLE001 - the namespace goes anyway
                        print(f"cleanup: delete through the service failed: {e}")
                svc.close()
    finally:
        core.delete_namespace(namespace)
        wait_for("bench namespace gone", lambda: core.read_namespace(namespace),
                 lambda n: n is None, timeout=300)

    print(f"\nstackspace service vs raw floor (Kubernetes test cluster, pool={pool}, "
          f"{os.cpu_count()} CPUs)")
    print(f"{'operation':<24}{'raw k8s client':>16}{'empty pulumi up':>18}"
          f"{'stackspace':>13}   phases (s)")
    for kind in ("create", "stop", "start", "delete"):
        print(f"{kind + ' (time to done)':<24}{floor[kind]:>15.2f}s{empty_up:>17.2f}s"
              f"{timing[kind]:>12.2f}s   {phases(ops[kind])}")


if __name__ == "__main__":
    main()
