"""Drive workspace stacks through the Pulumi Automation API.

The repository root is the Pulumi project (Pulumi.yaml), so every stack runs
the same program an operator previews by hand. One `StackRunner` per process:
it reuses a single `PulumiCommand` and serialises `stack select/init` across
processes with a file lock (parallel selects in one project corrupt Pulumi's
workspace file, pulumi#8186). Each call is one synchronous CLI run; callers
run them in worker processes, never as inline programs on threads.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pulumi import automation as auto
from pulumi.automation import events

from components.runtime import Runtime
from stacks.config import (
    KEY_DELETING,
    KEY_RUNNING,
    KEY_SECRETS,
    NAMESPACE,
    ConfigValues,
    StackConfig,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent
STORAGE_TYPES = frozenset({
    "kubernetes:core/v1:PersistentVolumeClaim",
    "docker:index/volume:Volume",
})
# Plan steps that would lose a storage resource's data.
DESTRUCTIVE_OPS = frozenset({"delete", "replace", "create-replacement", "delete-replaced",
                             "discard", "discard-replaced"})

EventSink = Callable[[events.EngineEvent], None]


class StorageAtRisk(Exception):
    """A non-delete plan would delete or replace workspace storage."""

    def __init__(self, steps: list[tuple[str, str]]):
        self.steps = steps
        super().__init__("plan would " + ", ".join(f"{op} {urn.rsplit('::', 1)[-1]}"
                                                   for op, urn in steps))


@dataclass(frozen=True)
class PulumiSettings:
    """Where the engine, its plugins and the state live."""

    backend_url: str
    passphrase: str
    pulumi_home: Path
    bin_dir: Path | None = None  # directory with `pulumi` and the language host
    python: str = sys.executable  # interpreter with stackspace installed
    lock_dir: Path | None = None

    def env(self) -> dict[str, str]:
        path = os.environ.get("PATH", "")
        if self.bin_dir:
            path = f"{self.bin_dir}{os.pathsep}{path}"
        return {
            "PATH": path,
            "PULUMI_BACKEND_URL": self.backend_url,
            "PULUMI_CONFIG_PASSPHRASE": self.passphrase,
            "PULUMI_HOME": str(self.pulumi_home),
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_SKIP_CONFIRMATIONS": "true",
            "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
            # The language host runs this interpreter (it has our packages).
            "PULUMI_PYTHON_CMD": self.python,
            "PYTHONPATH": str(PROJECT_DIR),
        }


@dataclass
class RunResult:
    outputs: dict[str, object] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    config_written: bool = False


class ConfigWritten(Exception):
    """Marks a failure after the run's config reached the stack."""

    config_written = True


def inline_program(cfg: StackConfig) -> Callable[[], None]:
    """The workspace program for `cfg`, run inside this process: the same
    `stacks.program.build` the local program (__main__.py) runs from stack
    config, but fed from memory, so a plan can be checked before the config
    is written, and no interpreter starts per engine pass."""
    from stacks import program

    def run() -> None:
        program.build(cfg)

    return run


