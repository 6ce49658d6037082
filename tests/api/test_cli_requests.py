"""The CLI's requests as a user meets them, without an engine: it asks to
queue where a user expects it (SPEC §3, §4): `delete` always waits its turn,
and `--queue` lets start, stop and update do the same; without it a busy
workspace answers 409 and the CLI says so. A service it cannot reach is a
one-line error, not a traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys


def cli(svc, *args: str, stdin: str | None = None, url: str | None = None
        ) -> subprocess.CompletedProcess:
    env = {**os.environ, "STACKSPACE_URL": url or svc.url, "STACKSPACE_TOKEN": svc.alice}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def kinds(svc, name: str) -> list[tuple[str, str]]:
    rows = svc.store.db.execute("SELECT kind, status FROM operations WHERE owner='alice'"
                                " AND workspace=? ORDER BY seq", (name,)).fetchall()
    return [(r["kind"], r["status"]) for r in rows]


def test_delete_queues_by_default_and_queue_is_a_flag(idle_service):
    svc = idle_service
    created = cli(svc, "create", "-", "--json", stdin=json.dumps({"name": "busy"}))
    assert created.returncode == 0, created.stderr  # queued: the dispatcher is stopped

    refused = cli(svc, "stop", "busy")
    assert refused.returncode == 1 and "409" in refused.stderr, refused
    assert kinds(svc, "busy") == [("create", "queued")]  # nothing changed

    for args in (["stop", "busy", "--queue"], ["update", "busy", "-", "--queue"]):
        r = cli(svc, *args, "--json", stdin='{"env": {"A": "1"}}')
        assert r.returncode == 0 and json.loads(r.stdout)["status"] == "queued", r.stderr
    deleted = cli(svc, "delete", "busy", "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout)["kind"] == "delete"
    assert kinds(svc, "busy") == [("create", "queued"), ("stop", "queued"),
                                  ("update", "queued"), ("delete", "queued")]
    assert cli(svc, "delete", "busy", "--no-queue").returncode == 1


def test_an_unreachable_service_is_a_one_line_error(idle_service):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    for args in (["list"], ["show", "x"], ["delete", "x", "--wait"]):
        r = cli(idle_service, *args, url=url)
        assert r.returncode == 1, r
        assert r.stderr == f"Error: cannot reach the service at {url} (STACKSPACE_URL, " \
            "--url): is it running?\n", r.stderr
