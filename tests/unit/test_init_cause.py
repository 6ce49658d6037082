"""Why an init failed on Kubernetes (service/init_cause.py) and the message
both backends give (components/init_script.py)."""

from __future__ import annotations

import pytest

from components.init_script import init_failure_message
from components.runtime import DockerRuntime, KubernetesRuntime
from service.init_cause import failed_init_pod, kubernetes_init_failure

# The engine's error for a failed init Job, as pulumi-kubernetes writes it.
ENGINE_ERROR = (
    'error: 4 errors occurred:\n\t* resource "urn:pulumi:ws::stackspace::'
    'stackspace:kubernetes:Workspace$kubernetes:batch/v1:Job::init" was successfully '
    "created, but the Kubernetes API server reported that it failed to fully initialize "
    "or become live: Resource 'k-1-init-639b76e7' was created but failed to initialize\n"
    "\t* [Pod ws/k-1-init-639b76e7-tlvkd]: containers with unready status: [init]\n"
    '\t* [Pod ws/k-1-init-639b76e7-tlvkd]: Container "init" completed with exit code 12\n'
    "\t* [BackoffLimitExceeded] Job has reached the specified backoff limit")
KUBE = KubernetesRuntime(name="cluster", kubeconfig="/nonexistent/kubeconfig", namespace="ws")


def test_the_engine_error_names_the_failed_init_pod_and_its_exit_code():
    assert failed_init_pod(ENGINE_ERROR) == ("ws", "k-1-init-639b76e7-tlvkd", 12)


@pytest.mark.parametrize("error", [
    "",
    # An init pod killed before it ran: the engine names no exit code.
    ENGINE_ERROR.replace('Container "init" completed with exit code 12', "x"),
    # The workspace container is not init.
    ENGINE_ERROR.replace('Container "init"', 'Container "workspace"'),
])
def test_an_error_without_a_failed_init_pod_names_none(error):
    assert failed_init_pod(error) is None


def test_only_a_kubernetes_runtime_in_the_pods_namespace_is_asked():
    docker = DockerRuntime(name="local", host="unix:///nonexistent.sock")
    assert kubernetes_init_failure(docker, ENGINE_ERROR) is None
    other = KubernetesRuntime(name="cluster", kubeconfig="/nonexistent", namespace="other")
    assert kubernetes_init_failure(other, ENGINE_ERROR) is None
    # The cluster cannot be asked (no kubeconfig): the engine's error stands.
    assert kubernetes_init_failure(KUBE, ENGINE_ERROR) is None


def test_the_failure_message_ends_with_inits_last_lines():
    logs = ("stackspace-init: cloning repository (ref main)\nstackspace-init: wrote a\n"
            "stackspace-init: wrote b\nstackspace-init: clone failed: server unreachable\n")
    assert init_failure_message(12, logs) == (
        "workspace init failed with exit code 12: stackspace-init: wrote a | "
        "stackspace-init: wrote b | stackspace-init: clone failed: server unreachable")
    assert init_failure_message(137, "") == "workspace init failed with exit code 137"
    assert init_failure_message(1, None) == "workspace init failed with exit code 1"
