"""Init that can always be retried, on Kubernetes (the init Job has
`backoffLimit: 0`), through the service as a user meets it: a create whose
clone fails names the cause without the credential; `repository` is corrected
by PATCH; an init pod killed once is run again by a plain `start`; and once a
clone succeeded, init never runs again and the user's files stay."""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config, watch

from tests.api.conftest import custom_service
from tests.e2e.remote_helpers import operate, stackspace_exec
from tests.e2e.repo_image import REPO_URL
from tests.e2e.stack_helpers import ensure_namespace
from tests.e2e.test_kubernetes_workspace import cluster_repo_image

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("kubernetes_provider")]
NAMESPACE = "stackspace-init-e2e"


@contextlib.contextmanager
def init_pod_killed_once(core: client.CoreV1Api, name: str) -> Iterator[list[str]]:
    """Delete the first init pod of workspace `name` as soon as it appears (before
    its clone can finish): the Job, with no retries of its own, fails."""
    killed: list[str] = []
    stop = threading.Event()
    selector = f"stackspace.dev/workspace={name},stackspace.dev/role=init"

    def kill() -> None:
        w = watch.Watch()
        while not stop.is_set() and not killed:
            for event in w.stream(core.list_namespaced_pod, NAMESPACE,
                                  label_selector=selector, timeout_seconds=2):
                pod = event["object"]
                # A new init pod (Pending until its container starts): not the
                # failed one of the create, which this run's replacement removes.
                if pod.status.phase in ("Pending", "Running"):
                    core.delete_namespaced_pod(pod.metadata.name, NAMESPACE,
                                               grace_period_seconds=0)
                    killed.append(pod.metadata.name)
                    w.stop()
                    return

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    try:
        yield killed
    finally:
        stop.set()
        thread.join(timeout=10)


def init_jobs(batch: client.BatchV1Api, name: str) -> list[client.V1Job]:
    return batch.list_namespaced_job(NAMESPACE, label_selector=(
        f"stackspace.dev/workspace={name},stackspace.dev/role=init")).items


def test_a_failed_init_on_kubernetes_runs_again_until_one_clone_lands(
        tmp_path, kube_cluster: Path, docker_host, docker_client, pulumi_settings):
    kube = config.new_client_from_config(config_file=str(kube_cluster))
    core, batch = client.CoreV1Api(kube), client.BatchV1Api(kube)
    ensure_namespace(core, NAMESPACE)
    (tmp_path / "repo").mkdir()
    image = cluster_repo_image(kube_cluster, docker_client, tmp_path / "repo",
                               {"README.md": "cloned at last\n"})
    runtime = {"name": "cluster", "type": "kubernetes", "kubeconfig": str(kube_cluster),
               "namespace": NAMESPACE}
    name = f"kinit-{secrets.token_hex(3)}"
    credential = f"glpat-{secrets.token_hex(8)}"
    with custom_service(tmp_path / "svc", docker_host, pulumi_settings,
                        runtimes=[runtime]) as svc:
        try:
            # A typo in the URL: the create fails, naming the cause, not the credential.
            op = operate(svc, "POST", "", json={
                "name": name, "image": image,
                "repository": {"url": "file:///srv/missing.git", "credential": credential},
                "resources": {"cpu": "250m", "memory": "128Mi", "storage": "32Mi"}})
            assert (op["status"], op["error_type"]) == ("failed", "InitFailed"), op
            ws = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()
            assert ws["state"] == "failed" and ws["last_error"] == op["error"], ws
            assert op["error"].startswith("workspace init failed with exit code 12: "), op
            assert "clone failed: repository not found" in op["error"], op["error"]
            assert credential not in json.dumps(ws) + op["error"]

            # PATCH corrects it; this run's init pod is killed: it fails again.
            fixed = {"url": REPO_URL, "credential": credential}
            with init_pod_killed_once(core, name) as killed:
                op = operate(svc, "PATCH", f"/{name}", json={"repository": fixed})
            assert killed and op["status"] == "failed", (killed, op)

            # A plain start, nothing changed: the failed Job runs again and clones.
            op = operate(svc, "POST", f"/{name}/start")
            assert op["status"] == "succeeded", op.get("error")
            assert "the last init failed: ran it again" in \
                [body.get("message") for _, body in svc.store.events(op["id"])]
            ws = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()
            assert ws["state"] == "running" and ws["outputs"]["initialized"] is True
            [job] = init_jobs(batch, name)
            assert job.status.succeeded == 1
            r = stackspace_exec(svc, name, "sh", "-c", "cat README.md; echo mine > notes")
            assert (r.returncode, r.stdout) == (0, b"cloned at last\n"), r.stderr

            # Cloned once: init never runs again, the user's file stays, and
            # `repository` is fixed from now on.
            assert operate(svc, "POST", f"/{name}/stop")["status"] == "succeeded"
            assert operate(svc, "POST", f"/{name}/start")["status"] == "succeeded"
            [again] = init_jobs(batch, name)
            assert again.metadata.uid == job.metadata.uid
            assert stackspace_exec(svc, name, "cat", "notes").stdout == b"mine\n"
            r = svc.call("PATCH", f"/api/v1/workspaces/{name}", svc.alice,
                         json={"repository": {"url": "file:///srv/other.git"}})
            assert r.status_code == 422, r.text
            assert [e["field"] for e in r.json()["errors"]] == ["repository"]
        finally:
            operate(svc, "DELETE", f"/{name}?queue=true")
