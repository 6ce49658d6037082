"""What the in-cluster service and proxy may do, in the workspace namespace only.

The service runs the workspace programs (components/kubernetes.py: a PVC, an
init Job, Secrets, a NetworkPolicy, a Deployment; pulumi-kubernetes reads the
pods and events of what it awaits) and observes or removes a workspace's
objects by label (service/runtime_objects.py). The proxy finds a workspace's pod
and execs into it (proxy/backends.py). Nothing cluster-wide, nothing else.
"""

from __future__ import annotations

MANAGE = ["get", "list", "watch", "create", "update", "patch", "delete"]
READ = ["get", "list", "watch"]

SERVICE_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": [""], "resources": ["persistentvolumeclaims", "secrets"], "verbs": MANAGE},
    # Pods are the Deployment's and the Job's: read, and removed at delete.
    {"apiGroups": [""], "resources": ["pods"], "verbs": [*READ, "delete"]},
    {"apiGroups": [""], "resources": ["pods/log", "events"], "verbs": READ},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": MANAGE},
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": READ},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": MANAGE},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": MANAGE},
]

PROXY_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
    # A WebSocket exec is a GET upgrade; the API server also checks create.
    {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get", "create"]},
    # stackspace port-forward (proxy.forward): the API server's tunnel into the pod.
    {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get", "create"]},
]
