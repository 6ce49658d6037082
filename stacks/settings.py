"""Where the engine runs, with no Pulumi SDK import: the CLI's settings and
environment (`PulumiSettings`), the private per-run work dir that holds one
stack's settings file (`StackFiles`), and the backend preparation. The
service process imports only this; the SDK (stacks.automation) loads in the
worker processes that drive the engine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
WORK_DIR_PREFIX = "stackspace-stack-"  # StackFiles: <prefix><pid>-<random> under TMPDIR
# The CLI's own log rotation (see PulumiSettings.env); scripts/setup exports the same.
ENGINE_LOG_ROTATION = {"PULUMI_LOG_ROTATION_MAX_AGE_DAYS": "1",
                       "PULUMI_LOG_ROTATION_MAX_TOTAL_MB": "16"}


# What the engine (the Pulumi CLI, the language host, the third-party provider
# plugins) may see of the service's environment: the basics of a process,
# proxies and CA bundles, and the credentials a Pulumi backend or cloud reads
# from the environment. Never the admin token, the store's database URL or
# any other stackspace setting (SPEC §8).
ENGINE_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
    "SSH_AUTH_SOCK", "VIRTUAL_ENV", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
    "STACKSPACE_CACHE", "STACKSPACE_PULUMI_BIN", "STACKSPACE_LOG_LEVEL",
})
ENGINE_ENV_PREFIXES = ("LC_", "PYTHON", "PULUMI_", "AWS_", "AZURE_", "ARM_", "GOOGLE_",
                       "CLOUDSDK_")


def engine_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The allowlisted part of `env` that engine processes inherit."""
    return {k: v for k, v in env.items()
            if k in ENGINE_ENV_NAMES or k.startswith(ENGINE_ENV_PREFIXES)}


@dataclass(frozen=True)
class PulumiSettings:
    """Where the engine, its plugins and the state live."""

    # Out of the repr (a log line, a traceback): a postgres:// URL may hold a password.
    backend_url: str = field(repr=False)
    passphrase: str = field(repr=False)
    pulumi_home: Path
    bin_dir: Path | None = None  # directory with `pulumi` and the language host
    python: str = sys.executable  # interpreter with stackspace installed

    @property
    def pulumi_binary(self) -> str:
        return str(self.bin_dir / "pulumi") if self.bin_dir else "pulumi"

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
            # Every CLI process writes a log file into PULUMI_HOME/logs and
            # stats the whole directory to rotate it (default: 7 days, 500 MB,
            # ~30,000 files, +0.2 s per CLI process). Keep a day, at most 16 MB.
            **ENGINE_LOG_ROTATION,
            "PULUMI_SKIP_CONFIRMATIONS": "true",
            "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
            # The language host runs this interpreter (it has our packages).
            "PULUMI_PYTHON_CMD": self.python,
            "PYTHONPATH": str(PROJECT_DIR),
        }


class StackFiles:
    """A private copy of the project for one run: Pulumi.yaml copied (the CLI
    finds a stack's settings file beside it), every other top-level entry of
    the checkout linked (the program, .venv: the plain CLI can run it), and at
    most one stack's settings file, materialised from `text`. `close()` takes
    the settings text back (`self.text`; None if the stack is gone) and removes
    the directory and the selection file Pulumi keeps for it in PULUMI_HOME."""

    def __init__(self, pulumi_home: Path, stack: str | None = None,
                 text: str | None = None, project: Path | None = None) -> None:
        self.pulumi_home = pulumi_home
        self.stack = stack
        # The pid in the name lets a later process sweep what a killed one left.
        self.path = Path(tempfile.mkdtemp(prefix=f"{WORK_DIR_PREFIX}{os.getpid()}-"))
        # `project`: another checkout's program (a fleet preview of a PR).
        project = project or PROJECT_DIR
        for entry in project.iterdir():
            if entry.name == "Pulumi.yaml":
                shutil.copyfile(entry, self.path / entry.name)
            elif not (entry.name.startswith("Pulumi.") and entry.suffix in (".yaml", ".yml")):
                (self.path / entry.name).symlink_to(entry)
        if stack is not None and text is None:
            # Upgrade path: a stack made before settings moved to shared state.
            legacy = project / f"Pulumi.{stack}.yaml"
            text = legacy.read_text() if legacy.is_file() else None
        # None: the store never had settings for the stack; "": it claimed
        # the stack, but a run was cut off before any settings came back.
        self.initial = text
        self.text = text
        if stack is not None and text:
            self.settings_path(stack).write_text(text)
        self._cleanup = weakref.finalize(self, _remove_work_dir, self.path, pulumi_home)

    def settings_path(self, stack: str) -> Path:
        return self.path / f"Pulumi.{stack}.yaml"

    def read(self, stack: str | None = None) -> str | None:
        """The stack's settings text as the CLI left it (None: no settings file)."""
        path = self.settings_path(stack or self.stack or "")
        return path.read_text() if path.is_file() else None

    def close(self) -> str | None:
        if self._cleanup.alive:
            if self.stack is not None:
                self.text = self.read()
            self._cleanup()
        return self.text

    def __enter__(self) -> StackFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BackendUnavailable(Exception):
    """The Pulumi backend (backend_url) cannot be opened."""


def prepare_backend(settings: PulumiSettings, attempts: int = 5) -> None:
    """Open a postgres:// DIY backend once, before any engine runs: the CLI
    creates its table on first use, and two CLIs doing that at once fail
    ("duplicate key value ... pg_type"), as concurrent first creates would.
    A replica starting beside another one retries. Other backends need nothing."""
    if not settings.backend_url.startswith("postgres://"):
        return
    error = ""
    for attempt in range(attempts):
        # `login` records credentials (the URL may hold a password) in its
        # PULUMI_HOME: give it a throwaway one. The URL comes from the env, not argv.
        with tempfile.TemporaryDirectory(prefix="stackspace-login-") as home:
            proc = subprocess.run([settings.pulumi_binary, "login", "--non-interactive"],
                                  env={**os.environ, **settings.env(), "PULUMI_HOME": home},
                                  capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            return
        error = error_lines(proc.stderr.replace(settings.backend_url, "backend_url"))
        time.sleep(0.5 * (attempt + 1))
    raise BackendUnavailable(f"backend_url: cannot open the Pulumi backend: {error}")


def sweep_work_dirs(pulumi_home: Path) -> int:
    """Remove the work dirs (and their selection files) of processes that are
    gone: a worker killed mid-run (kill -9, a cancel past its grace) leaves
    its dir behind. Returns how many went."""
    swept = 0
    for path in Path(tempfile.gettempdir()).glob(f"{WORK_DIR_PREFIX}*-*"):
        pid = path.name.removeprefix(WORK_DIR_PREFIX).split("-", 1)[0]
        if path.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            _remove_work_dir(path, pulumi_home)
            swept += 1
    return swept


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_work_dir(path: Path, pulumi_home: Path) -> None:
    # `stack select/init` records the selection per Pulumi.yaml path (sha1).
    digest = hashlib.sha1(str(path / "Pulumi.yaml").encode()).hexdigest()  # noqa: S324
    for selection in (pulumi_home / "workspaces").glob(f"*-{digest}-workspace.json"):
        selection.unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def error_lines(text: str) -> str:
    """The lines of CLI output that say what went wrong (bounded)."""
    return "; ".join(ln.strip() for ln in text.splitlines() if "error" in ln.lower())[:500]
