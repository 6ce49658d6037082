"""Fleet preview and rollout on N Docker workspaces (SPEC §10), against the
floor of N single `stackspace stack OWNER/NAME -- preview` runs in sequence,
in the same run, on a real `stackspace serve`:

    .venv/bin/python bench/fleet_bench.py --count 50

Prints a table: wall time and CPU seconds (this process's children: the CLIs,
their engines, language hosts and providers) of each, and the wall time of a
rollout of a label change (the service restarted from a changed checkout) in
batches of --batch."""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.faults.harness import LiveService  # noqa: E402

LABEL_OLD = 'labels=labels("workspace") + ['
LABEL_NEW = 'labels=labels("workspace") + [{"label": "example.com/team", "value": "dev"}, '


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv_list: list[list[str]], env: dict[str, str]) -> tuple[float, float, int]:
    """Run commands in sequence: (wall s, children CPU s, failures)."""
    cpu, wall, failed = children_cpu(), time.monotonic(), 0
    for argv in argv_list:
        failed += subprocess.run(argv, env=env, capture_output=True, check=False).returncode != 0
    return time.monotonic() - wall, children_cpu() - cpu, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--batch", default="10")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    cache = Path(os.environ.get("STACKSPACE_CACHE", Path.home() / ".cache" / "stackspace"))
    host = f"unix://{cache / 'dockerd' / 'docker.sock'}"
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    svc = LiveService(tmp, [{"name": "local", "type": "docker", "host": host,
                             "network_mode": "none"}], quota=args.count + 1,
                      settings={"pool_size": 2})
    svc.start("serve")
    names = [f"fb{i}-{secrets.token_hex(2)}" for i in range(args.count)]
    rows: list[tuple[str, float, float | None, int]] = []
    try:
        t = time.monotonic()
        ops = [svc.call("POST", "/workspaces", json={"name": n}).json()["id"] for n in names]
        failed = sum(svc.wait_op(op, timeout=3600)["status"] != "succeeded" for op in ops)
        rows.append((f"create {args.count} (pool 2)", time.monotonic() - t, None, failed))
        cli = [sys.executable, "-m", "service.cli"]
        data = ["--data-dir", str(svc.data_dir)]
        wall, cpu, failed = timed([[*cli, "fleet", "preview", "--program", str(REPO), *data,
                                    "--concurrency", str(args.concurrency), "--json"]], svc.env)
        rows.append((f"fleet preview, concurrency {args.concurrency}", wall, cpu, failed))
        wall, cpu, failed = timed([[*cli, "stack", f"admin/{n}", *data, "--", "preview",
                                    "--non-interactive"] for n in names], svc.env)
        rows.append((f"{args.count} x `stackspace stack -- preview` in sequence", wall, cpu,
                     failed))
        checkout = tmp / "checkout"
        shutil.copytree(REPO, checkout, symlinks=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "tests", "bench", "*.egg-info"))
        (checkout / ".venv").symlink_to(REPO / ".venv")
        docker_py = checkout / "components" / "docker.py"
        docker_py.write_text(docker_py.read_text().replace(LABEL_OLD, LABEL_NEW))
        svc.stop()
        svc.cwd = checkout
        svc.start("serve")
        t = time.monotonic()
        rollout = svc.call("POST", "/rollouts", json={"batch": int(args.batch)}).json()
        while rollout["status"] == "running":
            time.sleep(1)
            rollout = svc.call("GET", f"/rollouts/{rollout['id']}").json()
        rows.append((f"rollout of a label change, batches of {args.batch}",
                     time.monotonic() - t, None,
                     args.count - rollout["counts"].get("succeeded", 0)))
    finally:
        svc.stop()
        svc.cwd = REPO
        svc.start("serve")
        ops = [svc.call("DELETE", f"/workspaces/{n}?queue=true").json().get("id")
               for n in names]
        for op in ops:
            if op:
                svc.wait_op(op, timeout=3600)
        svc.stop()
    print(f"\n{args.count} Docker workspaces, {os.cpu_count()} cores\n")
    print("| what | wall s | CPU s | failed |")
    print("|---|---|---|---|")
    for what, wall, cpu, failed in rows:
        print(f"| {what} | {wall:.1f} | {'' if cpu is None else f'{cpu:.1f}'} | {failed} |")
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
