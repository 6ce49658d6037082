"""Shared fixtures: the real toolchain (scripts/setup), a Docker Engine
(scripts/docker-engine) and a Pulumi backend private to the test session.

Missing real parts skip the tests that need them, with a reason naming the
part; set STACKSPACE_REQUIRE_E2E=1 (and STACKSPACE_REQUIRE_KUBE=1 for the
Kubernetes test cluster) to turn those skips into failures. Under
STACKSPACE_REQUIRE_E2E=1 any other skip fails too, so CI (.ci/run) cannot
pass on tests that did not run.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.config import PULUMI_VERSION, cache_dir

REPO = Path(__file__).resolve().parents[1]
CACHE = cache_dir()


def unavailable(reason: str, require: str = "STACKSPACE_REQUIRE_E2E") -> None:
    """Skip for want of a real part, or fail if `require` (an env var) is 1."""
    if os.environ.get(require) == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


# Tests that share one real part whose state they change keep to one
# pytest-xdist worker (scripts/test runs `--dist loadgroup`): the remote test
# host is stopped and started by its tests; the test cluster is one small
# node whose installs use fixed host ports.
SHARED_PARTS = {"remote_docker_host": "remote-docker-host", "kube_cluster": "test-cluster"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks into the node ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = getattr(item, "fixturenames", ())
        for fixture, group in SHARED_PARTS.items():
            if fixture in used:
                item.add_marker(pytest.mark.xdist_group(group))
                break


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Strict runs: a skipped test is a failed one (whatever skipped it)."""
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and not hasattr(report, "wasxfail")
            and os.environ.get("STACKSPACE_REQUIRE_E2E") == "1"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under STACKSPACE_REQUIRE_E2E=1: {reason}"


@pytest.fixture(scope="session")
def pulumi_bin() -> Path:
    """Directory with the Pulumi CLI and language host built by scripts/setup."""
    from_env = os.environ.get("STACKSPACE_PULUMI_BIN")
    candidates = [Path(from_env)] if from_env else []
    candidates.append(CACHE / "pulumi" / PULUMI_VERSION / "bin")
    for d in candidates:
        if (d / "pulumi").is_file() and (d / "pulumi-language-python").is_file():
            return d
    unavailable("Pulumi CLI and language host not built: run scripts/setup")
    raise AssertionError  # unreachable


@pytest.fixture(scope="session")
def pulumi_home() -> Path:
    return Path(os.environ.get("PULUMI_HOME", CACHE / "pulumi-home"))


def plugin_installed(pulumi_home: Path, name: str) -> bool:
    plugins = pulumi_home / "plugins"
    return any(p.name.startswith(f"resource-{name}-v") and not p.name.endswith(".partial")
               for p in plugins.glob(f"resource-{name}-v*")) if plugins.is_dir() else False


@pytest.fixture(scope="session")
def docker_provider(pulumi_home: Path) -> None:
    if not plugin_installed(pulumi_home, "docker"):
        why = CACHE / "docker-provider.missing"
        reason = why.read_text().strip() if why.exists() else "not built (run scripts/setup)"
        unavailable(f"pulumi-resource-docker plugin missing: {reason}")


@pytest.fixture(scope="session")
def kubernetes_provider(pulumi_home: Path) -> None:
    if not plugin_installed(pulumi_home, "kubernetes"):
        unavailable("pulumi-resource-kubernetes plugin missing: run scripts/setup")


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    """DOCKER_HOST of a running engine; starts a private dockerd if none answers."""
    state = CACHE / "dockerd" / "started-by-us"
    already = state.exists() and _alive(CACHE / "dockerd" / "dockerd.pid")
    proc = subprocess.run([str(REPO / "scripts" / "docker-engine"), "up"], capture_output=True,
                          text=True, check=False, timeout=600)
    if proc.returncode != 0:
        unavailable(f"no Docker Engine: {proc.stderr.strip().splitlines()[-1:]}")
    host = proc.stdout.strip().splitlines()[-1]
    yield host
    if not already and state.exists():
        subprocess.run([str(REPO / "scripts" / "docker-engine"), "down"], check=False)


