"""Service configuration: embedded defaults, then a YAML/JSON file, then environment.

    data_dir      STACKSPACE_DATA_DIR      ~/.local/share/stackspace
    listen        STACKSPACE_LISTEN        127.0.0.1:8080
    proxy_listen  STACKSPACE_PROXY_LISTEN  127.0.0.1:8081
    backend_url   PULUMI_BACKEND_URL       file://<data_dir>/state
    passphrase    PULUMI_CONFIG_PASSPHRASE generated once into <secrets_dir>/passphrase
    secrets_dir   STACKSPACE_SECRETS_DIR   <data_dir>: passphrase, ticket-key (shared by replicas)
    proxy_url     STACKSPACE_PROXY_URL     ws://<proxy_listen>/exec: the proxy as clients reach it
    pool_size     STACKSPACE_POOL_SIZE     number of CPUs (at least 2)
    quota         STACKSPACE_QUOTA         10 workspaces per user
    idle_stop_after STACKSPACE_IDLE_STOP_AFTER  off (seconds without terminal activity)
    runtimes      (file only)              [{name: local, type: docker, host: $DOCKER_HOST}]
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.runtime import Runtime, parse_runtime
from stacks.automation import PulumiSettings

DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "stackspace"
PULUMI_VERSION = "3.259.0"  # scripts/toolchain/lib.sh builds this CLI


def cache_dir() -> Path:
    """Where scripts/setup keeps the built toolchain (STACKSPACE_CACHE)."""
    return Path(os.environ.get("STACKSPACE_CACHE", Path.home() / ".cache" / "stackspace"))


@dataclass
class ServiceConfig:
    data_dir: Path = DEFAULT_DATA_DIR
    listen: str = "127.0.0.1:8080"
    proxy_listen: str = "127.0.0.1:8081"
    backend_url: str | None = None
    pool_size: int | None = None
    quota: int = 10
    operation_timeout: float = 1800.0
    idle_stop_after: float | None = None  # seconds; None keeps idle workspaces running
    runtimes: list[Runtime] = field(default_factory=list)
    secrets_dir: Path | None = None  # None: the data dir
    public_proxy_url: str | None = None  # None: ws://<proxy_listen>/exec

    @property
    def store_path(self) -> Path:
        return self.data_dir / "stackspace.db"

    def secret_file(self, name: str, nbytes: int = 32) -> str:
        """A secret generated on first use and kept (0600) in the secrets dir; replicas
        share that dir (in Kubernetes a mounted Secret, where the file already exists)."""
        folder = self.secrets_dir or self.data_dir
        path = folder / name
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(nbytes))
        return path.read_text().strip()

    @property
    def ticket_key(self) -> bytes:
        """HMAC key shared by the service (mints) and the exec proxy (verifies)."""
        return bytes.fromhex(self.secret_file("ticket-key"))

    @property
    def proxy_url(self) -> str:
        """Where clients open terminals: behind a Service or ingress, not the listen address."""
        return self.public_proxy_url or f"ws://{self.proxy_listen}/exec"

    def pulumi_settings(self) -> PulumiSettings:
        cache = cache_dir()
        bin_dir = Path(os.environ.get("STACKSPACE_PULUMI_BIN",
                                      cache / "pulumi" / PULUMI_VERSION / "bin"))
        if not (bin_dir / "pulumi").exists() and shutil.which("pulumi"):
            bin_dir = Path(shutil.which("pulumi") or "").parent
        home = Path(os.environ.get("PULUMI_HOME", cache / "pulumi-home"))
        passphrase = os.environ.get("PULUMI_CONFIG_PASSPHRASE") or self.secret_file("passphrase")
        (self.data_dir / "state").mkdir(parents=True, exist_ok=True)
        return PulumiSettings(
            backend_url=self.backend_url or f"file://{self.data_dir / 'state'}",
            passphrase=passphrase, pulumi_home=home, bin_dir=bin_dir, python=sys.executable,
            lock_dir=self.data_dir)

    def runtime(self, name: str | None) -> Runtime | None:
        if name is None:
            return self.runtimes[0] if self.runtimes else None
        return next((r for r in self.runtimes if r.name == name), None)


def load_config(path: Path | None = None, **overrides: Any) -> ServiceConfig:
    data: dict[str, Any] = {}
    if path is not None:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text) or {}
    env = os.environ
    cfg = ServiceConfig(
        data_dir=Path(env.get("STACKSPACE_DATA_DIR", data.get("data_dir", DEFAULT_DATA_DIR))),
        listen=env.get("STACKSPACE_LISTEN", data.get("listen", "127.0.0.1:8080")),
        proxy_listen=env.get("STACKSPACE_PROXY_LISTEN",
                             data.get("proxy_listen", "127.0.0.1:8081")),
        backend_url=env.get("PULUMI_BACKEND_URL", data.get("backend_url")),
        pool_size=int(env["STACKSPACE_POOL_SIZE"]) if "STACKSPACE_POOL_SIZE" in env
        else data.get("pool_size"),
        quota=int(env.get("STACKSPACE_QUOTA", data.get("quota", 10))),
        operation_timeout=float(data.get("operation_timeout", 1800)),
        idle_stop_after=float(env["STACKSPACE_IDLE_STOP_AFTER"])
        if "STACKSPACE_IDLE_STOP_AFTER" in env else data.get("idle_stop_after"),
        runtimes=[parse_runtime(r) for r in data.get("runtimes", [])],
        secrets_dir=Path(v) if (v := env.get("STACKSPACE_SECRETS_DIR",
                                              data.get("secrets_dir"))) else None,
        public_proxy_url=env.get("STACKSPACE_PROXY_URL", data.get("proxy_url")),
    )
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, Path(value) if key == "data_dir" else value)
    if not cfg.runtimes:
        host = env.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        cfg.runtimes = [parse_runtime({"name": "local", "type": "docker", "host": host})]
    return cfg
