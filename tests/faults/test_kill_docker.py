"""kill -9 of the whole service (service, proxy, workers, Pulumi CLI, language
host, providers) at chosen points of create, stop, start, update and delete on
Docker; after a restart on the same data dir each workspace settles truthfully,
retries converge, storage survives, and delete leaves 0 labelled objects.
The kill matrix is printed at the end of the pytest run."""

from __future__ import annotations

import pytest

from tests.faults.conftest import unique
from tests.faults.harness import LiveService
from tests.faults.scenarios import CHAINS, CREATE_POINTS, chain_trials, create_trial

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


@pytest.mark.parametrize("point", CREATE_POINTS, ids=lambda p: p.label.replace(" ", "-"))
def test_kill_during_create_recovers(point, docker_faults: LiveService, docker_view):
    create_trial(docker_faults, docker_view, unique("fault-create"), point)


def test_kill_during_stop_start_update_delete_recovers(docker_faults: LiveService, docker_view):
    """One workspace through stop, start, update and delete, each killed once
    at a step the runtime shows; the user's file on the storage survives every
    crash. (bench/kill_matrix.py also runs the fixed-delay chain.)"""
    chain_trials(docker_faults, docker_view, unique("fault-chain"), CHAINS["at-engine-steps"])
