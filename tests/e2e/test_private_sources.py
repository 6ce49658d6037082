"""A workspace from private sources, end to end on the real engine and Docker
Engine: the image pulled from a private registry with `image_credentials`,
the repository cloned over HTTPS from a git server that admits only one user
name (`repository.username` + `credential`). No secret stays in a container."""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest

from components.runtime import DockerRuntime
from components.spec import WorkspaceSpec
from stacks.naming import resource_base, stack_name
from tests.api.conftest import custom_service
from tests.e2e.private_servers import GitServer, Registry, git_https_server, private_registry
from tests.e2e.remote_helpers import labelled, operate, stackspace_exec
from tests.e2e.repo_image import BASE_IMAGE, make_repo
from tests.e2e.stack_helpers import assert_operator_preview_is_clean, converger
from tests.faults.harness import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("docker_provider")]


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[Registry]:
    with private_registry(tmp_path_factory.mktemp("registry"), "puller",
                          secrets.token_hex(12)) as reg:
        yield reg


@pytest.fixture(scope="module")
def git_server(tmp_path_factory) -> Iterator[GitServer]:
    repos = tmp_path_factory.mktemp("repos")
    make_repo(repos, {"README.md": "hello from a private server\n"})
    with git_https_server(tmp_path_factory.mktemp("git"), repos, "oauth2",
                          f"glpat-{secrets.token_hex(12)}") as server:
        yield server


def private_spec(name: str, image: str, registry: Registry, url: str,
                 git_server: GitServer) -> WorkspaceSpec:
    """A workspace on the private image, cloning `url` with the git server's login."""
    return WorkspaceSpec.parse({
        "name": name, "image": image,
        "image_credentials": {"username": registry.username, "password": registry.password},
        "repository": {"url": url, "ref": "main", "username": git_server.username,
                       "credential": git_server.password},
    })


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def private_image(docker_client, registry: Registry, git_server: GitServer) -> Iterator[str]:
    """BASE_IMAGE trusting the git server's CA, pushed to the private registry and
    removed locally, so the workspace can only get it with the registry login."""
    repo = f"{registry.address}/stackspace-test/private"
    tag = secrets.token_hex(4)
    container = docker_client.containers.create(BASE_IMAGE, command=["true"])
    try:
        container.put_archive("/etc", _tar({
            "gitconfig": b"[http]\n\tsslCAInfo = /etc/stackspace-test-ca.pem\n",
            "stackspace-test-ca.pem": Path(git_server.ca_pem).read_bytes()}))
        container.commit(repository=repo, tag=tag)
    finally:
        container.remove(force=True)
    auth = {"username": registry.username, "password": registry.password}
    for line in docker_client.images.push(repo, tag=tag, auth_config=auth, stream=True,
                                          decode=True):
        assert "error" not in line, line
    docker_client.images.remove(f"{repo}:{tag}")
    yield f"{repo}:{tag}"
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(f"{repo}:{tag}")


def test_private_image_and_repository_with_username(runner, docker_host, docker_client,
                                                    registry, git_server, private_image,
                                                    pulumi_settings):
    # The registry really is private: no pull without the login.
    with pytest.raises(docker.errors.APIError):
        docker_client.images.pull(private_image)

    owner, name = "alice", f"content-private-{secrets.token_hex(3)}"
    # Host networking: the init container reaches the git server on loopback.
    runtime = DockerRuntime(name="local", host=docker_host, network_mode="host")
    spec = private_spec(name, private_image, registry, f"{git_server.base_url}/app.git",
                        git_server)
    stack = stack_name(owner, name)
    converge = converger(runner, owner, runtime, stack)
    try:
        converge(spec, True)
        ws = docker_client.containers.get(resource_base(owner, name))
        code, out = ws.exec_run(["cat", "/workspace/README.md"], user="1000")
        assert (code, out) == (0, b"hello from a private server\n")
        # The clone's remote carries no credential, and no container keeps one.
        code, out = ws.exec_run(["git", "-C", "/workspace", "remote", "get-url", "origin"],
                                user="1000")
        assert out.decode().strip() == f"{git_server.base_url}/app.git"
        for c in docker_client.containers.list(
                all=True, filters={"label": f"stackspace.dev/workspace={name}"}):
            config = json.dumps(docker_client.api.inspect_container(c.id))
            assert git_server.password not in config and registry.password not in config
        assert_operator_preview_is_clean(runner, stack, git_server.password)
    finally:
        runner.delete(stack)


