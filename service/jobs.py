"""What the runner and a worker process (service.worker) exchange: a Job in,
an Outcome back, and the signal that cancels a job. Kept apart from the worker
so that the service process never imports the Pulumi SDK.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

from stacks.config import StackConfig
from stacks.settings import PulumiSettings

# The runner asks a worker to stop its job with this signal: the job stops at
# its next step, and the Pulumi CLI running now gets one SIGINT (its graceful
# cancel). A flag, not just a signal to the CLI: the request must not be lost
# between two CLI processes.
CANCEL_SIGNAL = signal.SIGUSR1


@dataclass(frozen=True)
class Job:
    op_id: str
    kind: str  # create | start | stop | update | delete | refresh
    stack: str
    store_path: str
    settings: PulumiSettings
    # The whole config the run applies (from the store: spec, secrets, runtime,
    # and the running/deleting flags the lifecycle rules give this kind).
    config: StackConfig
    # An earlier run on this stack was cut off: clear its lock and pending
    # operations, adopt what it created, before anything else.
    recover: bool = False
    # Keyed digest of the secret config the stack holds (skip rewriting it).
    secrets_digest: str | None = None
    # The stack's settings file (config + encryption salt) as the store keeps
    # it; None before the first run. Never logged.
    stack_settings: str | None = field(default=None, repr=False)
    # The stack's last outputs name a workload (container or Deployment): should
    # the runtime show it is not running (exited, removed by hand), the run
    # refreshes the stack first so that the engine makes it again.
    workload_recorded: bool = False


@dataclass(frozen=True)
class Outcome:
    op_id: str
    ok: bool
    error: str | None
    error_type: str | None
    outputs: dict[str, Any]
    timings: dict[str, float]
    # Whether the workspace's workload runs after the run (None: not observed).
    observed_running: bool | None = None
    # The run's config reached the stack (an update's spec is then the workspace's).
    config_written: bool = False
    recovered: bool = False
    secrets_digest: str | None = None
    # The stack's settings text after the run (None: no stack, or not known).
    stack_settings: str | None = field(default=None, repr=False)
