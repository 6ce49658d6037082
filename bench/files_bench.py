"""File API throughput: write and read a file through the service
(``PUT``/``GET /workspaces/{name}/files/{path}``: HTTP -> service -> exec proxy ->
Docker exec) against ``docker cp`` to the same container on the same engine (the
Engine API's archive endpoints, PUT/GET /containers/{id}/archive, which is what
``docker cp`` calls), in the same run.

    source ~/.cache/stackspace/toolchain.env
    DOCKER_HOST=unix:///root/.cache/stackspace/dockerd/docker.sock \\
        .venv/bin/python bench/files_bench.py [--mib 100] [--rounds 3]

Starts a throwaway service, exec proxy and workspace (default image, local engine);
prints a table of MiB/s (best of the rounds) and the API's share of the floor.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import secrets
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402
import requests  # noqa: E402

from service.exec_client import run_exec  # noqa: E402
from stacks.settings import PulumiSettings  # noqa: E402
from tests.api.conftest import start_service  # noqa: E402
from tests.e2e.remote_helpers import operate  # noqa: E402

MIB = 1 << 20
CHUNK = 1 << 20


class Sink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return len(b)


def best(rounds: int, fn: Callable[[], None]) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    host = os.environ["DOCKER_HOST"]
    tmp = Path(tempfile.mkdtemp(prefix="files-bench-"))
    src = tmp / "blob.bin"
    with src.open("wb") as f:
        for _ in range(args.mib):
            f.write(os.urandom(MIB))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    archive = tmp / "blob.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname="cp.bin")
    (tmp / "state").mkdir()
    settings = PulumiSettings(
        backend_url=f"file://{tmp / 'state'}", passphrase=secrets.token_hex(8),
        pulumi_home=Path(os.environ.get("PULUMI_HOME",
                                        Path.home() / ".cache/stackspace/pulumi-home")),
        bin_dir=Path(os.environ["STACKSPACE_PULUMI_BIN"]), python=sys.executable)
    gen = start_service(tmp / "svc", host, settings)
    svc = next(gen)
    name = f"bench-{secrets.token_hex(3)}"
    client = docker.DockerClient(base_url=host)
    try:
        op = operate(svc, "POST", "", json={"name": name})
        assert op["status"] == "succeeded", op
        container = svc.call("GET", f"/api/v1/workspaces/{name}", svc.alice
                             ).json()["outputs"]["container"]
        url = f"{svc.url}/api/v1/workspaces/{name}/files/api.bin"
        auth = {"Authorization": f"Bearer {svc.alice}"}

        def api_write() -> None:
            with src.open("rb") as f:
                r = requests.put(url, data=f, headers=auth, timeout=600)
            assert r.status_code == 201, r.text

        def api_read() -> None:
            h = hashlib.sha256()
            with requests.get(url, headers=auth, stream=True, timeout=600) as r:
                assert r.status_code == 200, r.text
                for chunk in r.iter_content(CHUNK):
                    h.update(chunk)
            assert h.hexdigest() == digest

        api = client.api

        def cp_write() -> None:
            with archive.open("rb") as f:
                assert api.put_archive(container, "/workspace", f)

        def cp_read() -> None:
            n = 0
            stream, _ = api.get_archive(container, "/workspace/cp.bin", chunk_size=CHUNK)
            for chunk in stream:
                n += len(chunk)
            assert n >= args.mib * MIB

        def exec_write() -> None:  # the exec proxy alone: where the API's time goes
            with src.open("rb") as f:
                assert proxy_exec(["sh", "-c", "cat > px.bin"], f) == 0

        def exec_read() -> None:
            assert proxy_exec(["cat", "px.bin"], io.BytesIO()) == 0

        def proxy_exec(command: list[str], stdin: Any) -> int:
            grant = svc.call("POST", f"/api/v1/workspaces/{name}/terminals", svc.alice,
                             json={"command": command, "tty": False}).json()
            return run_exec(grant["url"], grant["ticket"], stdin, Sink(), Sink())

        rows = []
        for label, fns in (("write", (api_write, exec_write, cp_write)),
                           ("read", (api_read, exec_read, cp_read))):
            rows.append((label, *(args.mib / best(args.rounds, fn) for fn in fns)))
        print(f"\nfile transfer, {args.mib} MiB, best of {args.rounds}, local engine "
              f"({host})\n")
        print(f"{'':7}{'file API':>14}{'exec proxy':>14}{'docker cp':>14}{'API / cp':>10}")
        for label, a, e, c in rows:
            print(f"{label:7}{a:>8.1f} MiB/s{e:>8.1f} MiB/s{c:>8.1f} MiB/s{a / c:>9.0%}")
    finally:
        operate(svc, "DELETE", f"/{name}?queue=true")
        next(gen, None)
        client.close()


if __name__ == "__main__":
    main()