def test_repository_credential_without_the_required_username_fails_clearly(
        runner, docker_host, git_server, private_image, registry):
    owner, name = "alice", f"content-nouser-{secrets.token_hex(3)}"
    runtime = DockerRuntime(name="local", host=docker_host, network_mode="host")
    spec = WorkspaceSpec.parse({
        "name": name, "image": private_image,
        "image_credentials": {"username": registry.username, "password": registry.password},
        # No username: the credential answers both prompts, which this server refuses.
        "repository": {"url": f"{git_server.base_url}/app.git",
                       "credential": git_server.password},
    })
    stack = stack_name(owner, name)
    try:
        with pytest.raises(Exception, match="clone failed") as failed:
            converger(runner, owner, runtime, stack)(spec, True)
        assert git_server.password not in str(failed.value)
    finally:
        runner.delete(stack)


@pytest.fixture()
def cluster_trusts_registry(kube_cluster: Path, registry: Registry) -> Iterator[None]:
    """Let the test cluster's containerd pull from this test's registry over plain
    HTTP on loopback (containerd reads certs.d/<host>/hosts.toml on every pull);
    every other registry stays redirected to a closed port by scripts/test-cluster."""
    hosts = kube_cluster.parent / "config" / "certs.d" / registry.address
    hosts.mkdir(parents=True, exist_ok=True)
    (hosts / "hosts.toml").write_text(
        f'server = "http://{registry.address}"\n\n[host."http://{registry.address}"]\n'
        '  capabilities = ["pull", "resolve"]\n')
    yield
    shutil.rmtree(hosts, ignore_errors=True)


@pytest.mark.usefixtures("kubernetes_provider", "cluster_trusts_registry")
def test_private_image_on_kubernetes_is_pulled_with_an_image_pull_secret(
        runner, kube_cluster, registry, private_image):
    from kubernetes import client, config

    from components.runtime import KubernetesRuntime
    from tests.e2e.stack_helpers import ensure_namespace

    kube = config.new_client_from_config(config_file=str(kube_cluster))
    core = client.CoreV1Api(kube)
    namespace = ensure_namespace(core, "stackspace-e2e")
    owner, name = "alice", f"content-kpull-{secrets.token_hex(3)}"
    runtime = KubernetesRuntime(name="test-cluster", kubeconfig=str(kube_cluster),
                                namespace=namespace)
    spec = WorkspaceSpec.parse({
        "name": name, "image": private_image,
        "image_credentials": {"username": registry.username, "password": registry.password},
        "files": [{"path": "hello.txt", "content": "pulled\n"}],
        "resources": {"cpu": "250m", "memory": "128Mi", "storage": "16Mi"},
    })
    stack = stack_name(owner, name)
    try:
        converger(runner, owner, runtime, stack)(spec, True)
        selector = f"stackspace.dev/workspace={name},stackspace.dev/role=workspace"
        [pod] = [p for p in core.list_namespaced_pod(namespace, label_selector=selector).items
                 if p.metadata.deletion_timestamp is None]
        assert pod.status.phase == "Running"
        assert pod.spec.containers[0].image == private_image
        [pull] = pod.spec.image_pull_secrets
        secret = core.read_namespaced_secret(pull.name, namespace)
        assert secret.type == "kubernetes.io/dockerconfigjson"
        assert registry.password not in json.dumps(kube.sanitize_for_serialization(pod))
    finally:
        runner.delete(stack)


