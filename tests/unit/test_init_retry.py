"""Which init steps a run makes again (stacks/init_retry.py)."""

from __future__ import annotations

from stacks.init_retry import failed_inits

DOCKER = "urn:pulumi:ws::stackspace::stackspace:docker:Workspace$docker:index/container:Container"
JOB = "urn:pulumi:ws::stackspace::stackspace:kubernetes:Workspace$kubernetes:batch/v1:Job"


def res(urn: str, name: str, **fields) -> dict:
    kind = urn.split("$")[-1]
    return {"urn": f"{urn}::{name}", "type": kind, **fields}


def test_a_docker_init_that_exited_non_zero_is_made_again():
    state = {"resources": [res(DOCKER, "init", outputs={"exitCode": 12}),
                           res(DOCKER, "workspace", outputs={"exitCode": 0})]}
    assert failed_inits(state) == [f"{DOCKER}::init"]


def test_a_successful_or_still_unknown_init_is_left_alone():
    for outputs in ({"exitCode": 0}, {}, {"exitCode": None}):
        assert failed_inits({"resources": [res(DOCKER, "init", outputs=outputs)]}) == []
    assert failed_inits({"resources": [res(JOB, "init", outputs={
        "status": {"succeeded": 1}})]}) == []
    assert failed_inits({}) == [] and failed_inits({"resources": None}) == []


def test_a_failed_kubernetes_job_is_made_again():
    by_await = res(JOB, "init", initErrors=["job failed: BackoffLimitExceeded"], outputs={})
    by_status = res(JOB, "init", outputs={"status": {"failed": 1}})
    assert failed_inits({"resources": [by_await]}) == [f"{JOB}::init"]
    assert failed_inits({"resources": [by_status]}) == [f"{JOB}::init"]


def test_only_init_steps_count():
    other = res(DOCKER, "workspace", outputs={"exitCode": 137})
    renamed = res(DOCKER, "init-old", outputs={"exitCode": 1})
    assert failed_inits({"resources": [other, renamed]}) == []
