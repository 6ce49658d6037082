"""stackspace inside the test cluster, installed with one command: its image
(built offline), `stackspace install`, a workspace created through the
in-cluster service, a command run through the in-cluster proxy, delete,
`stackspace uninstall`, and nothing of stackspace's left behind. The embedded
install (no database) keeps its workspaces across a restart of the service pod.

The test cluster's API server listens on the node's loopback only and the
cluster has no kube-proxy, so the install runs its pods on the node's network
(`hostNetwork`, `apiServer`): the API server and the test's PostgreSQL on
127.0.0.1 are then reachable from the pods, and the test reaches the pods on
127.0.0.1. The service's store is that PostgreSQL and the workspaces' Pulumi
state goes to its DIY backend, each in a database of the test's own.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream

from service.exec_client import ExecClientError, run_exec
from tests.conftest import unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("kubernetes_provider")]
REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "service.cli"]


def _require_kube(reason: str) -> None:
    unavailable(reason, require="STACKSPACE_REQUIRE_KUBE")


@pytest.fixture(scope="module")
def stackspace_image(kube_cluster: Path) -> str:
    """The stackspace image, built (cached) and loaded into the test cluster."""
    build = subprocess.run(["bash", str(REPO / "scripts/toolchain/stackspace-image.sh")],
                           capture_output=True, text=True, check=False, timeout=1800)
    lines = build.stdout.split()
    if build.returncode != 0 or len(lines) < 2:
        _require_kube(f"building the stackspace image failed: {build.stderr[-2000:]}")
    ref, archive = lines[-2], lines[-1]
    load = subprocess.run([str(REPO / "scripts/test-cluster"), "import", archive],
                          capture_output=True, text=True, check=False, timeout=600)
    if load.returncode != 0:
        _require_kube(f"importing the stackspace image failed: {load.stderr[-2000:]}")
    return ref


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stackspace(*args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=REPO, capture_output=True, text=True,
                          check=False, timeout=900, env={**os.environ, **(env or {})})


def wait_op(url: str, token: str, op: dict) -> dict:
    deadline = time.monotonic() + 600
    while op["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1)
        op = requests.get(f"{url}/api/v1/operations/{op['id']}", timeout=30,
                          headers={"Authorization": f"Bearer {token}"}).json()
    return op


# Every namespaced kind the install or a workspace creates.
def leftovers(api: client.ApiClient, ns: str) -> list[str]:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    batch, rbac = client.BatchV1Api(api), client.RbacAuthorizationV1Api(api)
    net = client.NetworkingV1Api(api)
    listers = [core.list_namespaced_pod, core.list_namespaced_service,
               core.list_namespaced_secret, core.list_namespaced_config_map,
               core.list_namespaced_service_account,
               core.list_namespaced_persistent_volume_claim,
               apps.list_namespaced_deployment, apps.list_namespaced_replica_set,
               batch.list_namespaced_job, rbac.list_namespaced_role,
               rbac.list_namespaced_role_binding, net.list_namespaced_network_policy]
    # What Kubernetes itself puts in every namespace.
    own = {"ServiceAccount/default", "ConfigMap/kube-root-ca.crt"}
    found = []
    for lister in listers:
        for obj in lister(ns).items:
            kind = type(obj).__name__.removeprefix("V1")
            if f"{kind}/{obj.metadata.name}" not in own:
                found.append(f"{kind}/{obj.metadata.name}")
    return found


def allowed(api: client.ApiClient, user: str, ns: str | None, verb: str, resource: str,
            group: str = "", subresource: str | None = None) -> bool:
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=user, groups=["system:serviceaccounts"],
        resource_attributes=client.V1ResourceAttributes(
            namespace=ns, verb=verb, resource=resource, group=group,
            subresource=subresource)))
    return client.AuthorizationV1Api(api).create_subject_access_review(review).status.allowed


@pytest.fixture
def install_names(kube_cluster: Path) -> Iterator[tuple[str, str]]:
    """Unique namespaces; whatever a failed test leaves is removed afterwards."""
    ns = f"ss-incluster-{secrets.token_hex(3)}"
    ws_ns = f"{ns}-ws"
    yield ns, ws_ns
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kube_cluster)))
    for name in (ns, ws_ns):
        try:
            core.delete_namespace(name)
        except ApiException as e:
            if e.status != 404:
                raise


def install_command(ns: str, ws_ns: str, state: Path, kube_cluster: Path, image: str,
                    service_port: int, proxy_port: int, *settings: str) -> list[str]:
    """`stackspace install` on the test cluster, on the node's network (the test
    reaches the service and the proxy on loopback)."""
    extra = [arg for setting in settings for arg in ("--set", setting)]
    return ["install", "--namespace", ns, "--state-dir", str(state), "--workspace-namespace",
            ws_ns, "--image", image, "--set", f"kubeconfig={kube_cluster}",
            "--set", "hostNetwork=true", "--set", "apiServer=127.0.0.1:16443", *extra,
            "--set", f"servicePort={service_port}", "--set", f"proxyPort={proxy_port}",
            "--show-admin-token"]


def admin_token(installed: subprocess.CompletedProcess) -> str:
    assert installed.returncode == 0, installed.stderr[-3000:]
    return installed.stdout.rsplit("admin token: ", 1)[1].strip()


def assert_namespace_gone(core: client.CoreV1Api, ns: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            core.read_namespace(ns)
        except ApiException as e:
            assert e.status == 404
            return
        assert time.monotonic() < deadline, f"namespace {ns} is still there"
        time.sleep(1)


def test_install_workspace_exec_uninstall_in_cluster(tmp_path, kube_cluster, stackspace_image,
                                                     install_names, new_database, pulumi_bin):
    ns, ws_ns = install_names
    store_url = new_database("incluster_store")
    backend = new_database("incluster_state").replace("postgresql://", "postgres://", 1)
    backend += "?sslmode=disable"
    api = config.new_client_from_config(config_file=str(kube_cluster))
    core = client.CoreV1Api(api)
    service_port, proxy_port = free_port(), free_port()
    state = tmp_path / "install-state"
    common = ["--namespace", ns, "--state-dir", str(state)]
    install_args = install_command(ns, ws_ns, state, kube_cluster, stackspace_image,
                                   service_port, proxy_port)
    # URLs that may hold passwords come from the environment, not argv.
    secret_env = {"STACKSPACE_DATABASE_URL": store_url,
                  "STACKSPACE_INSTALL_BACKEND_URL": backend}
    installed = stackspace(*install_args, env=secret_env)
    try:
        token = admin_token(installed)
        first_pods = sorted(p.metadata.name for p in core.list_namespaced_pod(ns).items)
        # Running it again is an upgrade to the same thing: same secrets, same pods.
        assert admin_token(stackspace(*install_args, env=secret_env)) == token
        assert sorted(p.metadata.name for p in core.list_namespaced_pod(ns).items) == first_pods
        url = f"http://127.0.0.1:{service_port}"
        headers = {"Authorization": f"Bearer {token}"}

        # Two Deployments, each with its own account, running as the image's user.
        pods = {p.metadata.labels["app.kubernetes.io/component"]: p
                for p in core.list_namespaced_pod(ns).items}
        assert set(pods) == {"service", "proxy"}
        assert {p.spec.service_account_name for p in pods.values()} == {
            "stackspace-service", "stackspace-proxy"}
        uid = stream(core.connect_get_namespaced_pod_exec, pods["service"].metadata.name, ns,
                     command=["id", "-u"], stderr=True, stdin=False, stdout=True, tty=False)
        assert uid.strip() == "10001"

        # Rights: the workspace namespace only, and only what each part needs.
        sa = f"system:serviceaccount:{ns}:stackspace-service"
        proxy_sa = f"system:serviceaccount:{ns}:stackspace-proxy"
        assert allowed(api, sa, ws_ns, "create", "deployments", "apps")
        assert allowed(api, sa, ws_ns, "create", "persistentvolumeclaims")
        assert not allowed(api, sa, "default", "create", "deployments", "apps")
        assert not allowed(api, sa, ns, "get", "secrets")
        assert not allowed(api, sa, None, "list", "namespaces")
        assert not allowed(api, sa, ws_ns, "create", "pods", subresource="exec")
        assert allowed(api, proxy_sa, ws_ns, "create", "pods", subresource="exec")
        assert not allowed(api, proxy_sa, ws_ns, "create", "deployments", "apps")

        # A workspace through the in-cluster service, on the in-cluster runtime.
        name = f"incl-{secrets.token_hex(3)}"
        op = requests.post(f"{url}/api/v1/workspaces", headers=headers, timeout=30, json={
            "name": name, "resources": {"cpu": "250m", "memory": "128Mi", "storage": "32Mi"},
            "files": [{"path": "hello.txt", "content": "made in the cluster\n"}]}).json()
        op = wait_op(url, token, op)
        assert op["status"] == "succeeded", op
        ws = requests.get(f"{url}/api/v1/workspaces/{name}", headers=headers, timeout=30).json()
        assert ws["state"] == "running" and ws["outputs"]["namespace"] == ws_ns
        # The in-cluster service keeps it in the PostgreSQL store...
        with psycopg.connect(store_url) as db:
            assert db.execute("SELECT owner, state FROM workspaces WHERE name = %s",
                              (name,)).fetchall() == [("admin", "running")]
        # ... and its stack in the shared backend, where any replica (or operator) finds it.
        stacks = subprocess.run(
            [str(pulumi_bin / "pulumi"), "stack", "ls", "--all", "--json"], cwd=tmp_path,
            capture_output=True, text=True, check=True, timeout=120,
            env={**os.environ, "PULUMI_BACKEND_URL": backend,
                 "PULUMI_CONFIG_PASSPHRASE": "unused-for-listing"})
        assert ws["stack"] in {s["name"].rsplit("/", 1)[-1] for s in json.loads(stacks.stdout)}

        # A real command through the in-cluster proxy.
        grant = requests.post(f"{url}/api/v1/workspaces/{name}/terminals", headers=headers,
                              timeout=30, json={"command": ["sh", "-c", "cat hello.txt; exit 3"],
                                                "tty": False}).json()
        assert grant["url"] == f"ws://127.0.0.1:{proxy_port}/exec"
        out, err = io.BytesIO(), io.BytesIO()
        assert run_exec(grant["url"], grant["ticket"], io.BytesIO(), out, err) == 3
        assert out.getvalue() == b"made in the cluster\n"
        # Single use, recorded in the shared database (so across proxy replicas).
        with pytest.raises(ExecClientError, match="ticket already used"):
            run_exec(grant["url"], grant["ticket"], io.BytesIO(), io.BytesIO(), io.BytesIO())
        with psycopg.connect(store_url) as db:
            assert db.execute("SELECT count(*) FROM consumed_tickets").fetchone()[0] == 1
        # The file API: the service execs through the proxy at its internal address.
        got = requests.get(f"{url}/api/v1/workspaces/{name}/files/hello.txt",
                           headers=headers, timeout=60)
        assert (got.status_code, got.content) == (200, b"made in the cluster\n"), got.text

        op = requests.delete(f"{url}/api/v1/workspaces/{name}", headers=headers,
                             timeout=30).json()
        assert wait_op(url, token, op)["status"] == "succeeded"
    finally:
        removed = stackspace("uninstall", *common)
    assert removed.returncode == 0, removed.stderr[-3000:]

    # Nothing left: the install namespace is gone, the workspace namespace (kept for
    # users' workspaces) holds nothing of stackspace's.
    assert_namespace_gone(core, ns)
    assert leftovers(api, ws_ns) == []


def service_pod(core: client.CoreV1Api, ns: str) -> client.V1Pod | None:
    """The service's one pod, once it is ready (not terminating)."""
    for pod in core.list_namespaced_pod(
            ns, label_selector="app.kubernetes.io/component=service").items:
        ready = any(c.type == "Ready" and c.status == "True"
                    for c in pod.status.conditions or [])
        if ready and pod.metadata.deletion_timestamp is None:
            return pod
    return None


