"""The Docker backend: one workspace as a named volume, an init container and
the workspace container, on the runtime's Docker Engine (local socket, TLS
tcp:// or ssh://).

The volume is protected unless the delete path asked otherwise; its inputs are
fixed at create (labels from owner, name and installation only), so no update can replace it.
"""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_docker as docker

from components.base import WorkspaceInputs, cpu_cores, memory_bytes
from components.clients import check_ssh_host_key, docker_client
from components.egress import HOLDER_IMAGE, HOLDER_SCRIPT, holder_args, parse_allowlist
from components.init_script import INIT_SCRIPT, init_failure_message, init_fingerprint, init_inputs
from components.runtime import DockerRuntime, docker_network
from components.secret_env import SECRET_ENV_FILE, render_secret_env, with_secret_env
from components.spec import (
    WORKSPACE_GID,
    WORKSPACE_ROOT,
    WORKSPACE_UID,
    WorkspaceSpec,
    registry_host,
)
from components.workload_start import start_with_limits

CPU_PERIOD = 100_000  # microseconds
# Init's input files go into the init container's own filesystem (not the
# volume). The provider can only upload root-owned files (its owner option
# needs the daemon to resolve the container's user, which fails for
# "uid:gid"), and the sticky /tmp keeps uid 1000 from deleting them, so they
# are writable and init empties them once read: nothing secret stays in the
# exited container.
INIT_INPUT_PREFIX = "/tmp/stackspace-init-"  # noqa: S108 - inside the container

HARDENING = {
    "capabilities": {"drops": ["ALL"]},
    "security_opts": ["no-new-privileges:true"],
    "privileged": False,
}


