"""Steps of the file API tests shared by every runtime: a binary round trip with
mode and mtime, a listing, a tar round trip, and escapes that must be refused
with nothing written."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import tarfile
from typing import Any
from urllib.parse import urlsplit

from tests.e2e.remote_helpers import stackspace_exec

MTIME = 1_600_000_000


def files_url(name: str, path: str = "") -> str:
    return f"/api/v1/workspaces/{name}/files/{path}"


def in_workspace(svc: Any, name: str, script: str) -> str:
    r = stackspace_exec(svc, name, "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


def raw_request(svc: Any, method: str, path: str, token: str,
                body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """Send the path exactly as written (requests would fold '..' segments away)."""
    url = urlsplit(svc.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    conn.request(method, path, body=body, headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data) if data else {}


def round_trip(svc: Any, name: str, size: int) -> bytes:
    """PUT a binary file with mode and mtime, GET it back: same bytes and metadata."""
    data = os.urandom(size) + bytes(range(256))
    r = svc.call("PUT", files_url(name, "data/bin/blob.bin"), svc.alice, data=data,
                 headers={"X-Stackspace-Mode": "0640", "X-Stackspace-Mtime": str(MTIME)})
    assert r.status_code == 201, r.text
    assert r.json() == {"path": "/data/bin/blob.bin", "type": "file", "size": len(data),
                        "mode": "0640", "mtime": MTIME}
    r = svc.call("GET", files_url(name, "data/bin/blob.bin"), svc.alice)
    assert r.status_code == 200, r.text
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest()
    assert r.headers["X-Stackspace-Mode"] == "0640"
    assert r.headers["X-Stackspace-Mtime"] == str(MTIME)
    assert r.headers["Last-Modified"] == "Sun, 13 Sep 2020 12:26:40 GMT"
    listing = svc.call("GET", files_url(name, "data/bin"), svc.alice).json()
    assert listing["type"] == "dir" and listing["entries"] == [
        {"name": "blob.bin", "type": "file", "size": len(data), "mode": "0640",
         "mtime": MTIME}]
    return data


def make_tar(members: list[tuple[str, str, bytes | str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for member, kind, payload in members:
            info = tarfile.TarInfo(member)
            info.mtime = MTIME
            if kind == "file":
                assert isinstance(payload, bytes)
                info.size, info.mode = len(payload), 0o644
                tar.addfile(info, io.BytesIO(payload))
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
                tar.addfile(info)
    return buf.getvalue()


def tar_round_trip(svc: Any, name: str) -> None:
    body = make_tar([("src", "dir", b""), ("src/main.c", "file", b"int main;\n"),
                     ("src/lib", "dir", b""), ("src/lib/a.bin", "file", os.urandom(70000)),
                     ("src/link", "symlink", "main.c")])
    r = svc.call("PUT", files_url(name, "tree"), svc.alice, data=body,
                 headers={"Content-Type": "application/x-tar"})
    assert r.status_code == 201, r.text
    r = svc.call("GET", files_url(name, "tree/src"), svc.alice,
                 headers={"Accept": "application/x-tar"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        got = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        assert tar.extractfile(got["main.c"]).read() == b"int main;\n"  # type: ignore[union-attr]
        assert got["lib/a.bin"].size == 70000
        assert got["link"].issym() and got["link"].linkname == "main.c"


def escapes_refused(svc: Any, name: str) -> None:
    """Every way out of the root: refused with a problem naming the path, nothing written
    (the targets are in /tmp, which the workspace user could write to)."""
    in_workspace(svc, name, "mkdir -p deep/er && ln -s /tmp abs && ln -s ../tmp rel "
                            "&& ln -s ../../../tmp deep/er/up && ln -s /tmp/f1 final-abs "
                            "&& ln -s ../tmp/f2 final-rel && rm -f /tmp/f* /tmp/x*")
    for path, word in (("abs/x1", "absolute symlink"), ("rel/x2", "outside the workspace"),
                       ("deep/er/up/x3", "outside the workspace"),
                       ("final-abs", "absolute symlink"), ("final-rel", "outside the workspace")):
        shown = path.split("/x")[0]
        for method in ("PUT", "GET"):
            r = svc.call(method, files_url(name, path), svc.alice, data=b"escaped")
            assert r.status_code == 403, (method, path, r.text)
            problem = r.json()
            assert r.headers["Content-Type"] == "application/problem+json"
            assert word in problem["detail"] and f"/{shown}" in problem["detail"], problem
    status, problem = raw_request(svc, "PUT", files_url(name, "deep/../../tmp/x4"),
                                  svc.alice, b"escaped")
    assert status == 400 and "'..'" in problem["detail"], problem
    status, _ = raw_request(svc, "GET", files_url(name, "%2E%2E/etc/passwd"), svc.alice)
    assert status == 400
    for members, word in (
            ([("../x5", "file", b"e")], "'..'"),
            ([("/tmp/x6", "file", b"e")], "absolute path"),
            ([("l", "symlink", "../../tmp"), ("l/x7", "file", b"e")], "leaves the destination"),
            ([("l", "symlink", "/tmp"), ("l/x8", "file", b"e")], "absolute path"),
            ([("ok/", "dir", b""), ("ok/a", "file", b"ok"), ("rel/x9", "file", b"e")],
             "passes through a symlink")):
        r = svc.call("PUT", files_url(name), svc.alice, data=make_tar(members),
                     headers={"Content-Type": "application/x-tar"})
        assert r.status_code == 403 and word in r.json()["detail"], (members, r.text)
    tmp = in_workspace(svc, name, "ls -a /tmp").split()
    assert not [n for n in tmp if n[:1] in ("x", "f")], tmp
    root = in_workspace(svc, name, "ls -a").split()
    assert not [n for n in root if n in ("ok", "l") or n.startswith(".stackspace-")], root
