"""Drive workspace stacks through the Pulumi Automation API.

The repository root is the Pulumi project (Pulumi.yaml), so every stack runs
the same program an operator previews by hand. One `StackRunner` per process
reuses a single `PulumiCommand`. Each call is one synchronous CLI run; callers
run them in worker processes, never as inline programs on threads.

A stack's settings file (`Pulumi.<stack>.yaml`: its config and the passphrase
provider's encryption salt) never lands in the checkout: each run gets a private
work dir (`StackFiles`) into which the caller materialises the text it keeps
in shared state, and from which it takes the (possibly changed) text back. So
any replica can run any stack, and parallel selects never share a directory
(pulumi#8186).
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import hmac
import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulumi import automation as auto
from pulumi.automation import events
from pulumi.automation._stack import StackInitMode

from stacks.config import (
    KEY_DELETING,
    KEY_RUNNING,
    KEY_SECRETS,
    NAMESPACE,
    ConfigValues,
    StackConfig,
)
from stacks.guard import (
    ATTEST_OUTPUT,
    DESTRUCTIVE_OPS,
    STORAGE_TYPES,
    attestation,
    preview_needed,
    protected_storage,
    runtime_kind,
)
from stacks.init_retry import failed_inits
from stacks.settings import PulumiSettings, StackFiles
from stacks.state_repair import StackKeys, forget_stack

EMPTY_SECRETS = "{}"  # StackConfig.to_config of a spec without secrets

EventSink = Callable[[events.EngineEvent], None]
# Config values longer than this go through stdin (one argv string is capped
# at 128 KiB by Linux).
ARGV_VALUE_LIMIT = 32 * 1024


class Cancelled(Exception):
    """The run was asked to stop before its next step."""


class StackTaken(Exception):
    """The backend holds the stack, but the caller has no settings for it: it
    belongs to another stackspace installation (another store) on the same
    backend, the same owner and workspace name. Never touched."""

    def __init__(self, stack: str):
        self.stack = stack
        super().__init__(f"stack {stack} already exists in the Pulumi backend and belongs to "
                         "another stackspace installation sharing it; give each installation "
                         "its own backend (another database, or ?table= for postgres://)")


class StorageAtRisk(Exception):
    """A non-delete plan would delete or replace workspace storage."""

    def __init__(self, steps: list[tuple[str, str]]):
        self.steps = steps
        super().__init__("plan would " + ", ".join(f"{op} {urn.rsplit('::', 1)[-1]}"
                                                   for op, urn in steps))


@dataclass
class RunResult:
    outputs: dict[str, object] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    config_written: bool = False
    # Digest of the secret config the stack now holds (see `apply`).
    secrets_digest: str | None = None
    # What the storage guard decided from (stacks.guard), None if it did not run.
    guard: str | None = None
    # Init steps that had failed, made again by this run (stacks.init_retry).
    retried_init: list[str] = field(default_factory=list)


def inline_program(cfg: StackConfig, outputs: dict[str, Any] | None = None,
                   attest: str | None = None, retry_init: bool = False
                   ) -> Callable[[], None]:
    """The workspace program for `cfg`, run inside this process: the same
    `stacks.program.build` the local program (__main__.py) runs from stack
    config, but fed from memory, so a plan can be checked before the config
    is written, and no interpreter starts per engine pass. With `outputs`,
    the stack outputs land there as they resolve (no `stack output` call).
    With `attest`, the stack records it once the engine accepted the storage
    resource (stacks.guard: what lets the next run skip its preview).
    `retry_init`: the run makes a failed init step again (stacks.init_retry)."""
    import pulumi

    from stacks import program

    def run() -> None:
        program.build(cfg, attest, retry_init)
        if outputs is not None:
            root = pulumi.runtime.get_root_resource()
            for key, value in getattr(root, "outputs", {}).items():
                pulumi.Output.from_input(value).apply(
                    lambda v, key=key: outputs.__setitem__(key, v))

    return run


class EngineCommand(auto.PulumiCommand):
    """The Pulumi CLI, with extra arguments for the next `up`: its `--config`
    flags save the run's config as part of the update (one CLI process less
    than `config set-all` first)."""

    up_args: list[str]

    def run(self, args: list[str], cwd: str, additional_env: Mapping[str, str],
            on_output: Any = None, on_error: Any = None) -> auto.CommandResult:
        if args[:1] == ["up"] and getattr(self, "up_args", None):
            args = [*args, *self.up_args]
        return super().run(args, cwd, additional_env, on_output, on_error)


class WorkspaceStack(auto.Stack):
    """A stack whose `up` (or destroy, refresh) skips the CLI calls the SDK
    makes afterwards (`stack output` twice, `stack history`): the inline
    program hands over the outputs, the engine's summary event the summary."""

    def __init__(self, name: str, workspace: auto.LocalWorkspace,
                 mode: StackInitMode | None = None) -> None:
        if mode is None:  # known to exist: attach without `stack select`
            self.name, self.workspace, self._mode = name, workspace, StackInitMode.SELECT
        else:
            super().__init__(name, workspace, mode)
        self.program_outputs: dict[str, Any] | None = None

    def outputs(self) -> auto.OutputMap:
        if self.program_outputs is None:
            return super().outputs()
        return {k: auto.OutputValue(v, False) for k, v in self.program_outputs.items()}

    def info(self, show_secrets: bool = True) -> auto.UpdateSummary | None:
        if self.program_outputs is None:
            return super().info(show_secrets)
        # Our own run just succeeded (it raises otherwise); callers read the
        # engine's summary from its events, not from here.
        now = datetime.datetime.now(datetime.UTC)
        return auto.UpdateSummary(kind="update", start_time=now, end_time=now, message="",
                                  environment={}, config={}, result="succeeded")


