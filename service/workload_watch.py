"""A Kubernetes workspace whose pod cannot start fails its run at once, saying
why, instead of after the engine's await times out (5 to 10 minutes).

pulumi-kubernetes awaits the init Job and a new Deployment until they finish
or their timeout runs out; a pod that can never start (an image that cannot be
pulled, a bad image name, a command that keeps exiting) only shows up as a
warning meanwhile, and the run then fails with a generic timeout. Docker
fails such a run at once (the pull, or the container's start, fails). While a
run that makes the workspace run is in flight, the worker watches the pods
the run creates; the first that reports one of the states below ends the run
(the engine is interrupted as on a cancel: it records what it made), and the
run's error is the kubelet's own reason and message, which name the image and
the registry's answer but hold no credential.

Only pods created during the run count: a pod left from an earlier failed run
(a crash-looping one that this run's update replaces) says nothing about it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from components.base import label_selector, workspace_labels
from components.runtime import KubernetesRuntime

log = logging.getLogger("stackspace.workload_watch")

# A container waiting for one of these reasons will not start by itself.
# ErrImagePull alone is not: the kubelet pulls again once (ImagePullBackOff
# follows at once when that fails too), and its message is kept for then.
STUCK_REASONS = ("ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                 "CreateContainerConfigError", "CreateContainerError", "CrashLoopBackOff")
PULL_ERROR = "ErrImagePull"
WATCH_SECONDS = 30  # one watch request; the thread's stop is seen at least this often
REQUEST_SECONDS = 10  # an unreachable cluster must not hold the run up


def stuck_container(pod: dict[str, Any], pull_errors: dict[str, str]) -> str | None:
    """Why the pod (a Pod as the API serves it, in its JSON form) will not
    start, or None. `pull_errors`: the last ErrImagePull message per
    container name, kept across the pod's updates (the back-off message
    itself only says "Back-off pulling image")."""
    status = pod.get("status") or {}
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses")
                                                            or []):
        name = cs.get("name", "?")
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason, message = waiting.get("reason"), (waiting.get("message") or "").strip()
        if reason == PULL_ERROR and message:
            pull_errors[name] = message
        if reason not in STUCK_REASONS:
            continue
        if reason == "ImagePullBackOff":
            message = pull_errors.get(name) or message
        if reason == "CrashLoopBackOff":
            last = (cs.get("lastState") or {}).get("terminated") or {}
            if last.get("exitCode") is not None:
                message = f"its command exited with code {last['exitCode']}"
        return f"container {name!r} of pod {pod['metadata']['name']} cannot start: " \
            f"{reason}" + (f": {message[:600]}" if message else "")
    return None


class WorkloadWatch:
    """Watches the workspace's pods that appear after `start()`; calls
    `on_stuck(reason)` once, for the first that cannot start."""

    def __init__(self, rt: KubernetesRuntime, owner: str, name: str, installation: str,
                 on_stuck: Callable[[str], None]):
        self.rt = rt
        self.selector = label_selector(workspace_labels(owner, name, installation))
        self.on_stuck = on_stuck
        self.reason: str | None = None
        self._stop = threading.Event()
        # Held to fire and to stop: once stop() returns, on_stuck never runs
        # (the worker's next run must not be interrupted by this one's watch).
        self._firing = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """List the pods there are now (they are not this run's), then watch."""
        from kubernetes import client as k8s

        from components.clients import kube_api_client

        try:
            core = k8s.CoreV1Api(kube_api_client(self.rt))
            listed = core.list_namespaced_pod(self.rt.namespace, label_selector=self.selector,
                                              _request_timeout=REQUEST_SECONDS)
        except Exception as e:  # noqa: BLE001 - without a watch the engine's await decides
            log.warning("cannot watch the workspace's pods", extra={
                "runtime": self.rt.name, "error_type": type(e).__name__})
            return
        before = {p.metadata.uid for p in listed.items}
        self._thread = threading.Thread(
            target=self._watch, args=(core, before, listed.metadata.resource_version),
            daemon=True, name="workload-watch")
        self._thread.start()

    def stop(self) -> None:
        with self._firing:
            self._stop.set()

    def _watch(self, core: Any, before: set[str], version: str | None) -> None:
        from kubernetes import watch

        pull_errors: dict[str, dict[str, str]] = {}
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(core.list_namespaced_pod, self.rt.namespace,
                                      label_selector=self.selector, resource_version=version,
                                      timeout_seconds=WATCH_SECONDS,
                                      _request_timeout=WATCH_SECONDS + REQUEST_SECONDS):
                    if self._stop.is_set():
                        break
                    pod = event["raw_object"]
                    meta = pod.get("metadata") or {}
                    version = meta.get("resourceVersion", version)
                    if (event["type"] == "DELETED" or meta.get("uid") in before
                            or meta.get("deletionTimestamp")):
                        continue
                    reason = stuck_container(pod, pull_errors.setdefault(meta["uid"], {}))
                    if reason:
                        with self._firing:
                            if self._stop.is_set():
                                return
                            self.reason = reason
                            log.warning("workspace pod cannot start", extra={
                                "runtime": self.rt.name, "pod": meta.get("name")})
                            self.on_stuck(reason)
                        return
            except Exception as e:  # noqa: BLE001 - watch again; a 410 restarts from now
                log.info("pod watch ended", extra={"error_type": type(e).__name__})
                if "410" in str(e) or "Expired" in str(e):
                    version = None
                self._stop.wait(1.0)
            finally:
                w.stop()
