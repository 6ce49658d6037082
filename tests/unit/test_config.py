"""Service configuration for replicas (SPEC §9): the store's database URL, the
shared secrets directory and the replica id."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from service.config import ServiceConfig, load_config
from service.secret_files import SecretUnavailable, read_or_create
from service.store import Store, open_store

RUNTIME = {"name": "local", "type": "docker", "host": "unix:///var/run/docker.sock"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("STACKSPACE_DATA_DIR", "STACKSPACE_DATABASE_URL", "STACKSPACE_SECRETS_DIR",
                "STACKSPACE_REPLICA_ID", "PULUMI_CONFIG_PASSPHRASE"):
        monkeypatch.delenv(var, raising=False)


def test_embedded_default_keeps_everything_in_the_data_dir(tmp_path: Path):
    cfg = load_config(data_dir=str(tmp_path / "data"))
    assert cfg.database_url is None and cfg.store_path == tmp_path / "data" / "stackspace.db"
    assert cfg.secrets_dir == tmp_path / "data"
    cfg.ticket_key  # noqa: B018 - generated on first use
    open_store(cfg)
    for name in ("ticket-key", "store.key"):
        assert (tmp_path / "data" / name).stat().st_mode & 0o777 == 0o600


def test_shared_secrets_come_from_secrets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "ticket-key").write_text("ab" * 32)
    (shared / "passphrase").write_text("from-the-secret\n")
    monkeypatch.setenv("STACKSPACE_SECRETS_DIR", str(shared))
    replica_a = load_config(data_dir=str(tmp_path / "a"))
    replica_b = load_config(data_dir=str(tmp_path / "b"))
    assert replica_a.ticket_key == replica_b.ticket_key == bytes.fromhex("ab" * 32)
    assert replica_a.pulumi_settings().passphrase == "from-the-secret"
    # Both replicas seal and open with one store key, kept in the shared dir.
    assert replica_a.store_key_file == replica_b.store_key_file == shared / "store.key"
    assert not (tmp_path / "a" / "ticket-key").exists()


def test_passphrase_env_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "from-env")
    cfg = load_config(data_dir=str(tmp_path))
    assert cfg.pulumi_settings().passphrase == "from-env"
    assert not (tmp_path / "passphrase").exists()


def test_existing_embedded_key_stays_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An install from before secrets_dir: its key sits beside the SQLite file."""
    data = tmp_path / "data"
    old = Store(data / "stackspace.db")
    old.create_workspace("alice", "one", "ws-alice-one", RUNTIME, {"name": "one"},
                         {"credential": "kept"}, quota=10)
    monkeypatch.setenv("STACKSPACE_SECRETS_DIR", str(tmp_path / "secrets"))
    cfg = load_config(data_dir=str(data))
    assert open_store(cfg).workspace_secrets("alice", "one") == {"credential": "kept"}


def test_secret_generated_once_when_replicas_start_together(tmp_path: Path):
    values: list[bytes] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        values.append(read_or_create(tmp_path / "ticket-key", lambda: threading.get_native_id()
                                     .to_bytes(8, "big").hex().encode()))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(values)) == 1 and values[0]
    assert [p.name for p in tmp_path.iterdir()] == ["ticket-key"]  # no temporary file left


def test_missing_secret_that_cannot_be_made_names_the_file(tmp_path: Path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cfg = ServiceConfig(data_dir=tmp_path, secrets_dir=blocker / "secrets")
    with pytest.raises(SecretUnavailable, match="ticket-key"):
        cfg.ticket_key  # noqa: B018


def test_database_url_must_be_postgresql_and_is_never_echoed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STACKSPACE_DATABASE_URL", "mysql://app:hunter2@db/stackspace")
    with pytest.raises(ValueError, match="database_url") as err:
        load_config(data_dir=str(tmp_path))
    assert "hunter2" not in str(err.value)
    monkeypatch.setenv("STACKSPACE_DATABASE_URL", "postgresql://app@127.0.0.1:25432/x")
    assert load_config(data_dir=str(tmp_path)).database_url.startswith("postgresql://")


def test_replica_ids_differ_unless_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    a, b = load_config(data_dir=str(tmp_path)), load_config(data_dir=str(tmp_path))
    assert a.replica_id != b.replica_id
    monkeypatch.setenv("STACKSPACE_REPLICA_ID", "svc-0")
    assert load_config(data_dir=str(tmp_path)).replica_id == "svc-0"
