"""stackspace-session itself (proxy/session_helper), run on this host with a
private sessions directory: replay of the retained output after a detach,
back-pressure while a client is attached, exit codes, a pty with resize, the
per-workspace cap, kill, and the end after the idle time with no client."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from proxy import session_frames as sf
from proxy.sessions import helper_dir
from tests.conftest import unavailable

MiB = 1 << 20


@pytest.fixture
def helper(tmp_path: Path):
    binary = helper_dir() / "stackspace-session-linux-amd64"
    if not binary.is_file():
        unavailable("session helper not built: run scripts/setup")
    env = {**os.environ, "STACKSPACE_SESSIONS_DIR": str(tmp_path / "sessions")}

    def spawn(*args: str) -> subprocess.Popen:
        return subprocess.Popen([str(binary), *args], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(binary), *args], env=env, capture_output=True, timeout=30,
                              check=False)
    yield spawn, run
    for s in json.loads(run("list").stdout or b"[]"):
        run("kill", s["id"])


class Conn:
    """The proxy's side of one helper exec: frames both ways."""

    def __init__(self, proc: subprocess.Popen, offset: int = 0) -> None:
        self.proc, self.reader = proc, sf.FrameReader()
        self.pending: list[tuple[bytes, bytes]] = []
        self.send(sf.encode_json(sf.ATTACH, {"offset": offset}))
        kind, payload = self.next()
        assert kind == sf.HELLO, (kind, payload, proc.stderr and proc.stderr.read())
        self.hello = json.loads(payload)

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def next(self) -> tuple[bytes, bytes]:
        assert self.proc.stdout is not None
        while not self.pending:
            data = os.read(self.proc.stdout.fileno(), 1 << 16)
            assert data, "the helper closed the stream"
            self.pending += self.reader.feed(data)
        return self.pending.pop(0)

    def until_exit(self) -> tuple[bytes, int]:
        out = bytearray()
        while True:
            kind, payload = self.next()
            if kind == sf.EXIT:
                return bytes(out), json.loads(payload)["code"]
            out += payload

    def detach(self) -> None:
        # Close our input (the detach) and read what the helper still writes
        # until it exits: a pipe nobody reads would block its last write.
        self.proc.communicate(timeout=30)


@functools.cache
def expected(mib: int) -> bytes:
    # `seq` output is deterministic: the test compares the bytes, not just a count
    return b"".join(b"%d\n" % i for i in range(1, 1_000_000))[: mib * MiB]


def wait_for(check, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def sessions(run) -> dict[str, dict]:
    return {s["id"]: s for s in json.loads(run("list").stdout)}


def test_detached_output_is_kept_and_replayed_from_the_offset(helper):
    spawn, run = helper
    size = 3 * MiB
    conn = Conn(spawn("start", "--id", "big", "--", "sh", "-c",
                      f"seq 1 10000000 | head -c {size}; exit 5"))
    conn.detach()  # nobody reads: the command must not block on its output
    wait_for(lambda: sessions(run)["big"]["running"] is False)
    assert sessions(run)["big"]["exit_code"] == 5
    assert sessions(run)["big"]["output_bytes"] == size
    again = Conn(spawn("attach", "big"))
    start = again.hello["offset"]
    assert size - 2 * MiB - 32 * 1024 <= start <= size - 2 * MiB  # at least 2 MiB kept
    out, code = again.until_exit()
    assert code == 5 and out == expected(3)[start:]
    # a client that has some of it asks for the rest only
    tail = Conn(spawn("attach", "big"), offset=size - 10)
    assert tail.hello["offset"] == size - 10 and tail.until_exit() == (expected(3)[-10:], 5)
    tail.send(sf.encode(sf.DONE))  # the exit reached the user: the session ends
    wait_for(lambda: "big" not in sessions(run))


def test_an_attached_slow_reader_loses_nothing(helper):
    spawn, run = helper
    conn = Conn(spawn("start", "--id", "slow", "--", "sh", "-c",
                      "seq 1 10000000 | head -c 6291456"))
    # the producer fills the ring while the attached reader has read nothing yet
    wait_for(lambda: sessions(run)["slow"]["output_bytes"] >= 2 * MiB - 64 * 1024)
    out, code = conn.until_exit()
    assert code == 0 and hashlib.sha256(out).digest() == hashlib.sha256(expected(6)).digest()


def test_stdin_stderr_exit_codes_and_a_missing_command(helper):
    spawn, _ = helper
    conn = Conn(spawn("start", "--id", "io", "--", "sh", "-c", "wc -c; echo oops >&2; exit 7"))
    conn.send(sf.encode(sf.STDIN, b"12345") + sf.encode(sf.CLOSE_STDIN))
    frames = []
    while (f := conn.next())[0] != sf.EXIT:
        frames.append(f)
    assert b"".join(p for k, p in frames if k == sf.STDOUT).strip() == b"5"
    assert b"".join(p for k, p in frames if k == sf.STDERR) == b"oops\n"
    assert json.loads(f[1]) == {"code": 7}
    missing = Conn(spawn("start", "--id", "nope", "--", "no-such-command-here"))
    out, code = missing.until_exit()
    assert code == 127 and b"no-such-command-here" in out


def test_a_terminal_session_has_a_pty_that_resizes(helper):
    spawn, _ = helper
    conn = Conn(spawn("start", "--id", "tty", "--tty", "--", "sh", "-c",
                      "read x; stty size; exit 4"))
    conn.send(sf.encode(sf.RESIZE, b'{"Width": 100, "Height": 30}'))
    conn.send(sf.encode(sf.STDIN, b"go\n"))
    out, code = conn.until_exit()
    assert code == 4 and b"30 100" in out


def test_the_cap_kill_and_the_idle_end(helper):
    spawn, run = helper
    first = Conn(spawn("start", "--id", "one", "--max", "1", "--idle", "1", "--",
                       "sleep", "3131"))
    refused = run("start", "--id", "two", "--max", "1", "--", "true")
    assert refused.returncode == 75 and b"too many sessions" in refused.stderr
    assert run("start", "--id", "one", "--", "true").returncode == 73  # ids are unique
    listed = sessions(run)["one"]
    assert listed["running"] is True and listed["attached"] == 1
    assert listed["command"] == ["sleep", "3131"]
    first.detach()  # no client for 1 s: killed, gone
    wait_for(lambda: "one" not in sessions(run))
    assert not [p for p in Path("/proc").glob("[0-9]*")  # the command, not the helper
                if _cmdline(p).startswith(b"sleep\x003131")]
    Conn(spawn("start", "--id", "three", "--", "sleep", "3132")).detach()
    assert run("kill", "three").returncode == 0
    wait_for(lambda: "three" not in sessions(run))
    assert run("kill", "three").returncode == 3
    assert run("attach", "three").returncode == 3


def _cmdline(p: Path) -> bytes:
    try:
        return p.joinpath("cmdline").read_bytes()
    except OSError:
        return b""
