"""The install program (deploy/) on Pulumi's mock runtime: what it asks the
cluster for, and the settings it refuses before asking anything."""

from __future__ import annotations

import sys
from pathlib import Path

import pulumi
import pytest

from tests.unit.pulumi_mocks import _Mocks, plain_strings, run_program

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy"))
import install_program  # noqa: E402
import settings as install_settings  # noqa: E402

DB_URL = "postgresql://stackspace:db-password-123@db.example:5432/stackspace"
SECRET_VALUES = ["pass-123", "ticket-456", "store-789", "admin-abc", DB_URL]


def settings(**overrides) -> install_settings.Settings:
    values = dict(
        namespace="ss", workspace_namespace="ss-ws", image="localhost/stackspace/stackspace:t",
        create_namespaces=True, service_replicas=2, proxy_replicas=2, service_port=8080,
        proxy_port=8081, proxy_url="ws://proxy.example/exec", host_network=False,
        api_server=None, storage_class=None, service_type="ClusterIP", kubeconfig=None,
        context=None, render_dir=None,
        passphrase=pulumi.Output.secret("pass-123"), ticket_key=pulumi.Output.secret("ticket-456"),
        store_key=pulumi.Output.secret("store-789"), admin_token=pulumi.Output.secret("admin-abc"),
        database_url=pulumi.Output.secret(DB_URL),
        backend_url=pulumi.Output.secret("postgres://pulumi:pw@db.example/state"))
    values.update(overrides)
    return install_settings.Settings(**values)


def run(**overrides):
    return run_program(lambda _: install_program.deploy(settings(**overrides)), None)