def test_a_clone_that_failed_while_the_git_server_was_down_runs_again_on_retry(
        runner, docker_host, docker_client, git_server, private_image, registry, tmp_path):
    """SPEC §3: a failed init never makes a workspace stuck. The git server is
    down during the create: it fails, naming the cause without the credential.
    The server comes back (same address and certificate): the retry clones."""
    served = tmp_path / "git"
    served.mkdir()
    for name in ("server.key", "server.pem"):  # the certificate the image trusts
        shutil.copy(git_server.ca_pem.parent / name, served / name)
    repos = tmp_path / "repos"
    repos.mkdir()
    make_repo(repos, {"README.md": "cloned on the second try\n"})
    port = free_port()
    owner, name = "alice", f"content-retry-{secrets.token_hex(3)}"
    runtime = DockerRuntime(name="local", host=docker_host, network_mode="host")
    spec = private_spec(name, private_image, registry, f"https://127.0.0.1:{port}/git/app.git",
                        git_server)
    stack = stack_name(owner, name)
    converge = converger(runner, owner, runtime, stack)
    try:
        with pytest.raises(Exception, match="clone failed: server unreachable") as failed:
            converge(spec, True)
        assert git_server.password not in str(failed.value)
        with git_https_server(served, repos, git_server.username, git_server.password,
                              port=port):
            converge(spec, True)  # what `start` runs: the failed init runs again
        ws = docker_client.containers.get(resource_base(owner, name))
        code, out = ws.exec_run(["cat", "/workspace/README.md"], user="1000")
        assert (code, out) == (0, b"cloned on the second try\n")
        (init,) = [c for c in docker_client.containers.list(
            all=True, filters={"label": f"stackspace.dev/workspace={name}"})
            if c.labels.get("stackspace.dev/role") == "init"]
        assert init.attrs["State"]["ExitCode"] == 0
        converge(spec, False)  # stop and start: the good init is not run again
        converge(spec, True)
        (again,) = [c for c in docker_client.containers.list(
            all=True, filters={"label": f"stackspace.dev/workspace={name}"})
            if c.labels.get("stackspace.dev/role") == "init"]
        assert again.id == init.id
    finally:
        runner.delete(stack)


def test_a_wrong_credential_is_corrected_by_patch_and_secrets_rotate(
        tmp_path, docker_host, docker_client, pulumi_settings, git_server, private_image,
        registry):
    """Through the API, as a user: a create with an expired credential fails,
    naming the cause and not the credential; until the first clone `repository`
    can be PATCHed, and the update clones; after it, `repository` is fixed.
    `secret_env` rotates by PATCH, and the user's files stay."""
    name = f"content-fix-{secrets.token_hex(3)}"
    url = f"{git_server.base_url}/app.git"
    wrong = f"glpat-expired-{secrets.token_hex(6)}"
    runtime = {"name": "local", "type": "docker", "host": docker_host, "network_mode": "host"}
    with custom_service(tmp_path, docker_host, pulumi_settings, runtimes=[runtime]) as svc:
        try:
            op = operate(svc, "POST", "", json={
                "name": name, "image": private_image,
                "image_credentials": {"username": registry.username,
                                      "password": registry.password},
                "repository": {"url": url, "ref": "main", "username": git_server.username,
                               "credential": wrong},
                "secret_env": {"API_TOKEN": "first"}})
            assert op["status"] == "failed", op
            assert "clone failed: authentication refused" in op["error"], op["error"]
            assert wrong not in op["error"]
            fixed = {"url": url, "ref": "main", "username": git_server.username,
                     "credential": git_server.password}
            op = operate(svc, "PATCH", f"/{name}", json={"repository": fixed})
            assert op["status"] == "succeeded", op.get("error")
            ws = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice).json()
            assert ws["state"] == "running" and ws["outputs"]["initialized"] is True
            assert git_server.password not in json.dumps(ws)
            assert stackspace_exec(svc, name, "cat", "README.md").stdout == \
                b"hello from a private server\n"
            assert stackspace_exec(svc, name, "sh", "-c", "echo mine > notes").returncode == 0

            r = svc.call("PATCH", f"/api/v1/workspaces/{name}", svc.alice,
                         json={"repository": {"url": f"{git_server.base_url}/other.git"}})
            assert r.status_code == 422, r.text
            assert [e["field"] for e in r.json()["errors"]] == ["repository"]

            op = operate(svc, "PATCH", f"/{name}", json={"secret_env": {"API_TOKEN": "second"}})
            assert op["status"] == "succeeded", op.get("error")
            r = stackspace_exec(svc, name, "sh", "-c", 'echo "$API_TOKEN"; cat notes')
            assert r.stdout == b"second\nmine\n"
        finally:
            operate(svc, "DELETE", f"/{name}?queue=true")
    assert labelled(docker_client, "alice", name) == ([], [])
