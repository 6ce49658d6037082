"""The Docker backend end to end on the real Pulumi engine and Docker Engine:
create from a git repository, stop, start, update and delete a workspace, and
check what a user would see at each step."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import tarfile

import docker.errors
import pytest

from components.docker import INIT_INPUT_PREFIX
from components.runtime import DockerRuntime
from components.secret_env import with_secret_env
from components.spec import MAX_FILE_BYTES, WorkspaceSpec
from stacks.automation import StorageAtRisk
from stacks.config import StackConfig
from stacks.naming import resource_base, stack_name
from tests.e2e.repo_image import BASE_IMAGE, REPO_URL, docker_repo_image, make_repo
from tests.e2e.stack_helpers import assert_operator_preview_is_clean, converger

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("docker_provider")]


@pytest.fixture(scope="module")
def repo_image(docker_client, tmp_path_factory) -> str:
    bare = make_repo(tmp_path_factory.mktemp("repo"), {"README.md": "hello from git\n"})
    return docker_repo_image(docker_client, bare, f"stackspace-test/repo:{secrets.token_hex(4)}")


def sh(container, cmd: str) -> str:
    code, out = container.exec_run(["sh", "-c", cmd], user="1000")
    assert code == 0, out
    return out.decode()


def test_workspace_lifecycle_keeps_files_until_delete(runner, docker_host, docker_client,
                                                       repo_image, pulumi_settings):
    owner, name = "alice", f"life-{secrets.token_hex(3)}"
    runtime = DockerRuntime(name="local", host=docker_host, network_mode="none")
    spec = WorkspaceSpec.parse({
        "name": name, "image": repo_image,
        "repository": {"url": REPO_URL, "ref": "main", "credential": "not-needed-token"},
        "env": {"GREETING": "one"},
        "files": [{"path": ".config/app.toml", "content": "k = 1\n", "mode": "0600"}],
    })
    stack = stack_name(owner, name)
    base = resource_base(owner, name)

    converge = converger(runner, owner, runtime, stack)

    # create: the repository and files are in the workspace
    result = converge(spec, True)
    assert result.outputs["container"] == base
    ws = docker_client.containers.get(base)
    assert ws.status == "running"
    assert sh(ws, "cat /workspace/README.md") == "hello from git\n"
    assert sh(ws, "stat -c %a /workspace/.config/app.toml").strip() == "600"
    assert sh(ws, "id -u").strip() == "1000"
    assert ws.labels["stackspace.dev/workspace"] == name
    assert ws.labels["stackspace.dev/owner"] == owner
    host_config = ws.attrs["HostConfig"]
    assert host_config["CapDrop"] == ["ALL"] and not host_config["Privileged"]
    assert "no-new-privileges:true" in host_config["SecurityOpt"]
    sh(ws, "echo mine > /workspace/mine.txt")

    # an operator's preview of the same stack shows no changes
    assert_operator_preview_is_clean(runner, stack, "not-needed-token")

    # stop: the container is gone, the volume stays
    converge(spec, False)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(base)
    assert docker_client.volumes.get(f"{base}-home")

    # start: same storage, init does not clobber it
    converge(spec, True)
    ws = docker_client.containers.get(base)
    assert sh(ws, "cat /workspace/mine.txt") == "mine\n"

    # update image and env: the workspace is recreated, the files remain
    old_id = ws.id
    updated = spec.merged({"env": {"GREETING": "two"}, "image": BASE_IMAGE})
    converge(updated, True)
    ws = docker_client.containers.get(base)
    assert ws.id != old_id
    assert ws.attrs["Config"]["Image"] == BASE_IMAGE
    assert sh(ws, "echo $GREETING") == "two\n"
    assert sh(ws, "cat /workspace/mine.txt") == "mine\n"

    # delete: storage and stack are gone
    runner.delete(stack)
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(f"{base}-home")
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(base)
    assert not runner.exists(stack)


def test_failed_clone_fails_the_create_and_keeps_no_workspace(runner, docker_host,
                                                              docker_client, repo_image):
    owner, name = "alice", f"bad-{secrets.token_hex(3)}"
    runtime = DockerRuntime(name="local", host=docker_host, network_mode="none")
    spec = WorkspaceSpec.parse({"name": name, "image": repo_image,
                                "repository": {"url": "file:///srv/missing.git"}})
    stack = stack_name(owner, name)
    cfg = StackConfig(owner=owner, spec=spec, runtime=runtime, running=True)
    with pytest.raises(Exception, match="init failed"):
        runner.apply(cfg, stack)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(resource_base(owner, name))
    runner.delete(stack)
    assert not runner.exists(stack)


def test_plan_that_loses_storage_is_refused_and_changes_nothing(
        runner, docker_host, docker_client, repo_image):
    """A plan that would delete the volume is refused by stackspace's guard and
    changes nothing: not the state, not the stack config, not the volume.
    The volume is unprotected and renamed in state first (as an operator's
    `pulumi state unprotect` / `state rename` leave it), so the plan deletes
    it and Pulumi's own `protect` check cannot be what refuses."""
    import json
    import os
    import subprocess

    owner, name = "alice", f"guard-{secrets.token_hex(3)}"
    spec = WorkspaceSpec.parse({"name": name, "image": repo_image})
    stack = stack_name(owner, name)
    local = DockerRuntime(name="local", host=docker_host, network_mode="none")
    stopped = StackConfig(owner=owner, spec=spec, runtime=local, running=False)
    runner.apply(stopped, stack)
    volume = docker_client.volumes.get(f"{resource_base(owner, name)}-home")

    def pulumi_cli(*args: str) -> str:
        env = {**os.environ, **runner.settings.env()}
        proc = subprocess.run(["pulumi", *args, "--stack", stack, "--non-interactive"],
                              cwd=runner.work_dir, env=env, capture_output=True, text=True,
                              check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    def resources() -> list[dict]:
        return json.loads(pulumi_cli("stack", "export"))["deployment"]["resources"]

    (urn,) = [r["urn"] for r in resources() if r["type"] == "docker:index/volume:Volume"]
    pulumi_cli("state", "unprotect", urn, "--yes")
    pulumi_cli("state", "rename", urn, "storage-was", "--yes")
    before_state, before_config = resources(), pulumi_cli("config", "--json")

    running = StackConfig(owner=owner, spec=spec, runtime=local, running=True)
    with pytest.raises(StorageAtRisk) as refused:
        runner.apply(running, stack)
    # The guard read the plan: a delete of the (unprotected) volume.
    assert any(op == "delete" and step.endswith("::storage-was")
               for op, step in refused.value.steps), refused.value.steps
    assert docker_client.volumes.get(volume.name).id == volume.id
    assert resources() == before_state
    assert pulumi_cli("config", "--json") == before_config
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(resource_base(owner, name))
    runner.delete(stack)
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(volume.name)


def init_containers(docker_client, name: str) -> list:
    return docker_client.containers.list(all=True, filters={
        "label": [f"stackspace.dev/workspace={name}", "stackspace.dev/role=init"]})


def test_user_edits_survive_updates_and_only_changed_entries_are_rewritten(
        runner, docker_host, docker_client, repo_image):
    owner, name = "alice", f"content-edit-{secrets.token_hex(3)}"
    runtime = DockerRuntime(name="local", host=docker_host, network_mode="none")
    big = ("0123456789abcdef" * (MAX_FILE_BYTES // 16))  # exactly the limit
    files = [{"path": "notes/todo.txt", "content": "spec todo\n"},
             {"path": "cfg/app.toml", "content": "k = 1\n"},
             {"path": "data/big.txt", "content": big, "secret": True, "mode": "0600"}]
    spec = WorkspaceSpec.parse({"name": name, "image": repo_image, "files": files})
    stack = stack_name(owner, name)
    base = resource_base(owner, name)
    converge = converger(runner, owner, runtime, stack)

    converge(spec, True)
    ws = docker_client.containers.get(base)
    # A file at the size limit travels intact (no 128 KiB env-string cap).
    assert sh(ws, "sha256sum < /workspace/data/big.txt").split()[0] == \
        hashlib.sha256(big.encode()).hexdigest()
    assert sh(ws, "stat -c %a /workspace/data/big.txt").strip() == "600"
    sh(ws, "echo user todo > /workspace/notes/todo.txt; echo mine > /workspace/notes/mine.txt")
    [first_init] = init_containers(docker_client, name)

    # image, then env: no init run, no write to storage
    spec = spec.merged({"image": BASE_IMAGE})
    converge(spec, True)
    spec = spec.merged({"env": {"GREETING": "hi"}})
    converge(spec, True)
    # a restart: nothing rewritten either
    docker_client.containers.get(base).restart()
    assert [c.id for c in init_containers(docker_client, name)] == [first_init.id]
    ws = docker_client.containers.get(base)
    assert sh(ws, "cat /workspace/notes/todo.txt /workspace/notes/mine.txt") == \
        "user todo\nmine\n"

    # files changed for another path: only that entry is written
    spec = spec.merged({"files": [files[0], {**files[1], "content": "k = 2\n"}, files[2]]})
    converge(spec, True)
    [second_init] = init_containers(docker_client, name)
    assert second_init.id != first_init.id
    logs = second_init.logs().decode()
    assert "wrote cfg/app.toml" in logs
    assert "wrote notes/todo.txt" not in logs and "wrote data/big.txt" not in logs
    ws = docker_client.containers.get(base)
    assert sh(ws, "cat /workspace/cfg/app.toml /workspace/notes/todo.txt "
                  "/workspace/notes/mine.txt") == "k = 2\nuser todo\nmine\n"
    runner.delete(stack)


def input_left_in(container, path: str) -> bytes:
    """What is left of an init input file in the container's filesystem (b'' if gone)."""
    try:
        chunks, _ = container.get_archive(path)
    except docker.errors.NotFound:
        return b""
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        member = tar.next()
        return tar.extractfile(member).read() if member and member.isfile() else b""


def test_no_secret_lingers_in_containers_or_storage(runner, docker_host, docker_client,
                                                    repo_image, pulumi_settings):
    owner, name = "alice", f"content-secret-{secrets.token_hex(3)}"
    runtime = DockerRuntime(name="local", host=docker_host, network_mode="none")
    token, body, env_value = (f"{kind}-{secrets.token_hex(12)}"
                              for kind in ("repo-token", "file-body", "env-token"))
    spec = WorkspaceSpec.parse({
        "name": name, "image": repo_image,
        "repository": {"url": REPO_URL, "credential": token, "username": "oauth2"},
        "secret_env": {"ONEDEV_WORKSPACE_TOKEN": env_value},
        "files": [{"path": ".ssh/id", "content": body, "mode": "0600", "secret": True}],
    })
    stack = stack_name(owner, name)
    converge = converger(runner, owner, runtime, stack)
    converge(spec, True)

    ws = docker_client.containers.get(resource_base(owner, name))
    [init] = init_containers(docker_client, name)
    # The exited init container's config holds neither value, and the files it
    # was given are gone from its filesystem.
    init_config = json.dumps(docker_client.api.inspect_container(init.id))
    assert token not in init_config and body not in init_config
    assert hashlib.sha256(body.encode()).hexdigest() not in init_config
    for input_name in ("credential", "f0"):
        assert input_left_in(init, f"{INIT_INPUT_PREFIX}{input_name}") == b""
    # No object the workspace owns shows a secret in `docker inspect`, the
    # secret env included (SPEC §3): it is a file the entrypoint exports.
    for c in docker_client.containers.list(
            all=True, filters={"label": f"stackspace.dev/workspace={name}"}):
        config = json.dumps(docker_client.api.inspect_container(c.id))
        assert token not in config and body not in config and env_value not in config
    # The main command has it, and so does an exec the way the proxy runs it.
    main = sh(ws, "for p in /proc/[0-9]*; do case $(tr '\\0' ' ' < $p/cmdline) in "
                  "'sleep infinity '*) tr '\\0' '\\n' < $p/environ;; esac; done")
    assert f"ONEDEV_WORKSPACE_TOKEN={env_value}" in main.splitlines()
    code, out = ws.exec_run(with_secret_env(["sh", "-c", 'printf %s "$ONEDEV_WORKSPACE_TOKEN"']),
                            user="1000")
    assert (code, out.decode()) == (0, env_value)
    volume = json.dumps(docker_client.api.inspect_volume(f"{resource_base(owner, name)}-home"))
    assert token not in volume and body not in volume and env_value not in volume
    # The whole storage: the secret file holds its body, no other file holds a secret.
    assert sh(ws, "cat /workspace/.ssh/id") == body
    for value in (token, body, env_value):
        code, out = ws.exec_run(["grep", "-rlF", "--exclude=id", value, "/workspace"],
                                user="1000")
        assert code == 1, out  # 1: no match anywhere
    assert_operator_preview_is_clean(runner, stack, token)
    runner.delete(stack)


@pytest.fixture(scope="module")
def stubborn_image(docker_client, repo_image) -> str:
    """The repository image with an ENTRYPOINT that ignores its arguments and exits."""
    container = docker_client.containers.create(repo_image, command=["true"])
    try:
        tag = f"stackspace-test/stubborn:{secrets.token_hex(4)}"
        container.commit(repository=tag.split(":")[0], tag=tag.split(":")[1], changes=[
            'ENTRYPOINT ["/bin/sh", "-c", "echo entrypoint ignores its args; exit 7"]'])
    finally:
        container.remove(force=True)
    return tag


def test_command_replaces_the_image_entrypoint(runner, docker_host, docker_client,
                                               stubborn_image):
    owner, name = "alice", f"content-entry-{secrets.token_hex(3)}"
    runtime = DockerRuntime(name="local", host=docker_host, network_mode="none")
    spec = WorkspaceSpec.parse({
        "name": name, "image": stubborn_image,
        "repository": {"url": REPO_URL},
        "files": [{"path": "hello.txt", "content": "hi\n"}],
        "command": ["sh", "-c", "echo started > /tmp/started; exec sleep infinity"]})
    stack = stack_name(owner, name)
    runner.apply(StackConfig(owner=owner, spec=spec, runtime=runtime, running=True), stack)
    ws = docker_client.containers.get(resource_base(owner, name))
    assert ws.status == "running"
    assert sh(ws, "cat /tmp/started /workspace/hello.txt /workspace/README.md") == \
        "started\nhi\nhello from git\n"
    runner.delete(stack)
