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
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pulumi import automation as auto
from pulumi.automation import events

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
        """The stack's current secret values (to merge into an update)."""
        stack = self.stack(stack_name, create=False)
        try:
            return json.loads(stack.get_config(f"{NAMESPACE}:{KEY_SECRETS}").value)
        except auto.errors.CommandError:
            return {}

    def _set_secret(self, stack_name: str, key: str, value: str) -> None:
        binary = str(self.settings.bin_dir / "pulumi") if self.settings.bin_dir else "pulumi"
        env = {**os.environ, **self.settings.env()}
        proc = subprocess.run(
            [binary, "config", "set", "--secret", "--stack", stack_name, key,
             "--non-interactive"],
            input=value, text=True, capture_output=True, cwd=PROJECT_DIR, env=env, check=False,
        )
        if proc.returncode != 0:
            # stderr may echo the key name but never the value (it came via stdin).
            raise RuntimeError(f"pulumi config set {key} failed (exit {proc.returncode})")

    def check_storage_safe(self, stack: auto.Stack, on_event: EventSink | None = None
                           ) -> None:
        """Preview; raise StorageAtRisk if storage would be deleted or replaced."""
        risky: list[tuple[str, str]] = []

        def watch(event: events.EngineEvent) -> None:
            pre = event.resource_pre_event
            if pre is not None:
                meta = pre.metadata
                if meta.type in STORAGE_TYPES and str(meta.op.value) in DESTRUCTIVE_OPS:
                    risky.append((str(meta.op.value), meta.urn))
            if on_event:
                on_event(event)

        stack.preview(on_event=watch, color="never", suppress_progress=True)
        if risky:
            raise StorageAtRisk(risky)

    def apply(self, values: ConfigValues | StackConfig, stack_name: str,
              on_event: EventSink | None = None, guard: bool = True) -> RunResult:
        """Converge a stack (create/start/stop/update): write the given config
        keys (all of a StackConfig, or just e.g. `running`), preview, up."""
        if isinstance(values, StackConfig):
            values = values.to_config()
        result = RunResult()
        t = time.monotonic()
        stack = self.stack(stack_name)
        self.write_config(stack, values)
        result.timings["config"] = time.monotonic() - t
        if guard:
            t = time.monotonic()
            self.check_storage_safe(stack, on_event)
            result.timings["preview"] = time.monotonic() - t
        t = time.monotonic()
        up = stack.up(on_event=on_event, color="never", suppress_progress=True)
        result.timings["up"] = time.monotonic() - t
        result.outputs = {k: v.value for k, v in up.outputs.items()}
        return result

    def delete(self, stack_name: str, on_event: EventSink | None = None) -> RunResult:
        """The only path that removes storage: unprotect, destroy, remove the stack."""
        result = RunResult()
        if not self.exists(stack_name):
            return result
        t = time.monotonic()
        stack = self.stack(stack_name, create=False)
        self.write_config(stack, {KEY_RUNNING: ("false", False), KEY_DELETING: ("true", False)})
        stack.up(on_event=on_event, color="never", suppress_progress=True)
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
