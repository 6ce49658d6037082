"""Tokens and retention with a real `stackspace run` (SPEC §7, §8), on SQLite
and PostgreSQL: the admin token is printed at the first start only and
keeps working across restarts; `stackspace token --config` mints, lists and
revokes on the very store the service uses, and `token rotate-admin`
replaces the admin token while the service runs; old history is pruned at
start; no minted token value reaches the service's log."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from service.store import Store
from tests.faults.harness import REPO, LiveService

RUNTIMES = [{"name": "local", "type": "docker", "host": "unix:///nonexistent.sock"}]
PRINTED = re.compile(r"admin token \(shown once\): (\S+)")
DAY = 86400.0


def _cli(svc: LiveService, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "service.cli", "token", *args,
                           "--config", str(svc.config)], cwd=REPO, env=svc.env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _printed_since_last_start(svc: LiveService) -> list[str]:
    return PRINTED.findall(svc.log.read_text().rsplit("--- start", 1)[1])


def _works(svc: LiveService, token: str) -> bool:
    code = svc.call("GET", "/workspaces", token).status_code
    assert code in (200, 401)
    return code == 200


def test_admin_token_once_cli_on_the_service_store_and_retention(
        tmp_path, store_backend, pulumi_bin, pulumi_home):
    database_url = store_backend("tokens")
    settings = {"retention": "30d", **({"database_url": database_url} if database_url else {})}
    svc = LiveService(tmp_path, RUNTIMES, settings=settings, pulumi_bin=pulumi_bin,
                      pulumi_home=pulumi_home, extra_env={"STACKSPACE_ADMIN_TOKEN": ""})
    # History left by a workspace deleted long ago, and a recent operation.
    store = Store(database_url or svc.data_dir / "stackspace.db")
    old = time.time() - 40 * DAY
    for i, ended in enumerate((old, old, time.time())):
        store.db.execute("INSERT INTO operations(id, owner, workspace, kind, status, seq,"
                         " created, ended) VALUES (?,?,?,?,?,?,?,?)",
                         (f"op{i}", "bob", "gone", "delete", "succeeded", i + 1, ended, ended))
    try:
        svc.start()
        first = _printed_since_last_start(svc)
        assert len(first) == 1 and _works(svc, first[0])
        admin = first[0]
        deadline = time.monotonic() + 60  # pruned at start by the dispatcher
        while {r[0] for r in store.db.execute("SELECT id FROM operations")} != {"op2"}:
            assert time.monotonic() < deadline, "old operations were not pruned"
            time.sleep(0.2)

        svc.stop()
        svc.start()
        assert _printed_since_last_start(svc) == []  # made once, printed once
        assert _works(svc, admin)

        # `token --config` works on the service's store (PostgreSQL too).
        dave = _cli(svc, "create", "dave", "--expires-in", "1h", "--name", "ci").strip()
        assert _works(svc, dave)
        listed = json.loads(_cli(svc, "list", "--json"))["items"]
        assert dave not in json.dumps(listed) and admin not in json.dumps(listed)
        (entry,) = [t for t in listed if t["owner"] == "dave"]
        assert entry["name"] == "ci" and entry["expires_at"] > time.time() + 3500
        minted = svc.call("POST", "/tokens", admin, json={"owner": "erin"}).json()["token"]
        assert _works(svc, minted)
        _cli(svc, "revoke", entry["id"])
        assert not _works(svc, dave)
        if database_url:
            assert not (svc.data_dir / "stackspace.db").exists()  # nothing went to SQLite

        # Rotation while the service runs: the old admin token stops at once.
        rotated = _cli(svc, "rotate-admin").strip()
        assert not _works(svc, admin) and _works(svc, rotated)
        svc.stop()
        svc.start()
        assert _printed_since_last_start(svc) == [] and _works(svc, rotated)
        log = svc.log.read_text()
        assert all(value not in log for value in (dave, minted, rotated))
    finally:
        svc.stop()
        store.close()
