"""Why a workspace's init failed on Kubernetes, in init's own words.

On Docker the program reads the init container's exit code and logs and fails
with them (components/docker.py). On Kubernetes the engine only says that the
init Job "failed to initialize", naming its pod and the container's exit
code; the cause (server unreachable, an HTTP status, authentication refused,
repository or ref not found) is in that pod's log. After a run that failed so,
the worker reads the log and reports it as Docker does. The log holds only
init's own secret-free lines (components/init_script.py); an init pod that is
gone (deleted, killed before it ran) leaves the engine's error as it was.
"""

from __future__ import annotations

import logging
import re

from components.init_script import init_failure_message
from components.runtime import KubernetesRuntime, Runtime

log = logging.getLogger("stackspace.init_cause")

# How the engine's error names the init pod that failed (pulumi-kubernetes'
# await of the Job): its namespace, name and the container's exit code.
FAILED_POD = re.compile(r'\[Pod ([a-z0-9.-]+)/([a-z0-9.-]+)\]: Container "init" '
                        r'completed with exit code (\d+)')
LOG_LINES = 20  # init prints its cause last


def failed_init_pod(error: str) -> tuple[str, str, int] | None:
    """(namespace, pod, exit code) of the init pod a run's error names, if any."""
    found = FAILED_POD.findall(error)
    if not found:
        return None
    namespace, pod, code = found[-1]
    return namespace, pod, int(code)


def kubernetes_init_failure(rt: Runtime, error: str) -> str | None:
    """The failure message of the init pod the engine's `error` names, from its
    log; None on a Docker runtime, when the error names no failed init pod, or
    the log cannot be read (gone, unreachable cluster): the engine's error
    then stands."""
    found = failed_init_pod(error)
    if not isinstance(rt, KubernetesRuntime) or found is None or found[0] != rt.namespace:
        return None
    namespace, pod, code = found
    from kubernetes import client as k8s

    from components.clients import kube_api_client

    try:
        logs = k8s.CoreV1Api(kube_api_client(rt)).read_namespaced_pod_log(
            pod, namespace, container="init", tail_lines=LOG_LINES)
    except Exception as e:  # noqa: BLE001 - the engine's error stands
        log.warning("cannot read the init pod's log", extra={
            "runtime": rt.name, "error_type": type(e).__name__})
        return None
    return init_failure_message(code, logs)
