"""Which service replicas on this host are dead (service.replica): only those
let a replica take an operation over before its lease expires, or kill engine
processes on this host."""

from __future__ import annotations

import os
import socket
import subprocess

from service.replica import dead_here, engine_tag_prefix, left_by_dead_replica


def _gone_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_replica_of_this_host_is_dead_only_when_its_process_is_gone():
    host = socket.gethostname()
    with subprocess.Popen(["sleep", "30"]) as live:
        try:
            assert not dead_here(f"{host}-{live.pid}-a1b2c3", "me")
        finally:
            live.kill()
    assert dead_here(f"{host}-{_gone_pid()}-a1b2c3", "me")
    # Our own pid under another id: an earlier process (a container's pid 1).
    assert dead_here(f"{host}-{os.getpid()}-a1b2c3", "me")


def test_other_hosts_operator_ids_and_ourselves_wait_for_the_lease():
    gone = _gone_pid()
    assert not dead_here(f"elsewhere-{gone}-a1b2c3", "me")  # another host: its lease says
    assert not dead_here("web-7d9f-replica", "me")  # an operator's id: only its lease says
    assert not dead_here(None, "me")
    me = f"{socket.gethostname()}-{os.getpid()}-a1b2c3"
    assert not dead_here(me, me)


def test_engine_tags_of_dead_replicas_of_this_store_only():
    ours = engine_tag_prefix("inst", "run1")
    assert ours.startswith(f"inst:{os.getpid()}-")
    assert left_by_dead_replica(f"inst:{_gone_pid()}-run0:0:0", "inst")
    with subprocess.Popen(["sleep", "30"]) as live:
        try:
            assert not left_by_dead_replica(f"inst:{live.pid}-run0:0:0", "inst")
        finally:
            live.kill()
    assert not left_by_dead_replica(f"other:{_gone_pid()}-run0:0:0", "inst")


def test_a_default_id_is_recognised_by_the_process_that_made_it():
    import os

    from service.config import default_replica_id
    from service.replica import is_default_id

    made = default_replica_id()
    assert is_default_id(made, os.getpid())
    assert not is_default_id(made, os.getpid() + 1)
    assert not is_default_id("pod-a", os.getpid())


def test_a_dead_process_not_yet_reaped_counts_as_dead():
    """A killed service's HTTP worker lingers as a zombie until init reaps it:
    its leases are known dead at once all the same."""
    import subprocess
    import time
    from pathlib import Path

    from service.replica import pid_alive

    child = subprocess.Popen(["sleep", "60"])
    try:
        assert pid_alive(child.pid)
        child.kill()
        deadline = time.monotonic() + 5
        stat = Path(f"/proc/{child.pid}/stat")
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not pid_alive(child.pid)  # a zombie: not reaped yet
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid)
