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