class StackRunner:
    def __init__(self, settings: PulumiSettings):
        self.settings = settings
        # PulumiCommand wants the directory above bin/.
        root = str(settings.bin_dir.parent) if settings.bin_dir else None
        self.command = auto.PulumiCommand(root=root, skip_version_check=True)
        self.workspace = auto.LocalWorkspace(
            work_dir=str(PROJECT_DIR), env_vars=settings.env(), pulumi_command=self.command,
            pulumi_home=str(settings.pulumi_home),
        )
        self.lock_path = (settings.lock_dir or settings.pulumi_home) / "stack-select.lock"

    @contextmanager
    def _select_lock(self) -> Iterator[None]:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def stack(self, name: str, create: bool = True) -> auto.Stack:
        with self._select_lock():
            if create:
                return auto.Stack.create_or_select(name, self.workspace)
            return auto.Stack.select(name, self.workspace)

    def exists(self, name: str) -> bool:
        return any(s.name == name for s in self.workspace.list_stacks())

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        """Run the Pulumi CLI on the project (for what the Automation API lacks).
        Output is not returned to clients: it may hold secrets."""
        binary = str(self.settings.bin_dir / "pulumi") if self.settings.bin_dir else "pulumi"
        env = {**os.environ, **self.settings.env()}
        return subprocess.run([binary, *args, "--non-interactive"], input=stdin, text=True,
                              capture_output=True, cwd=PROJECT_DIR, env=env, check=False)

    def write_config(self, stack: auto.Stack, values: ConfigValues) -> None:
        """Write `stackspace:*` keys. Secret values go through stdin, never argv."""
        plain = {}
        for key, (value, secret) in values.items():
            if secret:
                self._set_secret(stack.name, f"{NAMESPACE}:{key}", value)
            else:
                plain[f"{NAMESPACE}:{key}"] = auto.ConfigValue(value=value)
        if plain:
            stack.set_all_config(plain)

    def read_secrets(self, stack_name: str) -> dict[str, str]:
        """The stack's current secret values."""
        stack = self.stack(stack_name, create=False)
        try:
            return json.loads(stack.get_config(f"{NAMESPACE}:{KEY_SECRETS}").value)
        except auto.errors.CommandError:
            return {}

    def _set_secret(self, stack_name: str, key: str, value: str) -> None:
        proc = self.cli("config", "set", "--secret", "--stack", stack_name, key, stdin=value)
        if proc.returncode != 0:
            # stderr may echo the key name but never the value (it came via stdin).
            raise RuntimeError(f"pulumi config set {key} failed (exit {proc.returncode})")

    def check_storage_safe(self, stack: auto.Stack, cfg: StackConfig,
                           on_event: EventSink | None = None) -> None:
        """Preview `cfg` (from memory: nothing is written to the stack) and raise
        StorageAtRisk if the plan would delete or replace storage."""
        risky: list[tuple[str, str]] = []

        def watch(event: events.EngineEvent) -> None:
            pre = event.resource_pre_event
            if pre is not None:
                meta = pre.metadata
                if meta.type in STORAGE_TYPES and str(meta.op.value) in DESTRUCTIVE_OPS:
                    risky.append((str(meta.op.value), meta.urn))
            if on_event:
                on_event(event)

        try:
            stack.preview(program=inline_program(cfg), on_event=watch, color="never",
                          suppress_progress=True)
        except auto.errors.CommandError as e:
            # Storage is also protected in the program: the engine itself then
            # refuses the plan. That is the same verdict, said by us.
            protected = protected_storage(str(e))
            if not protected:
                raise
            risky += [("replace or delete (protected)", urn) for urn in protected]
        if risky:
            raise StorageAtRisk(risky)

    def apply(self, cfg: StackConfig, stack_name: str, on_event: EventSink | None = None,
              guard: bool = True) -> RunResult:
        """Converge a stack to `cfg` (create/start/stop/update): check the plan
        (the storage guard), then write the whole config, then up."""
        result = RunResult()
        t = time.monotonic()
        existed = self.exists(stack_name)
        stack = self.stack(stack_name)
        result.timings["select"] = time.monotonic() - t
        if guard:
            t = time.monotonic()
            try:
                self.check_storage_safe(stack, cfg, on_event)
            except StorageAtRisk:
                if not existed:  # the refused create leaves no empty stack behind
                    with self._select_lock():
                        self.workspace.remove_stack(stack_name)
                raise
            result.timings["preview"] = time.monotonic() - t
        t = time.monotonic()
        self.write_config(stack, cfg.to_config())
        result.config_written = True
        result.timings["config"] = time.monotonic() - t
        t = time.monotonic()
        try:
            up = stack.up(program=inline_program(cfg), on_event=on_event, color="never",
                          suppress_progress=True)
        except Exception as e:
            e.config_written = True  # type: ignore[attr-defined]
            raise
        result.timings["up"] = time.monotonic() - t
        result.outputs = {k: v.value for k, v in up.outputs.items()}
        return result

    def delete(self, stack_name: str, on_event: EventSink | None = None,
               config: StackConfig | None = None) -> RunResult:
        """The only path that removes storage: lift protection in the state
        (no program run: nothing new gets created on the way out), destroy,
        remove the stack."""
        result = RunResult()
        if not self.exists(stack_name):
            return result
        t = time.monotonic()
        stack = self.stack(stack_name, create=False)
        values: ConfigValues = {KEY_RUNNING: ("false", False), KEY_DELETING: ("true", False)}
        if config is not None:
            values = StackConfig(config.owner, config.spec, config.runtime, running=False,
                                 deleting=True).to_config()
        self.write_config(stack, values)
        proc = self.cli("state", "unprotect", "--all", "--yes", "--stack", stack_name)
        if proc.returncode != 0 and "no resources" not in proc.stderr.lower():
            raise RuntimeError(f"pulumi state unprotect failed (exit {proc.returncode})")
        result.timings["unprotect"] = time.monotonic() - t
        t = time.monotonic()
        stack.destroy(on_event=on_event, color="never", suppress_progress=True)
        result.timings["destroy"] = time.monotonic() - t
        t = time.monotonic()
        with self._select_lock():
            self.workspace.remove_stack(stack_name)
        result.timings["remove"] = time.monotonic() - t
        return result

    def refresh(self, stack_name: str, on_event: EventSink | None = None) -> None:
        stack = self.stack(stack_name, create=False)
        stack.refresh(on_event=on_event, color="never", suppress_progress=True,
                      clear_pending_creates=True)

    def cancel(self, stack_name: str) -> None:
        """Remove a stale lock left by a killed run (DIY backends)."""
        self.stack(stack_name, create=False).cancel()

    def recover(self, stack_name: str, runtime: Runtime,
                on_event: EventSink | None = None) -> list[str]:
        """Bring a stack an interrupted run left behind back to a state any run
        can start from: clear the stale lock, adopt what its pending creates
        made (found on the runtime by their deterministic names), drop the
        ones that made nothing, refresh. Returns the URNs adopted."""
        if not self.exists(stack_name):
            return []
        stack = self.stack(stack_name, create=False)
        stack.cancel()
        deployment = stack.export_stack().deployment or {}
        adopt: list[tuple[str, str]] = []
        pending_ops = deployment.get("pending_operations") or []
        for pending in pending_ops:
            res = pending.get("resource", {})
            if pending.get("type") != "creating":
                continue
            found = find_object(runtime, res.get("type", ""), res.get("inputs") or {})
            if found:
                adopt.append((res["urn"], found))
        if pending_ops:
            base = ["refresh", "--yes", "--skip-preview", "--stack", stack_name]
            imports = [arg for urn, obj in adopt
                       for arg in ("--import-pending-creates", urn,
                                   "--import-pending-creates", obj)]
            proc = self.cli(*base, *imports, "--clear-pending-creates")
            if proc.returncode != 0 and adopt:
                # Adopt one by one failed as a whole: adopt nothing, drop them all
                # (delete still finds those objects by their labels).
                proc = self.cli(*base, "--clear-pending-creates")
                adopt = []
            if proc.returncode != 0:
                raise RuntimeError("recovery refresh failed: "
                                   + _error_lines(proc.stdout + proc.stderr))
        self.refresh(stack_name, on_event)
        return [urn for urn, _ in adopt]