def test_embedded_install_keeps_workspaces_across_a_service_pod_restart(
        tmp_path, kube_cluster, stackspace_image, install_names):
    """Without --database-url the store and the file:// state sit on a claim: a new
    service pod knows every workspace, and uninstall keeps that claim (for a later
    install) unless asked."""
    ns, ws_ns = install_names
    api = config.new_client_from_config(config_file=str(kube_cluster))
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    service_port, proxy_port = free_port(), free_port()
    state = tmp_path / "install-state"
    common = ["--namespace", ns, "--state-dir", str(state)]
    env = {"STACKSPACE_DATABASE_URL": "", "STACKSPACE_INSTALL_BACKEND_URL": ""}
    install_args = install_command(ns, ws_ns, state, kube_cluster, stackspace_image,
                                   service_port, proxy_port, "dataSize=64Mi")
    installed = stackspace(*install_args, env=env)
    try:
        token = admin_token(installed)
        url = f"http://127.0.0.1:{service_port}"
        headers = {"Authorization": f"Bearer {token}"}
        claim = core.read_namespaced_persistent_volume_claim("stackspace-data", ns)
        assert claim.status.phase == "Bound"
        deployment = apps.read_namespaced_deployment("stackspace-service", ns)
        assert deployment.spec.strategy.type == "Recreate"
        assert deployment.spec.replicas == 1

        name = f"keep-{secrets.token_hex(3)}"
        op = requests.post(f"{url}/api/v1/workspaces", headers=headers, timeout=30, json={
            "name": name, "resources": {"cpu": "250m", "memory": "128Mi", "storage": "32Mi"},
            "files": [{"path": "hello.txt", "content": "kept across restarts\n"}]}).json()
        assert wait_op(url, token, op)["status"] == "succeeded", op

        # The service pod goes (as in a node drain or an upgrade); its successor
        # reads the same store and state from the claim.
        old = service_pod(core, ns)
        assert old is not None
        core.delete_namespaced_pod(old.metadata.name, ns)
        deadline = time.monotonic() + 300
        while True:
            new = service_pod(core, ns)
            if new is not None and new.metadata.name != old.metadata.name:
                break
            assert time.monotonic() < deadline, "no new service pod became ready"
            time.sleep(1)
        listed = requests.get(f"{url}/api/v1/workspaces", headers=headers, timeout=30)
        assert listed.status_code == 200, listed.text
        assert [w["name"] for w in listed.json()["items"]] == [name]

        def lifecycle(path: str, method: str = "POST") -> None:
            op = requests.request(method, f"{url}/api/v1/workspaces/{name}{path}",
                                  headers=headers, timeout=30).json()
            assert wait_op(url, token, op)["status"] == "succeeded", op

        lifecycle("/stop")
        lifecycle("/start")
        grant = requests.post(f"{url}/api/v1/workspaces/{name}/terminals", headers=headers,
                              timeout=30, json={"command": ["cat", "hello.txt"],
                                                "tty": False}).json()
        out = io.BytesIO()
        assert run_exec(grant["url"], grant["ticket"], io.BytesIO(), out, io.BytesIO()) == 0
        assert out.getvalue() == b"kept across restarts\n"

        # Uninstall keeps the data volume (and the namespace holding it) and says so.
        kept = stackspace("uninstall", *common)
        assert kept.returncode == 0, kept.stderr[-3000:]
        assert f"kept the data volume {ns}/stackspace-data" in kept.stdout
        assert "--delete-data" in kept.stdout
        assert core.read_namespaced_persistent_volume_claim("stackspace-data", ns)
        assert apps.list_namespaced_deployment(ns).items == []
        assert [s.metadata.name for s in core.list_namespaced_secret(ns).items] == []
        # A later install with the same state dir finds it again, keys and all.
        assert admin_token(stackspace(*install_args, env=env)) == token
        listed = requests.get(f"{url}/api/v1/workspaces", headers=headers, timeout=30)
        assert [w["name"] for w in listed.json()["items"]] == [name]
        lifecycle("", "DELETE")
        assert requests.get(f"{url}/api/v1/workspaces/{name}", headers=headers,
                            timeout=30).status_code == 404
    finally:
        removed = stackspace("uninstall", *common, "--delete-data")
    assert removed.returncode == 0, removed.stderr[-3000:]
    assert "nothing kept" in removed.stdout
    assert_namespace_gone(core, ns)
    assert leftovers(api, ws_ns) == []


