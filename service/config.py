"""Service configuration: embedded defaults, then a YAML/JSON file, then environment.

    data_dir      STACKSPACE_DATA_DIR      ~/.local/share/stackspace
    database_url  STACKSPACE_DATABASE_URL  unset: SQLite at <data_dir>/stackspace.db;
                                           postgresql://...: the PostgreSQL store
    secrets_dir   STACKSPACE_SECRETS_DIR   <data_dir>: passphrase, ticket-key, store.key
                                           (shared by replicas; each generated once,
                                           0600, only if missing and writable)
    replica_id    STACKSPACE_REPLICA_ID    <hostname>-<pid>-<random>, made at start
    listen        STACKSPACE_LISTEN        127.0.0.1:8080
    proxy_listen  STACKSPACE_PROXY_LISTEN  the next port after listen's: 127.0.0.1:8081
    backend_url   PULUMI_BACKEND_URL       file://<data_dir>/state (postgres://: DIY backend)
    passphrase    PULUMI_CONFIG_PASSPHRASE generated once into <secrets_dir>/passphrase
    proxy_url     STACKSPACE_PROXY_URL     ws://<proxy_listen>/exec: the proxy as clients reach it
    proxy_internal_url STACKSPACE_PROXY_INTERNAL_URL  proxy_url: the proxy as the service
                                           itself reaches it (the file API), e.g. a
                                           cluster Service when clients use an ingress
    pool_size     STACKSPACE_POOL_SIZE     number of CPUs (at least 2)
    quota         STACKSPACE_QUOTA         10 workspaces per user
    idle_stop_after STACKSPACE_IDLE_STOP_AFTER  off (seconds without terminal activity)
    session_idle_timeout STACKSPACE_SESSION_IDLE_TIMEOUT  3600 (seconds a terminal or
                                           command session lives with no client attached)
    lease_seconds STACKSPACE_LEASE_SECONDS 30 (a dead replica's operation is taken over
                                           this long after its last renewal)
    storage_scan_seconds STACKSPACE_STORAGE_SCAN_SECONDS 60 (Docker storage use is
                                           measured again when older; service.storage_usage)
    retention     STACKSPACE_RETENTION     30d: ended operations and their events older than
                                           this are pruned (seconds, or 90m, 12h, 30d, 2w)
    runtimes      (file only)              [{name: local, type: docker, host: $DOCKER_HOST}]
    http          (file only)              the HTTP server's limits (service.http_server)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.runtime import Runtime, parse_runtime
from service.db import is_postgres_url
from service.durations import parse_duration
from service.retention import DEFAULT_RETENTION
from service.secret_files import read_or_create
from stacks.settings import PulumiSettings

DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "stackspace"
PULUMI_VERSION = "3.259.0"  # scripts/toolchain/lib.sh builds this CLI


def default_replica_id() -> str:
    """Unique per process and start, readable in the operations it leases."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


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
    session_idle_timeout: float = 3600.0
    lease_seconds: float = 30.0
    storage_scan_seconds: float = 60.0
    runtimes: list[Runtime] = field(default_factory=list)
    public_proxy_url: str | None = None  # None: ws://<proxy_listen>/exec
    internal_proxy_url: str | None = None  # None: proxy_url
    database_url: str | None = None  # None: the embedded SQLite store
    secrets_dir: Path | None = None  # None: data_dir (always a Path once built)
    replica_id: str = field(default_factory=default_replica_id)
    retention: float = DEFAULT_RETENTION  # seconds (a duration text is parsed)
    http: dict[str, Any] = field(default_factory=dict)  # service.http_server.HttpSettings

    def __post_init__(self) -> None:
        self.retention = parse_duration(self.retention, "retention")
        if self.secrets_dir is None:
            self.secrets_dir = self.data_dir
        if self.database_url is not None and not is_postgres_url(self.database_url):
            # The URL may hold a password: name the field, never echo the value.
            raise ValueError("database_url: must be a postgresql:// URL (unset for SQLite)")

    @property
    def store_path(self) -> Path:
        return self.data_dir / "stackspace.db"

    @property
    def store_key_file(self) -> Path:
        """The Fernet key of the store's encrypted columns. An embedded install
        made before secrets_dir existed keeps its key beside the SQLite file:
        that key stays in use (a new one would make its secrets unreadable)."""
        key = Path(self.secrets_dir or self.data_dir) / "store.key"
        legacy = self.store_path.parent / "store.key"
        if self.database_url is None and not key.exists() and legacy.exists():
            return legacy
        return key

    def secret_file(self, name: str, nbytes: int = 32) -> str:
        """A shared secret from secrets_dir, generated there (0600) if missing."""
        path = Path(self.secrets_dir or self.data_dir) / name
        return read_or_create(path, lambda: secrets.token_hex(nbytes).encode()).decode()

    @property
    def ticket_key(self) -> bytes:
        """HMAC key shared by the service (mints) and the exec proxy (verifies)."""
        return bytes.fromhex(self.secret_file("ticket-key"))

    @property
    def proxy_url(self) -> str:
        """Where clients open terminals: behind a Service or ingress, not the listen address."""
        return self.public_proxy_url or f"ws://{self.proxy_listen}/exec"

    @property
    def proxy_internal_url(self) -> str:
        """Where the service's own execs (the file API) reach the proxy."""
        return self.internal_proxy_url or self.proxy_url

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
            passphrase=passphrase, pulumi_home=home, bin_dir=bin_dir, python=sys.executable)

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
    secrets_dir = _path(env.get("STACKSPACE_SECRETS_DIR", data.get("secrets_dir")))
    cfg = ServiceConfig(
        data_dir=Path(env.get("STACKSPACE_DATA_DIR", data.get("data_dir", DEFAULT_DATA_DIR))),
        listen=env.get("STACKSPACE_LISTEN", data.get("listen", "127.0.0.1:8080")),
        proxy_listen=env.get("STACKSPACE_PROXY_LISTEN", data.get("proxy_listen", "")),
        backend_url=env.get("PULUMI_BACKEND_URL", data.get("backend_url")),
        pool_size=int(env["STACKSPACE_POOL_SIZE"]) if "STACKSPACE_POOL_SIZE" in env
        else data.get("pool_size"),
        quota=int(env.get("STACKSPACE_QUOTA", data.get("quota", 10))),
        operation_timeout=float(data.get("operation_timeout", 1800)),
        idle_stop_after=float(env["STACKSPACE_IDLE_STOP_AFTER"])
        if "STACKSPACE_IDLE_STOP_AFTER" in env else data.get("idle_stop_after"),
        lease_seconds=float(env.get("STACKSPACE_LEASE_SECONDS", data.get("lease_seconds", 30))),
        storage_scan_seconds=float(env.get("STACKSPACE_STORAGE_SCAN_SECONDS",
                                           data.get("storage_scan_seconds", 60))),
        session_idle_timeout=float(env.get("STACKSPACE_SESSION_IDLE_TIMEOUT",
                                           data.get("session_idle_timeout", 3600))),
        runtimes=[parse_runtime(r) for r in data.get("runtimes", [])],
        database_url=env.get("STACKSPACE_DATABASE_URL", data.get("database_url")) or None,
        secrets_dir=secrets_dir,
        replica_id=env.get("STACKSPACE_REPLICA_ID", data.get("replica_id"))
        or default_replica_id(),
        public_proxy_url=env.get("STACKSPACE_PROXY_URL", data.get("proxy_url")),
        internal_proxy_url=env.get("STACKSPACE_PROXY_INTERNAL_URL",
                                   data.get("proxy_internal_url")),
        retention=env.get("STACKSPACE_RETENTION", data.get("retention", DEFAULT_RETENTION)),
        http=data.get("http") or {},
    )
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, Path(value) if key in ("data_dir", "secrets_dir") else value)
    if secrets_dir is None and overrides.get("secrets_dir") is None:
        cfg.secrets_dir = cfg.data_dir  # the default follows a data_dir override
    if not cfg.proxy_listen:  # the default follows the service's address
        cfg.proxy_listen = next_port(cfg.listen)
    cfg.__post_init__()  # overrides are checked like the file and the environment
    if not cfg.runtimes:
        host = env.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        cfg.runtimes = [parse_runtime({"name": "local", "type": "docker", "host": host})]
    return cfg


def next_port(listen: str) -> str:
    """HOST:PORT+1: the exec proxy's default address beside the service's, so
    two services on one host (other --listen ports) never share a proxy port."""
    host, _, port = listen.rpartition(":")
    return f"{host}:{int(port) + 1}"


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
