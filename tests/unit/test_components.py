"""Component properties on Pulumi's mock runtime, for both backends and every
lifecycle state: what is declared, how storage is protected, how secrets travel."""

import base64
import json

import pytest

from components.docker import INIT_INPUT_PREFIX, InitFailed, _check_init_exit
from components.init_script import INIT_SCRIPT, init_fingerprint
from components.runtime import DockerRuntime, KubernetesRuntime
from components.secret_env import SECRET_ENV_FILE, with_secret_env
from components.spec import WorkspaceSpec
from stacks.config import StackConfig
from stacks.program import build
from tests.unit.pulumi_mocks import plain_strings, run_program

TOKEN = "ghp-very-secret-token"
KEY = "-----BEGIN KEY----- secret-file-body"
ENV_SECRET = "onedev-workspace-token-value"
PULL_PASSWORD = "registry-pull-password"
DOCKER = DockerRuntime(name="local", host="unix:///run/test-docker.sock", network_mode="none")
KUBE = KubernetesRuntime(name="cluster", kubeconfig="/tmp/kubeconfig", namespace="ws",
                         storage_class="fast", node_selector={"pool": "dev"})


def spec(**extra) -> WorkspaceSpec:
    return WorkspaceSpec.parse({
        "name": "app",
        "image": "stackspace/workspace:bookworm",
        "repository": {"url": "https://git.example.test/team/app.git", "ref": "main",
                       "credential": TOKEN},
        "env": {"EDITOR": "vim"},
        "files": [{"path": ".ssh/id", "content": KEY, "mode": "0600", "secret": True},
                  {"path": "notes.txt", "content": "hello"}],
        "resources": {"cpu": "2", "memory": "2Gi", "storage": "5Gi"},
        **extra,
    })


def cfg(runtime, running=True, deleting=False, **extra) -> StackConfig:
    return StackConfig(owner="alice", spec=spec(**extra), runtime=runtime, running=running,
                       deleting=deleting)


def assert_no_plain_secret(run):
    for reg in run.registrations:
        for text in plain_strings(reg.inputs):
            for secret in (TOKEN, KEY, base64.b64encode(KEY.encode()).decode(), ENV_SECRET,
                           PULL_PASSWORD):
                assert secret not in text, f"{reg.type} {reg.name} carries a secret in plain"


# --- Kubernetes -------------------------------------------------------------

