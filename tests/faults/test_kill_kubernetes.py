"""kill -9 of the whole service during create and delete on the Kubernetes
test cluster: the workspace settles truthfully, a retried start converges, and
after delete no Pod, Job, Secret, PVC or NetworkPolicy labelled for it is left."""

from __future__ import annotations

import pytest

from tests.faults.conftest import unique
from tests.faults.harness import KillPoint, LiveService
from tests.faults.scenarios import create_trial, has, op_trial, workload_gone_storage_kept

pytestmark = pytest.mark.e2e  # kube_cluster tests get a cold-start timeout
# Small, and with a secret so the init step has a Secret to leave behind.
SPEC = {"resources": {"cpu": "250m", "memory": "128Mi", "storage": "32Mi"},
        "files": [{"path": "token", "content": "s3cr3t", "secret": True}]}


def test_kill_during_create_at_the_init_job_recovers(kube_faults: LiveService, kube_view):
    create_trial(kube_faults, kube_view, unique("fault-kc"),
                 KillPoint("init step", engine=has("init")), spec=SPEC)


def test_kill_during_create_at_the_pod_and_during_delete_recovers(kube_faults: LiveService,
                                                                   kube_view):
    name = unique("fault-kd")
    stack = create_trial(kube_faults, kube_view, name,
                         KillPoint("workload step", engine=has("workspace")),
                         spec=SPEC, then_delete=False)
    op_trial(kube_faults, kube_view, name, stack, "delete",
             KillPoint("workload gone, storage kept", engine=workload_gone_storage_kept))