def memory_mb(spec: WorkspaceSpec) -> int:
    return max(memory_bytes(spec) // 2**20, 16)


class InitFailed(Exception):
    """The init container exited non-zero (clone or file write failed)."""


def _check_init_exit(code: int | None, logs: str | None = None) -> int | None:
    if code not in (None, 0):
        raise InitFailed(init_failure_message(code, logs))
    return code


def _provider(runtime: DockerRuntime, parent: pulumi.Resource,
              registry_auth: list[dict] | None = None) -> docker.Provider:
    if runtime.host.startswith("ssh://"):
        check_ssh_host_key(runtime)  # a clear error naming the runtime; nothing created
    tls: dict = {}
    if runtime.host.startswith("tcp://"):
        tls = {
            "ca_material": Path(runtime.ca_file or "").read_text(),
            "cert_material": Path(runtime.cert_file or "").read_text(),
            "key_material": pulumi.Output.secret(Path(runtime.key_file or "").read_text()),
        }
    return docker.Provider("docker", host=runtime.host, ssh_opts=ssh_options(runtime),
                           registry_auth=registry_auth,
                           opts=pulumi.ResourceOptions(parent=parent), **tls)


def ssh_options(runtime: DockerRuntime) -> list[str] | None:
    """OpenSSH options for the provider's `ssh ... docker system dial-stdio`: explicit
    files (ssh reads the passwd home's ~/.ssh, not $HOME), strict host keys, no prompts."""
    if not runtime.host.startswith("ssh://"):
        return None
    opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=30"]
    if runtime.ssh_identity_file:
        opts += ["-i", runtime.ssh_identity_file, "-o", "IdentitiesOnly=yes"]
    if runtime.ssh_known_hosts_file:
        opts += ["-o", f"UserKnownHostsFile={runtime.ssh_known_hosts_file}",
                 "-o", "GlobalKnownHostsFile=/dev/null"]
    return opts


def _registry_auth(spec: WorkspaceSpec) -> list[dict] | None:
    """The provider's login for pulling a private `image` (password as a secret)."""
    creds = spec.image_credentials
    if creds is None:
        return None
    return [{"address": registry_host(spec.image), "username": creds.username,
             "password": pulumi.Output.secret(creds.password)}]


def _start_hook(runtime: DockerRuntime) -> pulumi.ResourceHook:
    """Starts the workspace container the provider made stopped, once its
    pids limit is set (components.workload_start)."""
    def start(args: pulumi.ResourceHookArgs) -> None:
        client = docker_client(runtime)
        try:
            start_with_limits(client, args.id, runtime.pids_limit)
        finally:
            client.close()
    return pulumi.ResourceHook("start-with-limits", start)


def _workspace_network(ws: DockerWorkspace, runtime: DockerRuntime, spec: WorkspaceSpec,
                       labels: list[dict], popts: pulumi.ResourceOptions) -> pulumi.Input[str]:
    """The workspace container's network_mode. With an outbound allowlist
    (components.egress): the namespace of a network holder container on the
    runtime's network, which alone has NET_ADMIN and sets the iptables rules
    there (the workspace joins without it, so it cannot undo them). A new
    holder (changed rules) replaces the workspace, which must join it; both
    exist only while running, so stop and start remake them and storage is
    never involved. A holder that restarts by itself leaves the workspace with
    no network at all (its namespace loses its interface) until the next
    operation restarts it (components.workload_start)."""
    if runtime.egress_allow is None:
        return docker_network(runtime)
    rules = parse_allowlist(list(runtime.egress_allow))
    ws.holder = docker.Container(
        "network",
        name=f"{ws.base_name}-net",
        hostname=spec.name,
        image=HOLDER_IMAGE,
        entrypoints=["/bin/sh", "-c", HOLDER_SCRIPT, "stackspace-egress", *holder_args(rules)],
        network_mode=docker_network(runtime),
        # As Docker reports it back (no drift): CAP_ prefixed.
        capabilities={"drops": ["ALL"], "adds": ["CAP_NET_ADMIN"]},
        security_opts=["no-new-privileges:true"],
        privileged=False,
        memory=32,  # MB; swap equal to memory means no swap (as the workspace)
        memory_swap=32,
        restart="unless-stopped",
        destroy_grace_seconds=5,
        labels=labels,
        opts=pulumi.ResourceOptions.merge(popts, pulumi.ResourceOptions(
            delete_before_replace=True)),
    )
    # By id: Docker reports the mode as container:<id>, so no drift, and a new
    # holder is a new mode for the workspace (its replacement).
    return ws.holder.id.apply(lambda holder_id: f"container:{holder_id}")


class DockerWorkspace(pulumi.ComponentResource):
    def __init__(self, name: str, inputs: WorkspaceInputs, runtime: DockerRuntime,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("stackspace:docker:Workspace", name, None, opts)
        spec = inputs.spec
        base = inputs.base_name
        self.base_name = base
        provider = _provider(runtime, self, _registry_auth(spec))
        popts = pulumi.ResourceOptions(parent=self, provider=provider)

        def labels(role: str) -> list[dict]:
            return [{"label": k, "value": v} for k, v in inputs.labels_with(role).items()]

        self.volume = docker.Volume(
            "storage",
            name=f"{base}-home",
            labels=labels("storage"),
            opts=pulumi.ResourceOptions.merge(popts, pulumi.ResourceOptions(
                protect=not inputs.deleting,
                # Any change here would replace the volume: never apply one.
                ignore_changes=["labels", "driver", "driverOpts", "name"],
            )),
        )
        # Ensures the image is present; keep_locally so destroy never deletes
        # an image other workspaces may use.
        image = docker.RemoteImage("image", name=spec.image, keep_locally=True, opts=popts)

        mounts = [{"target": WORKSPACE_ROOT, "source": self.volume.name, "type": "volume"}]
        user = f"{WORKSPACE_UID}:{WORKSPACE_GID}"
        init = init_inputs(spec, INIT_INPUT_PREFIX, remove_inputs=True)
        uploads = []
        for input_name, content in sorted(init.files.items()):
            secret = input_name in init.secret_names
            uploads.append({
                "file": f"{INIT_INPUT_PREFIX}{input_name}",
                "content": pulumi.Output.secret(content) if secret else content,
                "permissions": "0666",
            })

        # Named by its fingerprint (repository + file entries only): start,
        # stop and image/env/command updates leave it alone; a changed `files`
        # entry runs a new init, which writes only the changed entries. The
        # provider attaches and waits for it to exit; a non-zero exit code
        # fails the update. Its entrypoint is the script itself, whatever the
        # image's ENTRYPOINT.
        self.init = docker.Container(
            "init",
            name=f"{base}-init-{init_fingerprint(spec)}",
            image=spec.image,
            entrypoints=["/bin/sh", "-c", INIT_SCRIPT],
            envs=[f"{k}={v}" for k, v in init.env.items()],
            uploads=uploads,
            mounts=mounts,
            user=user,
            working_dir=WORKSPACE_ROOT,
            attach=True,
            logs=True,
            must_run=False,
            network_mode=docker_network(runtime),
            labels=labels("init"),
            **HARDENING,
            opts=pulumi.ResourceOptions.merge(popts, pulumi.ResourceOptions(
                depends_on=[image], delete_before_replace=True,
                # An image update is not an init change: no new init run. A
                # failed init made again takes today's image (perhaps the fix).
                ignore_changes=[] if inputs.retry_init else ["image"])),
        )
        # Only a workspace that should run needs a good init: stop and the
        # delete path must go through even after a failed clone.
        self.init_exit_code = (
            pulumi.Output.all(self.init.exit_code, self.init.container_logs)
            .apply(lambda a: _check_init_exit(*a))
            if inputs.running else self.init.exit_code)

        self.initialized = self.init.exit_code.apply(lambda code: code == 0)

        envs = [f"{k}={v}" for k, v in spec.env.items()]
        # Secret env: a file in the container and a wrapper that exports it
        # (components.secret_env), never the container's Env.
        entrypoints = list(spec.command)
        secret_files = []
        if spec.secret_env:
            entrypoints = with_secret_env(entrypoints)
            secret_files = [{"file": SECRET_ENV_FILE, "permissions": "0444",
                             "content": pulumi.Output.secret(render_secret_env(spec.secret_env))}]
        self.container = None
        self.holder = None
        if inputs.running:
            start_hook = _start_hook(runtime)
            network = _workspace_network(self, runtime, spec, labels("network"), popts)
            self.container = docker.Container(
                "workspace",
                name=base,
                # A container in another's namespace takes that one's hostname.
                hostname=None if self.holder else spec.name,
                image=spec.image,
                # `command` is the full argv on every backend: it replaces the
                # image's ENTRYPOINT (and so its CMD) as on Kubernetes.
                entrypoints=entrypoints,
                envs=envs,
                uploads=secret_files,
                mounts=mounts,
                user=user,
                working_dir=WORKSPACE_ROOT,
                # tini as PID 1: the default `sleep` command then stops on SIGTERM.
                init=True,
                # MB; swap equal to memory means no swap beyond the limit.
                memory=memory_mb(spec),
                memory_swap=memory_mb(spec),
                # CFS quota rather than `cpus`: integers read back exactly, so an
                # unchanged spec never shows drift.
                cpu_period=CPU_PERIOD,
                cpu_quota=int(cpu_cores(spec) * CPU_PERIOD),
                restart="unless-stopped",
                # Made stopped; the hook starts it with its pids limit set.
                start=False,
                destroy_grace_seconds=10,
                network_mode=network,
                # Waiting on the init exit code keeps a failed init from starting
                # the workspace (the check raises, the update fails).
                labels=labels("workspace") + [{"label": "stackspace.dev/init-exit",
                                               "value": self.init_exit_code.apply(str)}],
                **HARDENING,
                opts=pulumi.ResourceOptions.merge(popts, pulumi.ResourceOptions(
                    depends_on=[self.init] + ([self.holder] if self.holder else []),
                    # Named containers must be removed before their replacement.
                    delete_before_replace=True,
                    hooks=pulumi.ResourceHookBinding(after_create=[start_hook],
                                                     after_update=[start_hook]),
                    # The provider reads a container made stopped as must_run=false;
                    # it runs once the hook started it: no change to make.
                    ignore_changes=["mustRun"],
                )),
            )

        self.register_outputs({
            "storage": self.volume.name,
            "container": self.container.name if self.container else None,
            "init_exit_code": self.init_exit_code,
        })
