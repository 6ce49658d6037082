"""The SDK against the real service, engine and exec proxy: the loop an agent
runs (create, run commands, update, stop, start, delete)."""

from __future__ import annotations

import secrets
import subprocess
import time

import pytest

from service import sdk

pytestmark = [pytest.mark.e2e,
              pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)]


def _until(done, screen: bytearray, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, bytes(screen)
        time.sleep(0.05)


def test_an_agent_loop_through_the_sdk(service, docker_client):
    client = sdk.Client(service.url, service.alice)
    name = f"sdk-{secrets.token_hex(3)}"
    ws = client.create({"name": name, "env": {"GREETING": "hi"}})
    assert ws.state == "running"
    try:
        streamed: list[str] = []
        result = ws.commands.run('echo "$GREETING" && echo oops >&2 && exit 3',
                                 on_stdout=streamed.append)
        assert (result.exit_code, result.stdout, result.stderr) == (3, "hi\n", "oops\n")
        assert "".join(streamed) == "hi\n"
        result = ws.commands.run(["sh", "-c", 'mkdir -p sub && cd sub && cat > f && pwd'],
                                 stdin=b"from stdin")
        assert (result.exit_code, result.stdout) == (0, "/workspace/sub\n")
        result = ws.commands.run('echo "$A $B" && cat f', cwd="/workspace/sub",
                                 envs={"A": "x y", "B": "$(not run)"})
        assert result.stdout == "x y $(not run)\nfrom stdin"

        # A background command outlives this client; its output and exit code
        # are there for whoever reattaches.
        handle = ws.commands.run("for i in 1 2 3; do echo $i; sleep 0.2; done; exit 5",
                                 background=True)
        assert handle.id in [s["id"] for s in ws.commands.list()]
        done = ws.commands.connect(handle.id).wait()
        assert (done.exit_code, done.stdout) == (5, "1\n2\n3\n")
        forever = ws.commands.run(["sleep", "300"], background=True)
        forever.kill()
        assert all(s["id"] != forever.id or not s.get("running")
                   for s in ws.commands.list())

        screen = bytearray()
        term = ws.pty(cols=100, rows=30, on_data=screen.extend)
        term.send("stty size; tty >/dev/null && echo on-a-tty\n")
        _until(lambda: b"30 100" in screen and b"on-a-tty" in screen, screen)
        term.resize(120, 40)
        term.send("stty size\n")
        _until(lambda: b"40 120" in screen, screen)
        term.send("exit 7\n")
        assert term.wait(timeout=60) == 7

        with pytest.raises(sdk.ApiError) as e:
            ws.update({"env": {"bad name": "1"}})
        assert e.value.status == 422 and "env.bad name" in e.value.errors
        ws.update({"env": {"GREETING": "hello"}})
        assert ws.data["spec"]["env"] == {"GREETING": "hello"}
        assert ws.commands.run('echo "$GREETING"').stdout == "hello\n"
        ws.stop()
        assert ws.state == "stopped"
        with pytest.raises(sdk.ApiError) as e:
            ws.commands.run("true")
        assert e.value.status == 409
        ws.start()
        assert ws.commands.run("cat sub/f").stdout == "from stdin"  # storage kept
        assert [w.name for w in client.list()].count(name) == 1
        blob = bytes(range(256)) * 4096  # 1 MiB, every byte value
        ws.files.write("data/blob.bin", blob, mode=0o600)
        assert ws.files.read("data/blob.bin", format="bytes") == blob
        assert b"".join(ws.files.read("data/blob.bin", format="stream")) == blob
        assert ws.files.stat("data/blob.bin")["size"] == len(blob)
        assert [e["name"] for e in ws.files.list("data")] == ["blob.bin"]
        ws.files.write("note.txt", "hé\n")
        assert ws.commands.run("cat note.txt").stdout == "hé\n"
        assert not ws.files.exists("missing")
        with pytest.raises(sdk.FilesError):
            ws.files.read("../etc/passwd")
        # A server inside the workspace, reached from here with nothing published.
        assert ws.commands.run(
            "git init -q --bare srv.git && git daemon --reuseaddr --base-path=/workspace"
            " --export-all --listen=127.0.0.1 --port=9418 --detach").exit_code == 0
        with ws.forward(9418) as fwd:
            for _ in range(3):  # one ticket per connection
                ls = subprocess.run(["git", "ls-remote", f"git://{fwd.address}/srv.git"],
                                    capture_output=True, timeout=60)
                assert ls.returncode == 0, ls.stderr
        assert not docker_client.containers.get(ws.data["outputs"]["container"]).attrs[
            "NetworkSettings"]["Ports"]
        with pytest.raises(sdk.ApiError) as e:
            ws.forward(0)
        assert e.value.status == 422 and "port" in e.value.errors
        events = list(client.events(ws.data["last_operation"]["id"]))
        assert events[-1]["event"] == "end" and events[-1]["status"] == "succeeded"
    finally:
        ws.delete()
    with pytest.raises(sdk.ApiError) as e:
        client.get(name)
    assert e.value.status == 404 and e.value.type == "not-found"