class StackRunner:
    def __init__(self, settings: PulumiSettings):
        self.settings = settings
        # PulumiCommand wants the directory above bin/.
        root = str(settings.bin_dir.parent) if settings.bin_dir else None
        self.command = EngineCommand(root=root, skip_version_check=True)
        # Used between runs that bring their own files (see `use`): direct
        # callers (tests, benches) keep their stacks' settings here while the
        # runner lives.
        self._own_files = StackFiles(settings.pulumi_home)
        self.files = self._own_files
        self.workspace = auto.LocalWorkspace(
            work_dir=str(self.files.path), env_vars=settings.env(),
            pulumi_command=self.command, pulumi_home=str(settings.pulumi_home),
        )
        # Polled between steps: a cancel that arrives between two CLI processes
        # must still stop the run.
        self.should_stop: Callable[[], bool] = lambda: False
        # Called with the settings text right after `stack init` made a stack
        # (its new encryption salt): a run cut off later must not lose it.
        self.on_stack_created: Callable[[str], None] | None = None
        self._created_here: set[str] = set()
        self._project: str | None = None

    @property
    def project(self) -> str:
        """The Pulumi project's name (Pulumi.yaml)."""
        if self._project is None:
            self._project = self.workspace.project_settings().name
        return self._project

    @property
    def work_dir(self) -> Path:
        """Where the CLI runs now (holds the stack settings files)."""
        return self.files.path

    def use(self, files: StackFiles | None) -> None:
        """Run in `files` from now on (None: back to the runner's own dir)."""
        self.files = files or self._own_files
        self.workspace.work_dir = str(self.files.path)
        self._created_here.clear()  # a new run knows nothing of the last one's stacks

    def _checkpoint(self, step: str) -> None:
        if self.should_stop():
            raise Cancelled(f"cancelled before {step}")

    def stack(self, name: str) -> auto.Stack:
        """An existing stack, as the SDK gives it (`stack select`)."""
        return auto.Stack.select(name, self.workspace)

    def exists(self, name: str) -> bool:
        # `stack select`, not `stack ls`: on the postgres:// DIY backend (CLI
        # 3.259) `stack ls` never answers once the backend holds 4 stacks.
        try:
            auto.Stack.select(name, self.workspace)
        except auto.errors.StackNotFoundError:
            return False
        return True

    def select_or_create(self, name: str, known: bool = False) -> tuple[WorkspaceStack, bool]:
        """The stack, and whether it existed before. `known`: the store knows it
        exists (its config was written), so no CLI call is needed at all."""
        if known:
            return WorkspaceStack(name, self.workspace), True
        if name in self._created_here:  # init_stack made it in this run: attach
            self._created_here.discard(name)
            return WorkspaceStack(name, self.workspace), False
        # Init first: a workspace the store does not know is usually new, and
        # `stack init` of a new stack is one CLI process, not a failed select too.
        try:
            stack = WorkspaceStack(name, self.workspace, StackInitMode.CREATE)
        except auto.errors.StackAlreadyExistsError:
            return WorkspaceStack(name, self.workspace, StackInitMode.SELECT), True
        self._created(name)
        return stack, False

    def _attach(self, name: str) -> WorkspaceStack:
        """A stack `exists` just found, for a run that reads its outcome from
        engine events: no second `stack select`, no `stack history` after it."""
        stack = WorkspaceStack(name, self.workspace)
        stack.program_outputs = {}
        return stack

    def init_stack(self, name: str) -> None:
        """`stack init` a stack that must be new: StackTaken if the backend has it.
        The next `select_or_create` attaches to it as new (no CLI call)."""
        try:
            auto.Stack.create(name, self.workspace)
        except auto.errors.StackAlreadyExistsError as e:
            raise StackTaken(name) from e
        self._created_here.add(name)
        self._created(name)

    def _created(self, name: str) -> None:
        text = self.files.read(name)
        if self.on_stack_created is not None and text is not None:
            self.on_stack_created(text)

    def secrets_digest(self, stack_name: str, secrets_json: str) -> str:
        """A keyed digest of a stack's secret config, so an unchanged secret is not
        written again (one CLI process less per start/stop). Keyed with the
        passphrase: it says nothing to whoever cannot decrypt the config anyway."""
        return hmac.new(self.settings.passphrase.encode(),
                        f"{stack_name}\0{secrets_json}".encode(), hashlib.sha256).hexdigest()

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        """Run the Pulumi CLI on the project (for what the Automation API lacks).
        Output is not returned to clients: it may hold secrets."""
        env = {**os.environ, **self.settings.env()}
        return subprocess.run([self.settings.pulumi_binary, *args, "--non-interactive"],
                              input=stdin, text=True, capture_output=True, cwd=self.work_dir,
                              env=env, check=False)

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

    def _set_secret(self, stack_name: str, key: str, value: str) -> None:
        self._set_from_stdin(stack_name, key, value, secret=True)

    def _set_from_stdin(self, stack_name: str, key: str, value: str, secret: bool) -> None:
        """`pulumi config set` with the value on stdin: never in argv (secrets;
        and one argv string is capped at 128 KiB)."""
        kind = "--secret" if secret else "--plaintext"
        proc = self.cli("config", "set", kind, "--stack", stack_name, key, stdin=value)
        if proc.returncode != 0:
            # stderr may echo the key name but never the value (it came via stdin).
            raise RuntimeError(f"pulumi config set {key} failed (exit {proc.returncode})")

    def check_storage_safe(self, stack: auto.Stack, cfg: StackConfig,
                           on_event: EventSink | None = None,
                           attest: str | None = None, replace: list[str] | None = None
                           ) -> None:
        """Preview `cfg` (from memory: nothing is written to the stack) and raise
        StorageAtRisk if the plan would delete or replace storage. `replace`:
        what the up will replace too (the plan previewed is the plan run)."""
        watch, risky = _storage_watch(on_event)
        try:
            stack.preview(program=inline_program(cfg, attest=attest, retry_init=bool(replace)),
                          on_event=watch,
                          color="never", suppress_progress=True, replace=replace or None)
        except auto.errors.CommandError as e:
            # Storage is also protected in the program: the engine itself then
            # refuses the plan. That is the same verdict, said by us.
            protected = protected_storage(str(e))
            if not protected:
                raise
            risky += [("replace or delete (protected)", urn) for urn in protected]
        if risky:
            raise StorageAtRisk(risky)

    def read_state(self, stack: auto.Stack) -> dict[str, Any]:
        """The stack's deployment (resources, pending operations). A `file://`
        backend's checkpoint is read in place (no CLI process); any other
        backend through `stack export`."""
        url = self.settings.backend_url
        if url.startswith("file:///") and "?" not in url:
            base = (Path(url.removeprefix("file://"))
                    / StackKeys(self.project, stack.name).checkpoint_base)
            for path, opener in ((base.with_name(f"{base.name}.json"), open),
                                 (base.with_name(f"{base.name}.json.gz"), gzip.open)):
                if path.exists():
                    with opener(path, "rt") as fh:
                        checkpoint = json.load(fh)
                    return checkpoint.get("checkpoint", {}).get("latest") or {}
        return stack.export_stack().deployment or {}

    def _plan_check(self, stack: auto.Stack, existed: bool, cfg: StackConfig,
                    attest: str, deployment: dict[str, Any] | str) -> str | None:
        """Why this run must preview (stacks.guard), None if its state proves
        the plan cannot touch storage. `deployment`: the state, or why it
        could not be read."""
        if cfg.deleting:
            return "a delete-path config"
        if not existed:
            return None  # just created here: empty state, the plan only creates
        if isinstance(deployment, str):  # unreadable state: the preview decides
            return f"state unreadable ({deployment})"
        return preview_needed(deployment, stack.name, runtime_kind(cfg.runtime), attest)

    def apply(self, cfg: StackConfig, stack_name: str, on_event: EventSink | None = None,
              guard: bool = True, secrets_digest: str | None = None,
              refresh: bool = False) -> RunResult:
        """Converge a stack to `cfg` (create/start/stop/update): check the plan
        (the storage guard), then write the whole config, then up.
        The guard previews the plan unless the stack's state proves it cannot
        touch storage (stacks.guard); either way the up itself is watched and
        the engine's protect refusal reads as the same StorageAtRisk.
        `secrets_digest`: what the stack's secret config was last set to, if known.
        `refresh`: the up reads every resource back first (the state lost track
        of the runtime: a dead container is then made again)."""
        result = RunResult()
        t = time.monotonic()
        stack, existed = self.select_or_create(stack_name, known=secrets_digest is not None)
        result.timings["select"] = time.monotonic() - t
        attest = attestation(cfg, self.settings.passphrase.encode())
        deployment: dict[str, Any] | str = {}
        if existed and not cfg.deleting:
            try:
                deployment = self.read_state(stack)
            except Exception as e:  # noqa: BLE001 - the guard previews instead
                deployment = type(e).__name__
        # A failed init is run again by a run that should leave the workspace
        # running (stacks.init_retry); stop and delete never need it.
        if cfg.running and isinstance(deployment, dict):
            result.retried_init = failed_inits(deployment)
        if guard:
            # "preview": the storage guard's phase, however it decided.
            t = time.monotonic()
            self._checkpoint("the plan check")
            reason = self._plan_check(stack, existed, cfg, attest, deployment)
            result.guard = "the stack's state" if reason is None else f"a preview ({reason})"
            if reason is not None:
                try:
                    try:
                        self.check_storage_safe(stack, cfg, on_event, attest,
                                                result.retried_init)
                    except auto.errors.StackNotFoundError:
                        # The store thought it existed (someone removed it): start over.
                        stack, existed = self.select_or_create(stack_name)
                        self.check_storage_safe(stack, cfg, on_event, attest)
                except StorageAtRisk:
                    if not existed:  # the refused create leaves no empty stack behind
                        self.workspace.remove_stack(stack_name)
                    raise
            result.timings["preview"] = time.monotonic() - t
        self._checkpoint("writing the config")
        t = time.monotonic()
        values = cfg.to_config()
        result.secrets_digest = self.secrets_digest(stack_name, values[KEY_SECRETS][0])
        if existed and result.secrets_digest == secrets_digest:
            del values[KEY_SECRETS]
        # Secrets and large values first, through stdin; the rest is saved by
        # the update itself (`up --config`), before the engine runs.
        small: dict[str, str] = {}
        for key, (value, secret) in values.items():
            # An empty secrets map holds nothing secret: it travels with the up
            # (one CLI process less for a workspace without secrets).
            secret = secret and value != EMPTY_SECRETS
            if secret or len(value) > ARGV_VALUE_LIMIT:
                self._set_from_stdin(stack_name, f"{NAMESPACE}:{key}", value, secret)
            else:
                small[f"{NAMESPACE}:{key}"] = value
        result.timings["config"] = time.monotonic() - t
        self._checkpoint("the update")
        t = time.monotonic()
        stack.program_outputs = {}
        self.command.up_args = [a for k, v in small.items() for a in ("--config", f"{k}={v}")]
        watch, risky = _storage_watch(on_event)
        try:
            # Written even if the update then fails: the CLI saves config first.
            result.config_written = True
            up = stack.up(program=inline_program(cfg, stack.program_outputs, attest,
                                                 bool(result.retried_init)),
                          on_event=watch, color="never", suppress_progress=True,
                          refresh=refresh or None, replace=result.retried_init or None)
        except Exception as e:
            e.config_written = True  # type: ignore[attr-defined]
            protected = protected_storage(str(e))
            if protected or risky:  # the engine's own protect check refused
                refused = StorageAtRisk(risky or [("replace or delete (protected)", urn)
                                                  for urn in protected])
                refused.config_written = True  # type: ignore[attr-defined]
                raise refused from e
            raise
        finally:
            self.command.up_args = []
        result.timings["up"] = time.monotonic() - t
        if risky:  # cannot happen while storage is protected; never pass it silently
            raise RuntimeError("the update deleted or replaced storage: "
                               + ", ".join(f"{op} {urn}" for op, urn in risky))
        result.outputs = {k: v.value for k, v in up.outputs.items() if k != ATTEST_OUTPUT}
        return result

    def delete(self, stack_name: str, on_event: EventSink | None = None) -> RunResult:
        """The only path that removes storage: lift protection in the state
        (no program run: nothing new gets created on the way out), destroy,
        remove the stack. Only the flags are written: destroy runs no program."""
        result = RunResult()
        if not self.exists(stack_name):  # removed by a run cut off after `stack rm`
            forget_stack(self.settings.backend_url, StackKeys(self.project, stack_name))
            return result
        t = time.monotonic()
        stack = self._attach(stack_name)
        self.write_config(stack, {KEY_RUNNING: ("false", False),
                                  KEY_DELETING: ("true", False)})
        proc = self.cli("state", "unprotect", "--all", "--yes", "--stack", stack_name)
        if proc.returncode != 0 and "no resources" not in proc.stderr.lower():
            raise RuntimeError(f"pulumi state unprotect failed (exit {proc.returncode})")
        result.timings["unprotect"] = time.monotonic() - t
        self._checkpoint("destroy")
        t = time.monotonic()
        stack.destroy(on_event=on_event, color="never", suppress_progress=True)
        result.timings["destroy"] = time.monotonic() - t
        t = time.monotonic()
        self.workspace.remove_stack(stack_name)
        forget_stack(self.settings.backend_url, StackKeys(self.project, stack_name))
        result.timings["remove"] = time.monotonic() - t
        return result

    def recover(self, stack_name: str, on_event: EventSink | None = None) -> set[str]:
        """Bring a stack an interrupted run left behind back to a state any run
        can start from: clear the stale lock, drop pending creates, refresh.
        Returns the provider IDs the state records (the caller removes the
        workspace's objects that are not among them: what a cut-off run made
        but never recorded). Storage needs no adopting: creating a Docker volume
        that exists returns it, and pulumi-kubernetes 4.25 applies a PVC that
        exists server-side."""
        if not self.exists(stack_name):
            return set()
        stack = self._attach(stack_name)
        stack.cancel()
        stack.refresh(on_event=on_event, color="never", suppress_progress=True,
                      clear_pending_creates=True)
        return _recorded(stack)

    def recorded_ids(self, stack_name: str) -> set[str]:
        """Provider IDs of every resource in the stack's state."""
        if not self.exists(stack_name):
            return set()
        return _recorded(self._attach(stack_name))


def _recorded(stack: auto.Stack) -> set[str]:
    """Provider IDs of every resource in the stack's state (one `stack export`)."""
    deployment = stack.export_stack().deployment or {}
    return {r["id"] for r in deployment.get("resources", []) if r.get("id")}


def _storage_watch(on_event: EventSink | None
                   ) -> tuple[EventSink, list[tuple[str, str]]]:
    """An event sink that records steps deleting or replacing storage, then
    passes every event on."""
    risky: list[tuple[str, str]] = []

    def watch(event: events.EngineEvent) -> None:
        pre = event.resource_pre_event
        if pre is not None:
            meta = pre.metadata
            if meta.type in STORAGE_TYPES and str(meta.op.value) in DESTRUCTIVE_OPS:
                risky.append((str(meta.op.value), meta.urn))
        if on_event:
            on_event(event)

    return watch, risky