def test_rights_are_roles_in_the_workspace_namespace_only():
    r = run()
    assert not [x for x in r.registrations if "ClusterRole" in x.type]
    roles = {x.plain()["metadata"]["name"]: x.plain() for x in r.by_type("/v1:Role")}
    assert set(roles) == {"stackspace-service", "stackspace-proxy"}
    assert {role["metadata"]["namespace"] for role in roles.values()} == {"ss-ws"}
    for binding in r.by_type("/v1:RoleBinding"):
        b = binding.plain()
        assert b["metadata"]["namespace"] == "ss-ws"
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": b["metadata"]["name"],
                                  "namespace": "ss"}]
    # The proxy may find pods, exec into them and forward ports, nothing more.
    assert roles["stackspace-proxy"]["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get", "create"]},
        {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get", "create"]}]
    service_resources = {res for rule in roles["stackspace-service"]["rules"]
                         for res in rule["resources"]}
    assert not {"pods/exec", "pods/portforward", "namespaces"} & service_resources


def test_service_and_proxy_are_separate_non_root_deployments_with_their_own_accounts():
    r = run()
    deployments = {d.plain()["metadata"]["name"]: d.plain() for d in r.by_type("Deployment")}
    assert set(deployments) == {"stackspace-service", "stackspace-proxy"}
    for name, d in deployments.items():
        pod = d["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
        assert d["spec"]["replicas"] == 2
    services = {s.plain()["metadata"]["name"] for s in r.by_type("core/v1:Service")}
    assert services == {"stackspace-service", "stackspace-proxy"}
    # The proxy gets the ticket key alone, not the store's or the engine's secrets.
    proxy_pod = deployments["stackspace-proxy"]["spec"]["template"]["spec"]
    secret_volume = next(v for v in proxy_pod["volumes"] if "secret" in v)
    assert secret_volume["secret"]["items"] == [{"key": "ticket-key", "path": "ticket-key"}]


def test_secrets_reach_pods_only_through_the_secret():
    r = run()
    secret = r.one("core/v1:Secret")
    assert set(secret.plain()["stringData"]) == {
        "passphrase", "ticket-key", "store.key", "admin-token", "database-url", "backend-url"}
    for reg in r.registrations:
        leaked = [v for v in SECRET_VALUES if any(v in s for s in plain_strings(reg.inputs))]
        assert leaked == [], f"{reg.type} {reg.name} carries a secret in the clear"
    for d in r.by_type("Deployment"):
        env = {e["name"]: e for e in d.plain()["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["STACKSPACE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "stackspace-secrets", "key": "database-url"}


@pytest.mark.parametrize(("config", "field"), [
    ({"serviceReplicas": "2"}, "serviceReplicas"),
    ({"proxyReplicas": "2"}, "proxyReplicas"),
    ({"serviceReplicas": "2", "databaseUrl": "postgresql://db/s"}, "serviceReplicas"),
    ({"workspaceNamespace": "ss"}, "workspaceNamespace"),
    ({"namespace": "Not_A_Label"}, "namespace"),
    ({"apiServer": "no-port"}, "apiServer"),
    ({"proxyUrl": "http://x/exec"}, "proxyUrl"),
    ({"dataSize": "lots"}, "dataSize"),
    ({"dataSize": "500m"}, "dataSize"),
    ({"dataSize": "512Ki"}, "dataSize"),
    ({"dataStorageClass": "Fast_SSD"}, "dataStorageClass"),
    ({"storageClass": "no spaces"}, "storageClass"),
])
def test_bad_settings_name_the_key(config, field):
    pulumi.runtime.set_mocks(_Mocks({}), project="stackspace-install")
    base = {"namespace": "ss", "image": "img", "passphrase": "p", "ticketKey": "t",
            "storeKey": "s", "adminToken": "a"}
    pulumi.runtime.set_all_config(
        {f"stackspace-install:{k}": v for k, v in {**base, **config}.items()})
    try:
        with pytest.raises(ValueError, match=f"^{field}:"):
            install_settings.load()
    finally:
        pulumi.runtime.set_all_config({})


# Without a database, or without a Pulumi backend, the data dir holds what must
# outlive the pod (SQLite store, file:// state): the embedded install.
EMBEDDED = dict(database_url=None, backend_url=None, service_replicas=1, proxy_replicas=1)


def service_pod(r) -> dict:
    return next(d.plain() for d in r.by_type("Deployment")
                if d.name == "service")["spec"]["template"]["spec"]


@pytest.mark.parametrize("overrides", [
    EMBEDDED,
    # A database but no backend: the workspaces' Pulumi state is still local files.
    {"backend_url": None, "service_replicas": 1, "proxy_replicas": 1},
])
def test_local_state_lives_on_a_protected_claim_with_one_pod_at_a_time(overrides):
    r = run(**overrides)
    claim = r.one("PersistentVolumeClaim")
    assert claim.protect is True
    assert {"spec.storageClassName", "spec.accessModes", "metadata.name",
            "metadata.namespace"} <= set(claim.ignore_changes)
    spec = claim.plain()
    assert spec["metadata"]["name"] == "stackspace-data"
    assert spec["metadata"]["namespace"] == "ss"
    assert spec["spec"] == {"accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}}}
    pod = service_pod(r)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"] == {"name": "data",
                               "persistentVolumeClaim": {"claimName": "stackspace-data"}}
    assert not [v for v in pod["volumes"] if "emptyDir" in v]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["data"] == install_program.DATA_DIR
    # The volume's files belong to the service's user, without a chown of
    # the whole state at each start.
    assert pod["securityContext"]["fsGroup"] == 10001
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    service = next(d for d in r.by_type("Deployment") if d.name == "service")
    assert service.plain()["spec"]["replicas"] == 1
    assert service.plain()["spec"]["strategy"] == {"type": "Recreate"}
    # A switch of strategy replaces the Deployment (the API server refuses it in place).
    assert service.replace_on_changes == ["spec.strategy"]
    assert service.delete_before_replace is True
    # Deleting the namespace would delete the claim: protected with it.
    assert {n.name: n.protect for n in r.by_type("Namespace")} == {
        "namespace": True, "workspace-namespace": True}


def test_the_data_volume_takes_its_size_and_class():
    r = run(**EMBEDDED, data_size="20Gi", data_storage_class="fast-ssd")
    assert r.one("PersistentVolumeClaim").plain()["spec"] == {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}},
        "storageClassName": "fast-ssd"}


def test_on_the_node_network_a_pod_stops_before_its_successor_binds_the_port():
    r = run(host_network=True)
    for d in r.by_type("Deployment"):
        assert d.plain()["spec"]["strategy"] == {"type": "Recreate"}, d.name
        assert d.replace_on_changes == ["spec.strategy"]


def test_with_a_database_and_a_backend_nothing_is_kept_in_the_pod():
    r = run()
    assert r.by_type("PersistentVolumeClaim") == []
    pod = service_pod(r)
    assert {"name": "data", "emptyDir": {}} in pod["volumes"]
    for d in r.by_type("Deployment"):
        assert "strategy" not in d.plain()["spec"]
    assert {n.name: n.protect for n in r.by_type("Namespace")} == {
        "namespace": False, "workspace-namespace": False}


def load_settings(config: dict[str, str]) -> install_settings.Settings:
    pulumi.runtime.set_mocks(_Mocks({}), project="stackspace-install")
    base = {"namespace": "ss", "image": "img", "passphrase": "p", "ticketKey": "t",
            "storeKey": "s", "adminToken": "a"}
    pulumi.runtime.set_all_config(
        {f"stackspace-install:{k}": v for k, v in {**base, **config}.items()})
    try:
        return install_settings.load()
    finally:
        pulumi.runtime.set_all_config({})


@pytest.mark.parametrize(("config", "size", "storage_class"), [
    ({}, "1Gi", None),
    ({"dataSize": "5Gi"}, "5Gi", None),
    ({"storageClass": "standard"}, "1Gi", "standard"),
    ({"storageClass": "standard", "dataStorageClass": "fast.ssd"}, "1Gi", "fast.ssd"),
])
def test_data_volume_settings(config, size, storage_class):
    s = load_settings(config)
    assert (s.data_size, s.data_storage_class) == (size, storage_class)
    assert s.keeps_local_state


def test_the_service_reaches_the_proxy_through_its_cluster_service():
    """Clients get `proxyUrl` (an ingress); the service's own execs (the file API)
    go to the proxy's Service, or loopback on the node's network."""
    import json

    got: list[dict] = []
    for overrides in ({"namespace": "team"}, {"host_network": True}):
        run_program(lambda _, o=overrides: got.append(
            json.loads(install_program.service_config(settings(**o)))), None)
    assert [c["proxy_url"] for c in got] == ["ws://proxy.example/exec"] * 2
    assert [c["proxy_internal_url"] for c in got] == [
        "ws://stackspace-proxy.team.svc:8081/exec", "ws://127.0.0.1:8081/exec"]
