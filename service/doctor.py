"""`stackspace doctor`: is every part the configured runtimes need here and working?"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from components.clients import docker_client, kube_api_client
from components.egress import HOLDER_IMAGE, HOLDER_MISSING
from components.runtime import DockerRuntime, KubernetesRuntime
from service.config import ServiceConfig


def _check(name: str, ok: bool, detail: str, required: bool = True) -> dict[str, Any]:
    return {"name": name, "ok": ok, "required": required, "detail": detail}


def _version(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.returncode == 0 else None


def _plugin(home: Path, name: str) -> str | None:
    found = sorted((home / "plugins").glob(f"resource-{name}-v*"))
    found = [p for p in found if p.is_dir() and not p.name.endswith(".partial")]
    return found[-1].name.removeprefix(f"resource-{name}-") if found else None


def run_checks(cfg: ServiceConfig) -> list[dict[str, Any]]:
    settings = cfg.pulumi_settings()
    bin_dir = settings.bin_dir or Path()
    checks = []
    cli = _version([str(bin_dir / "pulumi"), "version"])
    checks.append(_check("pulumi CLI", cli is not None,
                         cli or f"missing at {bin_dir}: run scripts/setup"))
    host = bin_dir / "pulumi-language-python"
    checks.append(_check("python language host", host.is_file(),
                         str(host) if host.is_file() else "missing: run scripts/setup"))
    kinds = {type(r) for r in cfg.runtimes}
    for name, kind in (("docker", DockerRuntime), ("kubernetes", KubernetesRuntime)):
        version = _plugin(settings.pulumi_home, name)
        checks.append(_check(f"plugin {name}", version is not None,
                             version or f"not installed in {settings.pulumi_home}",
                             required=kind in kinds))
    if cfg.database_url:  # the embedded SQLite store needs nothing to check
        checks.append(_store_check(cfg.database_url))
    for rt in cfg.runtimes:
        checks.append(_runtime_check(rt))
    return checks


def _store_check(url: str) -> dict[str, Any]:
    from service.db import DatabaseUnavailable, probe

    try:
        return _check("store (postgresql)", True, f"PostgreSQL {probe(url)}")
    except DatabaseUnavailable as e:
        return _check("store (postgresql)", False, str(e))


def _runtime_check(rt: DockerRuntime | KubernetesRuntime) -> dict[str, Any]:
    if isinstance(rt, DockerRuntime):
        try:
            client = docker_client(rt, timeout=10)
            version = client.version().get("Version", "?")
            holder = rt.egress_allow is None or bool(client.images.list(name=HOLDER_IMAGE))
            client.close()
            if not holder:
                return _check(f"runtime {rt.name} (docker)", False, HOLDER_MISSING)
            return _check(f"runtime {rt.name} (docker)", True, f"Docker Engine {version}")
        except Exception as e:  # noqa: BLE001 - report any failure as the reason
            return _check(f"runtime {rt.name} (docker)", False, f"{rt.host}: {type(e).__name__}")
    from kubernetes import client

    try:
        api = kube_api_client(rt)
        version = client.VersionApi(api).get_code().git_version
        client.CoreV1Api(api).read_namespace(rt.namespace)
        return _check(f"runtime {rt.name} (kubernetes)", True,
                      f"Kubernetes {version}, namespace {rt.namespace}")
    except Exception as e:  # noqa: BLE001 - report any failure as the reason
        return _check(f"runtime {rt.name} (kubernetes)", False, f"{type(e).__name__}: {e}"[:200])
