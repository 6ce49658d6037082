"""The kill matrix: kill -9 of the whole `stackspace run` process tree
(service, exec proxy, workers, Pulumi CLI, language host, providers) at each
kill point of create, stop, start, update and delete on the local Docker
Engine, `--trials` times each; after each kill the service is started again on
the same data dir and the trial counts as recovered only if the workspace
settles in a state that matches Docker, the user's retry converges, no storage
is lost, and delete leaves 0 labelled objects and no stack.

Prints: operation x kill point -> trials, recovered, orphans (objects carrying
the workspace's label after its delete).

Run: scripts/setup && source ~/.cache/stackspace/toolchain.env && \
     DOCKER_HOST=$(scripts/docker-engine up | tail -1) .venv/bin/python bench/kill_matrix.py
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path

import docker

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.config import PULUMI_VERSION, cache_dir  # noqa: E402
from tests.faults.engine import DockerView  # noqa: E402
from tests.faults.harness import RESULTS, LiveService, matrix_table  # noqa: E402
from tests.faults.scenarios import CHAINS, CREATE_POINTS, chain_trials, create_trial  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1, help="repetitions of each scenario")
    parser.add_argument("--only", choices=["create", "chains"], help="run one half only")
    args = parser.parse_args()
    host = os.environ.get("DOCKER_HOST")
    if not host:
        parser.error("set DOCKER_HOST (scripts/docker-engine up)")
    pulumi_bin = Path(os.environ.get("STACKSPACE_PULUMI_BIN",
                                     cache_dir() / "pulumi" / PULUMI_VERSION / "bin"))
    pulumi_home = Path(os.environ.get("PULUMI_HOME", cache_dir() / "pulumi-home"))
    client = docker.DockerClient(base_url=host)
    engine = DockerView(client)
    runtimes = [{"name": "local", "type": "docker", "host": host, "network_mode": "none"}]
    with tempfile.TemporaryDirectory(prefix="kill-matrix-") as tmp:
        svc = LiveService(Path(tmp), runtimes, pulumi_bin=pulumi_bin, pulumi_home=pulumi_home)
        svc.start()
        try:
            for _ in range(args.trials):
                if args.only != "chains":
                    for point in CREATE_POINTS:
                        attempt(lambda p=point: create_trial(
                            svc, engine, f"bench-kc-{secrets.token_hex(3)}", p))
                if args.only != "create":
                    for chain, steps in CHAINS.items():
                        attempt(lambda c=chain, s=steps: chain_trials(
                            svc, engine, f"bench-{c}-{secrets.token_hex(3)}", s))
        finally:
            svc.stop()
    print(matrix_table(RESULTS))
    ok = all(t.recovered and not t.orphans for t in RESULTS)
    return 0 if ok else 1


def attempt(scenario) -> None:  # noqa: ANN001 - a no-argument callable
    """Run one scenario; a failed trial is recorded in the matrix, not fatal."""
    try:
        scenario()
    except AssertionError as e:
        print(f"trial failed: {str(e).splitlines()[0][:300]}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
