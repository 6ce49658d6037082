"""The file API end to end on the local Docker Engine, through the service and
the exec proxy, on a BusyBox-only image (no GNU tools): a binary round trip
with mode and mtime, a listing, tar both ways, every escape refused with
nothing written, files owned by the workspace user, `stackspace cp` both ways,
another user's 404 and a stopped workspace's 409. (Kubernetes and the remote
host: test_files_kubernetes.py, test_files_remote.py.)"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest

from tests.api.conftest import custom_service
from tests.e2e.busybox_image import busybox_image
from tests.e2e.file_steps import (
    MTIME,
    escapes_refused,
    files_url,
    in_workspace,
    round_trip,
    tar_round_trip,
)
from tests.e2e.remote_helpers import operate

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
UNREACHABLE = "ws://127.0.0.1:9/exec"  # discard: nothing listens


def cp(svc, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "STACKSPACE_URL": svc.url, "STACKSPACE_TOKEN": token or svc.alice}
    return subprocess.run([sys.executable, "-m", "service.cli", "cp", *args], env=env,
                          capture_output=True, timeout=300, check=False)


def broken_upload(svc, path: str) -> None:
    url = urlsplit(svc.url)
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {svc.alice}\r\n"
                     f"Content-Length: {4 << 20}\r\n\r\n".encode() + b"x" * (1 << 20))


def test_file_api_and_cp_on_local_docker(tmp_path, docker_host, docker_client,
                                         pulumi_settings, docker_provider):
    image = busybox_image(docker_client)
    name = f"files-{secrets.token_hex(3)}"
    with custom_service(tmp_path / "svc", docker_host, pulumi_settings) as svc:
        op = operate(svc, "POST", "", json={"name": name, "image": image})
        try:
            assert op["status"] == "succeeded", op.get("error")
            data = round_trip(svc, name, 3 * 1024 * 1024)
            # Written as the workspace user (the one terminals run as), never root.
            owners = in_workspace(svc, name, "id -u; stat -c '%u %a %Y' data/bin/blob.bin "
                                             "data/bin").split()
            assert owners == ["1000", "1000", "640", str(MTIME), "1000", "755", owners[-1]]
            # Replacing a file keeps its mode when none is sent.
            r = svc.call("PUT", files_url(name, "data/bin/blob.bin"), svc.alice, data=b"v2")
            assert r.status_code == 201 and r.json()["mode"] == "0640", r.text
            tar_round_trip(svc, name)
            escapes_refused(svc, name)

            # An upload whose client goes away half-way writes nothing, leaves nothing.
            broken_upload(svc, files_url(name, "data/cut.bin"))
            deadline = time.monotonic() + 60
            while (left := in_workspace(svc, name, "ls -a . data")).count(".stackspace-"):
                assert time.monotonic() < deadline, left
                time.sleep(0.5)
            assert "cut.bin" not in left
            # HEAD: the metadata and length without the bytes.
            r = svc.call("HEAD", files_url(name, "data/bin/blob.bin"), svc.alice)
            assert (r.status_code, r.headers["Content-Length"], r.content) == (200, "2", b"")
            assert r.headers["X-Stackspace-Mode"] == "0640"
            # A directory is not a file, a missing file is a 404, bad input a 400.
            r = svc.call("PUT", files_url(name, "tree"), svc.alice, data=b"x")
            assert r.status_code == 409 and "/tree: is a directory" in r.json()["detail"]
            r = svc.call("GET", files_url(name, "nope/at/all"), svc.alice)
            assert r.status_code == 404 and "/nope" in r.json()["detail"]
            r = svc.call("PUT", files_url(name, "m"), svc.alice, data=b"x",
                         headers={"X-Stackspace-Mode": "rwx"})
            assert r.status_code == 400 and "X-Stackspace-Mode" in r.json()["detail"]
            # Another user's workspace does not exist for them.
            assert svc.call("GET", files_url(name, "tree"), svc.bob).status_code == 404

            # stackspace cp, both ways, a file and a directory.
            local = tmp_path / "local"
            (local / "pkg" / "sub").mkdir(parents=True)
            (local / "pkg" / "sub" / "deep.bin").write_bytes(data[:100000])
            (local / "pkg" / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
            os.chmod(local / "pkg" / "run.sh", 0o755)  # noqa: S103 - an executable script
            r = cp(svc, str(local / "pkg"), f"{name}:uploaded")
            assert r.returncode == 0, r.stderr
            r = cp(svc, str(local / "pkg" / "run.sh"), f"{name}:uploaded/")
            assert r.returncode == 0, r.stderr
            got = in_workspace(svc, name, "cat uploaded/run.sh; stat -c %a uploaded/run.sh; "
                                          "wc -c < uploaded/sub/deep.bin")
            assert got.split() == ["#!/bin/sh", "echo", "hi", "755", "100000"]
            back = tmp_path / "back"
            back.mkdir()
            r = cp(svc, f"{name}:uploaded", str(back))
            assert r.returncode == 0, r.stderr
            assert (back / "uploaded" / "sub" / "deep.bin").read_bytes() == data[:100000]
            r = cp(svc, f"{name}:data/bin/blob.bin", str(back / "blob"))
            assert r.returncode == 0, r.stderr
            assert (back / "blob").read_bytes() == b"v2"
            assert oct((back / "blob").stat().st_mode & 0o777) == "0o640"
            r = cp(svc, f"{name}:abs/passwd", str(back))
            assert r.returncode == 1 and b"absolute symlink" in r.stderr, r.stderr
            r = cp(svc, str(back), str(tmp_path / "elsewhere"))
            assert r.returncode != 0 and b"WS:PATH" in r.stderr

            # Clients reach the proxy at a public address the service itself may
            # not reach (an ingress): the file API goes to its internal address.
            terminals = svc.terminals
            terminals.internal_url, terminals.proxy_url = terminals.proxy_url, UNREACHABLE
            r = svc.call("POST", f"/api/v1/workspaces/{name}/terminals", svc.alice,
                         json={"command": ["true"]})
            assert r.status_code == 201 and r.json()["url"] == UNREACHABLE, r.text
            r = svc.call("PUT", files_url(name, "data/inside.txt"), svc.alice, data=b"in")
            assert r.status_code == 201, r.text
            r = svc.call("GET", files_url(name, "data/inside.txt"), svc.alice)
            assert (r.status_code, r.content) == (200, b"in")
            terminals.proxy_url = terminals.internal_url

            op = operate(svc, "POST", f"/{name}/stop")
            assert op["status"] == "succeeded", op
            r = svc.call("GET", files_url(name, "tree"), svc.alice)
            assert r.status_code == 409 and "stopped" in r.json()["detail"], r.text
        finally:
            assert operate(svc, "DELETE", f"/{name}?queue=true")["status"] == "succeeded"