def protected_storage(error_text: str) -> list[str]:
    """Storage URNs named by the engine's "marked for protection" refusal."""
    if "protect" not in error_text:
        return []
    urns = re.findall(r"urn:pulumi:[^\s\"']+", error_text)
    return sorted({u for u in urns if any(t in u for t in STORAGE_TYPES)})


def _error_lines(text: str) -> str:
    return "; ".join(ln.strip() for ln in text.splitlines() if "error" in ln.lower())[:500]


def find_object(runtime: Runtime, resource_type: str, inputs: dict) -> str | None:
    """The provider ID of an object a pending create may have made, looked up on
    the runtime by the name the program gave it (names are deterministic)."""
    from components.clients import docker_client, kube_api_client
    from components.runtime import DockerRuntime

    if resource_type.startswith("docker:") and isinstance(runtime, DockerRuntime):
        name = inputs.get("name")
        if not name:
            return None
        import docker.errors

        client = docker_client(runtime)
        try:
            if resource_type == "docker:index/volume:Volume":
                return client.volumes.get(name).name
            if resource_type == "docker:index/container:Container":
                return client.containers.get(name).id
        except docker.errors.NotFound:
            return None
        finally:
            client.close()
        return None
    if resource_type.startswith("kubernetes:") and not isinstance(runtime, DockerRuntime):
        meta = inputs.get("metadata") or {}
        name, ns = meta.get("name"), meta.get("namespace") or runtime.namespace
        if not name:
            return None
        from kubernetes import client as k8s
        from kubernetes.dynamic import DynamicClient
        from kubernetes.dynamic.exceptions import NotFoundError

        group_version, kind = _k8s_type(resource_type)
        try:
            api = DynamicClient(kube_api_client(runtime)).resources.get(
                api_version=group_version, kind=kind)
            api.get(name=name, namespace=ns)
            return f"{ns}/{name}"
        except (NotFoundError, k8s.ApiException):
            return None
    return None


def _k8s_type(token: str) -> tuple[str, str]:
    """'kubernetes:core/v1:PersistentVolumeClaim' -> ('v1', 'PersistentVolumeClaim');
    'kubernetes:networking.k8s.io/v1:NetworkPolicy' keeps its group."""
    _, group_version, kind = token.split(":")
    group, _, version = group_version.partition("/")
    return (version if group == "core" else group_version), kind
