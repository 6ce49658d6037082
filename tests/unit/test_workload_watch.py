"""Which pod states end a Kubernetes run at once (service/workload_watch.py)."""

from __future__ import annotations

import pytest

from service.workload_watch import STUCK_REASONS, stuck_container


def pod(*statuses, init=()) -> dict:
    return {"metadata": {"name": "ws-1"},
            "status": {"initContainerStatuses": list(init), "containerStatuses": list(statuses)}}


def waiting(name: str, reason: str, message: str = "", **extra) -> dict:
    return {"name": name, "state": {"waiting": {"reason": reason, "message": message}}, **extra}


@pytest.mark.parametrize("state", [
    {"running": {"startedAt": "now"}},
    {"waiting": {"reason": "ContainerCreating"}},
    {"waiting": {"reason": "PodInitializing"}},
    {"terminated": {"exitCode": 0}},
    {},
])
def test_a_pod_on_its_way_is_left_alone(state):
    assert stuck_container(pod({"name": "workspace", "state": state}), {}) is None
    assert stuck_container({"metadata": {"name": "p"}}, {}) is None  # no status yet


@pytest.mark.parametrize("reason", STUCK_REASONS)
def test_every_stuck_reason_ends_the_run_naming_container_pod_and_reason(reason):
    said = stuck_container(pod(waiting("workspace", reason, "kubelet says why")), {})
    assert said is not None
    assert said.startswith(f"container 'workspace' of pod ws-1 cannot start: {reason}")


def test_a_first_pull_error_waits_and_its_message_is_said_at_the_back_off():
    errors: dict[str, str] = {}
    first = pod(waiting("init", "ErrImagePull", 'failed to pull "nope:1": not found'))
    assert stuck_container(first, errors) is None
    said = stuck_container(pod(waiting("init", "ImagePullBackOff",
                                       'Back-off pulling image "nope:1"')), errors)
    assert said == ("container 'init' of pod ws-1 cannot start: ImagePullBackOff: "
                    'failed to pull "nope:1": not found')
    # Without an earlier pull error the back-off's own message stands.
    alone = stuck_container(pod(waiting("init", "ImagePullBackOff", "Back-off")), {})
    assert alone.endswith("ImagePullBackOff: Back-off")


def test_a_crash_loop_says_the_commands_exit_code():
    looping = waiting("workspace", "CrashLoopBackOff", "back-off 10s restarting",
                      lastState={"terminated": {"exitCode": 127}})
    assert stuck_container(pod(looping), {}).endswith(
        "CrashLoopBackOff: its command exited with code 127")


def test_init_containers_count_and_a_long_message_is_cut():
    said = stuck_container(pod(init=[waiting("setup", "InvalidImageName", "x" * 5000)]), {})
    assert said.startswith("container 'setup' of pod ws-1 cannot start: InvalidImageName: x")
    assert len(said) < 700