def default_network_works(host: str) -> str | None:
    """Whether the Docker Engine at `host` still starts a container on its
    default network (what every new workspace needs): None if so, else why."""
    import docker

    from components.spec import DEFAULT_IMAGE

    client = docker.DockerClient(base_url=host, timeout=60)
    try:
        out = client.containers.run(DEFAULT_IMAGE, ["true"], network_mode="bridge",
                                    remove=True, labels={"stackspace.test": "engine-intact"})
        return None if out == b"" else f"unexpected output {out!r}"
    except docker.errors.DockerException as e:
        return f"{type(e).__name__}: {e}"
    finally:
        client.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite leaves the machine as it found it: after every test and
    teardown, the local engine (the one scripts/test started or found) still
    starts a container on its default network. A developer's `scripts/run`
    after the tests depends on it."""
    host = os.environ.get("DOCKER_HOST")
    if (os.environ.get("STACKSPACE_REQUIRE_E2E") != "1" or not host
            or hasattr(session.config, "workerinput")):  # once, in the controller
        return
    why = default_network_works(host)
    if why is not None:
        session.config.get_terminal_writer().line(
            f"the local Docker Engine ({host}) no longer starts a container on its default "
            f"network after the suite: {why}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def docker_client(docker_host: str):
    import docker

    client = docker.DockerClient(base_url=docker_host)
    yield client
    client.close()


@pytest.fixture(scope="session")
def pulumi_settings(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path,
                    pulumi_home: Path):
    from stacks.settings import PulumiSettings

    state = tmp_path_factory.mktemp("pulumi-state")
    return PulumiSettings(
        backend_url=f"file://{state}",
        passphrase=secrets.token_hex(16),
        pulumi_home=pulumi_home,
        bin_dir=pulumi_bin,
        python=sys.executable,
    )


@pytest.fixture(scope="session")
def runner(pulumi_settings):
    from stacks.automation import StackRunner

    return StackRunner(pulumi_settings)


@pytest.fixture(scope="session")
def remote_docker_host(docker_host: str) -> Iterator[dict[str, str]]:
    """A second Docker Engine standing in for a remote host (scripts/test-docker-host):
    TLS on 127.0.0.1 and sshd in front of its socket. Yields its connection details
    (TLS_HOST, TLS_CA, TLS_CERT, TLS_KEY, SSH_HOST, SSH_IDENTITY, SSH_KNOWN_HOSTS,
    SOCKET); stops it at the end only if this session started it."""
    script = REPO / "scripts" / "test-docker-host"
    running = subprocess.run([str(script), "status"], capture_output=True,
                             check=False).returncode == 0
    proc = subprocess.run([str(script), "up"], capture_output=True, text=True, check=False,
                          timeout=600)
    if proc.returncode != 0:
        unavailable(f"no remote test Docker host: {proc.stderr.strip().splitlines()[-3:]}")
    yield dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    if not running:
        subprocess.run([str(script), "down"], capture_output=True, check=False, timeout=120)


def remote_runtime(details: dict[str, str], kind: str, name: str | None = None
                   ) -> dict[str, str]:
    """A Docker runtime entry for the remote test host over "tls" or "ssh"."""
    if kind == "tls":
        return {"name": name or "remote-tls", "type": "docker", "host": details["TLS_HOST"],
                "ca_file": details["TLS_CA"], "cert_file": details["TLS_CERT"],
                "key_file": details["TLS_KEY"]}
    return {"name": name or "remote-ssh", "type": "docker", "host": details["SSH_HOST"],
            "ssh_identity_file": details["SSH_IDENTITY"],
            "ssh_known_hosts_file": details["SSH_KNOWN_HOSTS"]}


# --- PostgreSQL (scripts/test-postgres) ------------------------------------------

@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of the test PostgreSQL server (Debian's package on 127.0.0.1:25432),
    started if it is not running; stopped at the end only if this session
    started it, unless STACKSPACE_KEEP_TEST_POSTGRES=1. Under pytest-xdist it
    is left running: each worker is a session of its own, and the first to
    finish would stop it under the others."""
    script = REPO / "scripts" / "test-postgres"
    running = subprocess.run([str(script), "status"], capture_output=True,
                             check=False).returncode == 0
    proc = subprocess.run([str(script), "up"], capture_output=True, text=True, check=False,
                          timeout=600)
    if proc.returncode != 0:
        unavailable(f"no test PostgreSQL: {proc.stderr.strip().splitlines()[-3:]}")
    yield proc.stdout.strip().splitlines()[-1]
    if not running and os.environ.get("STACKSPACE_KEEP_TEST_POSTGRES") != "1" and \
            not os.environ.get("PYTEST_XDIST_WORKER"):
        subprocess.run([str(script), "down"], capture_output=True, check=False, timeout=120)


def create_database(server_url: str, prefix: str) -> str:
    """A new, uniquely named database on the server of `server_url`; returns its URL."""
    import psycopg

    name = f"{re.sub(r'[^a-z0-9_]', '_', prefix.lower())[:40]}_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server_url.rsplit('/', 1)[0]}/{name}"


def drop_database(server_url: str, url: str) -> None:
    """Drop a database made by create_database, closing whatever is still connected."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(server_url, autocommit=True) as conn:
        for attempt in range(30):
            try:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except psycopg.errors.InsufficientPrivilege:
                # A session FORCE may not end (seen once: a server process
                # without our role) goes by itself moments later: try again.
                if attempt == 29:
                    raise
                time.sleep(0.1)


@pytest.fixture
def new_database(postgres_url: str) -> Iterator[Callable[[str], str]]:
    """`new_database(prefix) -> url`: a fresh database, dropped after the test."""
    made: list[str] = []

    def make(prefix: str) -> str:
        made.append(create_database(postgres_url, prefix))
        return made[-1]

    yield make
    for url in made:
        drop_database(postgres_url, url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a test's store lives, once per backend: an SQLite file in the test's
    tmp dir, or a fresh PostgreSQL database (dropped after the test)."""
    if request.param == "sqlite":
        return tmp_path / "stackspace.db"
    return request.getfixturevalue("new_database")(f"store_{request.node.name}")


def raw_store_contents(store) -> bytes:
    """Everything a store's database holds, as bytes: the SQLite files, or
    every row of every table of the PostgreSQL database (for at-rest checks)."""
    from service.store import DatabaseURL

    if not isinstance(store.path, DatabaseURL):
        return b"".join(p.read_bytes() for p in store.path.parent.glob(f"{store.path.name}*"))
    tables = [r[0] for r in store.db.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
    assert "workspaces" in tables
    return "".join(r[0] for table in tables for r in store.db.execute(
        f'SELECT row_to_json(t)::text FROM "{table}" t')).encode()  # noqa: S608