def test_render_writes_plain_manifests(tmp_path):
    """`--render` gives kubectl users the same objects as YAML, no cluster needed."""
    out = tmp_path / "manifests"
    rendered = stackspace("install", "--namespace", "ss-render", "--workspace-namespace",
                          "ss-render-ws", "--image", "localhost/stackspace/stackspace:x",
                          "--state-dir", str(tmp_path / "state"), "--render", str(out))
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    docs = [d for path in out.rglob("*.yaml") for d in yaml.safe_load_all(path.read_text()) if d]
    kinds = sorted((d["kind"], d["metadata"].get("namespace", "")) for d in docs)
    assert kinds == sorted([
        ("Namespace", ""), ("Namespace", ""), ("ConfigMap", "ss-render"),
        ("Secret", "ss-render"), ("ServiceAccount", "ss-render"),
        ("ServiceAccount", "ss-render"), ("Deployment", "ss-render"),
        ("Deployment", "ss-render"), ("Service", "ss-render"), ("Service", "ss-render"),
        ("Role", "ss-render-ws"), ("Role", "ss-render-ws"),
        ("RoleBinding", "ss-render-ws"), ("RoleBinding", "ss-render-ws"),
        # Without a database: the service's data volume.
        ("PersistentVolumeClaim", "ss-render")])
    # Nothing was stored for the render: no install stack to upgrade or destroy.
    assert not (tmp_path / "state").exists()
    assert os.listdir(out)


def test_a_bad_setting_is_refused_naming_it(tmp_path):
    out = tmp_path / "manifests"
    refused = stackspace("install", "--image", "localhost/stackspace/stackspace:x",
                         "--set", "serviceReplicas=2", "--render", str(out))
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1] == (
        "Error: install failed: serviceReplicas: more than one replica needs databaseUrl "
        "(the embedded SQLite store is one replica's)")
    assert not list(out.rglob("*.yaml"))


def test_uninstall_of_an_unknown_install_is_refused(tmp_path):
    refused = stackspace("uninstall", "--namespace", "ss-never-installed",
                         "--state-dir", str(tmp_path / "state"))
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        f"Error: namespace: no install of 'ss-never-installed' recorded in {tmp_path / 'state'}")