def test_kubernetes_running_declares_storage_init_pod_policy_secret():
    run = run_program(build, cfg(KUBE))
    assert {"kubernetes:core/v1:PersistentVolumeClaim", "kubernetes:batch/v1:Job",
            "kubernetes:apps/v1:Deployment", "kubernetes:networking.k8s.io/v1:NetworkPolicy",
            "kubernetes:core/v1:Secret", "pulumi:providers:kubernetes",
            "stackspace:kubernetes:Workspace"} <= run.types()

    pvc = run.one("PersistentVolumeClaim")
    assert pvc.protect
    assert "spec.storageClassName" in pvc.ignore_changes
    p = pvc.plain()
    assert p["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert p["spec"]["storageClassName"] == "fast"
    assert p["metadata"]["namespace"] == "ws"
    assert p["metadata"]["labels"]["stackspace.dev/workspace"] == "app"
    assert p["metadata"]["labels"]["stackspace.dev/owner"] == "alice"

    provider = run.one("providers:kubernetes").plain()
    assert provider["clusterIdentifier"] == "cluster"


def test_kubernetes_pod_is_unprivileged_and_mounts_storage():
    run = run_program(build, cfg(KUBE))
    deployment = run.one("apps/v1:Deployment")
    assert any("Job" in d or "init" in d for d in deployment.dependencies)
    d = deployment.plain()["spec"]
    # One pod that Kubernetes brings back by itself; Recreate frees the RWO volume.
    assert d["replicas"] == 1 and d["strategy"] == {"type": "Recreate"}
    labels = d["template"]["metadata"]["labels"]
    assert labels == {"stackspace.dev/workspace": "app", "stackspace.dev/owner": "alice",
                      "stackspace.dev/role": "workspace"}
    assert d["selector"]["matchLabels"] == labels
    s = d["template"]["spec"]
    # The pause container is PID 1, so SIGTERM stops the workspace command.
    assert s["shareProcessNamespace"] is True
    assert s["automountServiceAccountToken"] is False
    assert s["nodeSelector"] == {"pool": "dev"}
    c = s["containers"][0]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["privileged"] is False
    assert c["volumeMounts"] == [{"name": "home", "mountPath": "/workspace"}]
    assert s["volumes"][0]["persistentVolumeClaim"]["claimName"].endswith("-home")
    assert c["resources"]["limits"] == {"cpu": "2000m", "memory": str(2 * 2**30)}
    assert c["env"] == [{"name": "EDITOR", "value": "vim"}]
    assert c["command"] == ["sleep", "infinity"]
    assert "deployment" in run.exports and "pod" not in run.exports


def test_kubernetes_init_job_reads_contents_and_credential_from_mounted_secrets():
    run = run_program(build, cfg(KUBE))
    job = run.one("batch/v1:Job").plain()
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["/bin/sh", "-c", INIT_SCRIPT]
    env = {e["name"]: e["value"] for e in c["env"]}  # every entry a plain, public value
    assert env["STACKSPACE_REPO_URL"] == "https://git.example.test/team/app.git"
    assert env["STACKSPACE_FILE_0_PATH"] == ".ssh/id"
    assert not any(k.endswith(("_DATA", "_DIGEST")) or "CREDENTIAL" in k for k in env)
    volume = next(v for v in pod["volumes"] if v["name"] == "init-input")["secret"]
    secret = next(r for r in run.by_type("core/v1:Secret")
                  if r.plain()["metadata"]["name"] == volume["secretName"])
    assert secret.plain()["stringData"] == {"credential": TOKEN, "f0": KEY, "f1": "hello"}
    assert {"name": "init-input", "mountPath": "/var/run/stackspace-init",
            "readOnly": True} in c["volumeMounts"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert_no_plain_secret(run)


def test_kubernetes_secret_env_and_image_credentials_travel_as_secret_refs():
    run = run_program(build, cfg(KUBE, secret_env={"ONEDEV_WORKSPACE_TOKEN": ENV_SECRET},
                                 image="registry.example.test:5000/team/ws:1",
                                 image_credentials={"username": "puller",
                                                    "password": PULL_PASSWORD}))
    secrets = {r.plain()["metadata"]["name"]: r.plain() for r in run.by_type("core/v1:Secret")}
    pull = next(s for s in secrets.values() if s["type"] == "kubernetes.io/dockerconfigjson")
    auth = json.loads(pull["stringData"][".dockerconfigjson"])["auths"]
    assert auth["registry.example.test:5000"]["username"] == "puller"
    assert auth["registry.example.test:5000"]["password"] == PULL_PASSWORD
    d = run.one("apps/v1:Deployment").plain()["spec"]["template"]["spec"]
    job = run.one("batch/v1:Job").plain()["spec"]["template"]["spec"]
    assert d["imagePullSecrets"] == job["imagePullSecrets"] == [
        {"name": pull["metadata"]["name"]}]
    env = {e["name"]: e for e in d["containers"][0]["env"]}
    ref = env["ONEDEV_WORKSPACE_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert secrets[ref["name"]]["stringData"] == {"ONEDEV_WORKSPACE_TOKEN": ENV_SECRET}
    assert env["EDITOR"] == {"name": "EDITOR", "value": "vim"}
    assert_no_plain_secret(run)


def test_kubernetes_network_policy_admits_no_ingress():
    run = run_program(build, cfg(KUBE))
    np = run.one("NetworkPolicy").plain()["spec"]
    assert np["policyTypes"] == ["Ingress"]
    assert np.get("ingress", []) == []
    assert np["podSelector"]["matchLabels"]["stackspace.dev/workspace"] == "app"


def test_kubernetes_stopped_keeps_storage_and_removes_pod():
    run = run_program(build, cfg(KUBE, running=False))
    assert run.by_type("apps/v1:Deployment") == []
    assert run.one("PersistentVolumeClaim").protect
    assert run.exports["running"] is False


def test_kubernetes_delete_path_lifts_protection_only_then():
    run = run_program(build, cfg(KUBE, running=True, deleting=True))
    assert run.one("PersistentVolumeClaim").protect is False
    assert run.by_type("apps/v1:Deployment") == []


def test_kubernetes_no_secret_object_without_secrets():
    c = StackConfig(owner="alice", spec=WorkspaceSpec.parse({"name": "plain"}), runtime=KUBE,
                    running=True)
    run = run_program(build, c)
    assert run.by_type("core/v1:Secret") == []


def test_init_name_is_stable_across_stop_start_and_changes_with_files():
    names = {run_program(build, cfg(KUBE, running=r)).one("Job").plain()["metadata"]["name"]
             for r in (True, False)}
    assert len(names) == 1
    # A failed Job run again keeps its name: the old one goes first, else the
    # new one would be applied onto it and awaited as failed again.
    assert run_program(build, cfg(KUBE)).one("Job").delete_before_replace
    changed = run_program(build, cfg(KUBE, files=[{"path": "x", "content": "y"}]))
    assert changed.one("Job").plain()["metadata"]["name"] not in names


def test_init_fingerprint_depends_only_on_repository_and_files():
    base = spec()
    same = [base.merged({"image": "other/image:2"}), base.merged({"env": {"A": "b"}}),
            base.merged({"command": ["bash", "-l"]}),
            base.merged({"resources": {"cpu": "4", "memory": "4Gi", "storage": "5Gi"}})]
    assert {init_fingerprint(s) for s in same} == {init_fingerprint(base)}
    changed = base.merged({"files": [{"path": "notes.txt", "content": "other"}]})
    assert init_fingerprint(changed) != init_fingerprint(base)


def init_step(runtime, retry_init=False):
    run = run_program(lambda c: build(c, retry_init=retry_init), cfg(runtime))
    if runtime is KUBE:
        return run.one("batch/v1:Job")
    return next(r for r in run.by_type("Container") if "-init-" in r.plain()["name"])


def test_init_ignores_image_changes_on_both_backends_unless_made_again():
    assert "spec.template.spec.containers[0].image" in init_step(KUBE).ignore_changes
    assert "image" in init_step(DOCKER).ignore_changes
    # A failed init made again (stacks.init_retry) takes today's image.
    assert init_step(KUBE, retry_init=True).ignore_changes == []
    assert init_step(DOCKER, retry_init=True).ignore_changes == []


# --- Docker -----------------------------------------------------------------

def test_docker_running_declares_volume_init_and_workspace():
    run = run_program(build, cfg(DOCKER))
    vol = run.one("docker:index/volume:Volume")
    assert vol.protect
    assert "labels" in vol.ignore_changes
    labels = {x["label"]: x["value"] for x in vol.plain()["labels"]}
    assert labels["stackspace.dev/workspace"] == "app"
    assert labels["stackspace.dev/owner"] == "alice"
    provider = run.one("providers:docker").plain()
    assert provider["host"] == "unix:///run/test-docker.sock"
    image = run.one("RemoteImage").plain()
    assert image["keepLocally"] in (True, "true")

    containers = {r.plain()["name"]: r for r in run.by_type("docker:index/container:Container")}
    assert len(containers) == 2
    ws = next(r for n, r in containers.items() if "-init-" not in n)
    init = next(r for n, r in containers.items() if "-init-" in n)
    w = ws.plain()
    assert w["user"] == "1000:1000"
    assert w["capabilities"] == {"drops": ["ALL"]}
    assert w["securityOpts"] == ["no-new-privileges:true"]
    assert w.get("privileged") in (False, None, "false")
    assert w["networkMode"] == "none"
    assert w["memory"] == 2048 and w["memorySwap"] == 2048
    assert w["cpuQuota"] == 200_000 and w["cpuPeriod"] == 100_000
    assert w["mounts"] == [{"target": "/workspace", "source": vol.plain()["name"],
                            "type": "volume"}]
    assert ws.delete_before_replace
    # Made stopped; a hook sets its pids limit, then starts it (components.workload_start).
    assert w["start"] in (False, "false") and "mustRun" in ws.ignore_changes
    assert ws.hooks == {"afterCreate": ["start-with-limits"], "afterUpdate": ["start-with-limits"]}
    assert not init.hooks and init.plain().get("start") in (None, True, "true")
    assert "EDITOR=vim" in w["envs"]
    # `command` replaces the image's ENTRYPOINT, as on Kubernetes.
    assert w["entrypoints"] == ["sleep", "infinity"] and "command" not in w
    i = init.plain()
    assert i["mustRun"] in (False, "false") and i["attach"] in (True, "true")
    assert i["entrypoints"] == ["/bin/sh", "-c", INIT_SCRIPT] and "command" not in i
    # Contents and the credential are uploaded files init removes, not env.
    assert not any("CREDENTIAL" in e or "_DATA=" in e for e in i["envs"])
    uploads = {u["file"]: u for u in i["uploads"]}
    assert uploads[f"{INIT_INPUT_PREFIX}credential"]["content"] == TOKEN
    assert uploads[f"{INIT_INPUT_PREFIX}f0"]["content"] == KEY
    assert uploads[f"{INIT_INPUT_PREFIX}f1"]["content"] == "hello"
    # Root-owned in the sticky /tmp: writable so that init (uid 1000) can empty them.
    assert {u["permissions"] for u in uploads.values()} == {"0666"}
    assert_no_plain_secret(run)


def test_docker_secret_env_and_registry_auth_are_secrets():
    run = run_program(build, cfg(DOCKER, secret_env={"ONEDEV_WORKSPACE_TOKEN": ENV_SECRET},
                                 image="127.0.0.1:5000/team/ws:1",
                                 image_credentials={"username": "puller",
                                                    "password": PULL_PASSWORD}))
    ws = next(r for r in run.by_type("Container") if "-init-" not in r.plain()["name"])
    # Not in the container's Env (docker inspect): a file the entrypoint exports.
    assert not any(ENV_SECRET in e for e in ws.plain()["envs"] or [])
    [upload] = ws.plain()["uploads"]
    assert upload["file"] == SECRET_ENV_FILE
    assert upload["content"] == f"ONEDEV_WORKSPACE_TOKEN={ENV_SECRET}\n"
    assert ws.plain()["entrypoints"] == with_secret_env(["sleep", "infinity"])
    # Provider inputs travel as JSON text; the whole list is a secret.
    [auth] = json.loads(run.one("providers:docker").plain()["registryAuth"])
    assert auth == {"address": "127.0.0.1:5000", "username": "puller",
                    "password": PULL_PASSWORD}
    assert_no_plain_secret(run)


def test_docker_stopped_keeps_volume_and_removes_container():
    run = run_program(build, cfg(DOCKER, running=False))
    names = [r.plain()["name"] for r in run.by_type("Container")]
    assert len(names) == 1 and "-init-" in names[0]
    assert run.one("Volume").protect
    assert run.exports["container"] is None


def test_docker_delete_path_lifts_protection():
    run = run_program(build, cfg(DOCKER, deleting=True))
    assert run.one("Volume").protect is False
    assert len(run.by_type("Container")) == 1


def test_docker_failed_init_fails_the_update_and_gates_the_workspace():
    # The check raises on a non-zero exit code (failing the update) ...
    with pytest.raises(InitFailed, match="exit code 12: .*clone failed"):
        _check_init_exit(12, "stackspace-init: cloning\nstackspace-init: clone failed\n")
    assert _check_init_exit(0) == 0
    # ... and the workspace container waits on it (its label carries the result).
    run = run_program(build, cfg(DOCKER), outputs={"init": {"exitCode": 0}})
    ws = next(r for r in run.by_type("Container") if "-init-" not in r.plain()["name"])
    labels = {x["label"]: x["value"] for x in ws.plain()["labels"]}
    assert labels["stackspace.dev/init-exit"] == "0"


def test_tls_runtime_reads_key_material_as_secret(tmp_path):
    for name in ("ca", "cert", "key"):
        (tmp_path / name).write_text(f"{name}-pem-{'secret' if name == 'key' else 'public'}")
    rt = DockerRuntime(name="remote", host="tcp://docker.example.test:2376",
                       ca_file=str(tmp_path / "ca"), cert_file=str(tmp_path / "cert"),
                       key_file=str(tmp_path / "key"))
    run = run_program(build, cfg(rt))
    provider = run.one("providers:docker")
    assert provider.plain()["keyMaterial"] == "key-pem-secret"
    assert "key-pem-secret" not in plain_strings(provider.inputs)


# --- Installations sharing a runtime --------------------------------------------

INSTALLATION = "0a1b2c3d"


def _labelled(run) -> dict[str, dict[str, str]]:
    """Every workspace object's labels, by resource name (Docker label lists and
    Kubernetes metadata alike); providers, images and components carry none."""
    found = {}
    for reg in run.registrations:
        p = reg.plain()
        if isinstance(p.get("labels"), list):
            found[reg.name] = {x["label"]: x["value"] for x in p["labels"]}
        elif isinstance(p.get("metadata"), dict):
            found[reg.name] = p["metadata"].get("labels") or {}
    return found


@pytest.mark.parametrize("runtime", [DOCKER, KUBE], ids=["docker", "kubernetes"])
def test_every_object_carries_the_installation_and_is_named_apart(runtime):
    extra = {"secret_env": {"T": ENV_SECRET}} if runtime is KUBE else {}
    ours = run_program(build, StackConfig(owner="alice", spec=spec(**extra), runtime=runtime,
                                          running=True, installation=INSTALLATION))
    legacy = run_program(build, cfg(runtime, **extra))
    labelled = _labelled(ours)
    expected = {"storage", "init", "workspace"} | (
        {"init-input", "env", "deny-ingress"} if runtime is KUBE else set())
    assert expected <= set(labelled)
    for name, labels in labelled.items():
        assert labels.get("stackspace.dev/installation") == INSTALLATION, name
    assert all("stackspace.dev/installation" not in labels
               for labels in _labelled(legacy).values())

    def names(run) -> set[str]:
        return {r.plain().get("name") or r.plain()["metadata"]["name"]
                for r in run.registrations if r.name in _labelled(run)}

    # No object name of one installation is another's (nor a legacy one's).
    assert not names(ours) & names(legacy)
    if runtime is KUBE:
        d = ours.one("apps/v1:Deployment").plain()["spec"]
        assert d["selector"]["matchLabels"]["stackspace.dev/installation"] == INSTALLATION
        np = ours.one("NetworkPolicy").plain()["spec"]["podSelector"]["matchLabels"]
        assert np["stackspace.dev/installation"] == INSTALLATION
        job = ours.one("batch/v1:Job").plain()["spec"]["template"]["metadata"]["labels"]
        assert job["stackspace.dev/installation"] == INSTALLATION
