"""A pool of long-lived worker processes that outlives any one of them.

Each slot owns one spawned worker (warm: Pulumi SDK and providers' SDKs
imported once) and feeds it one job at a time over a pipe. A worker that dies
fails only its own job (`WorkerDied`); the slot kills whatever engine
processes that worker left behind and starts a fresh worker. (A
ProcessPoolExecutor breaks for good when one worker dies.)

Every process a worker starts (the Pulumi CLI, providers) inherits the
worker's ENGINE_TAG environment variable, so leftovers are found precisely by
that tag, never by a saved pid that may since belong to someone else.

Workers die with the service (PR_SET_PDEATHSIG), but the engine processes
they started would not: a guardian process watches the service through a
pipe only the service holds, and when the service is gone (however it died)
kills every engine process of this pool. So an engine never outlives its
service replica for long, and a lease that replica held can safely be taken
over once it expires (service.runner).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from stacks.settings import engine_environment

log = logging.getLogger("stackspace.pool")

ENGINE_TAG = "STACKSPACE_ENGINE_TAG"
# A worker's first message: it has set up its signal handlers and imports.
# No job (and so no cancel signal) reaches it before that.
READY = "ready"
READY_TIMEOUT = 300.0


class WorkerDied(Exception):
    """The worker process running a job died before answering."""


@dataclass
class _Running:
    op_id: str
    pid: int
    tag: str


class WorkerPool:
    def __init__(self, size: int, tag_prefix: str, target: str,
                 args: tuple[Any, ...] = ()):
        """`target` ("module:function") is a worker's main loop, called as
        function(conn, tag, *args). Named, not passed: the module (with the
        Pulumi SDK it imports) then loads only in the workers."""
        self.size = size
        self._args = args
        self.tag_prefix = tag_prefix
        self._target = target
        self._jobs: queue.Queue[tuple[Any, Callable[[Any], None]] | None] = queue.Queue()
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._guardian, self._lifeline = _start_guardian(tag_prefix)
        self._threads = [threading.Thread(target=self._slot, args=(i,), name=f"worker-slot-{i}",
                                          daemon=True) for i in range(size)]
        for t in self._threads:
            t.start()

    def submit(self, job: Any, done: Callable[[Any], None]) -> None:
        """Run `job` (it has an `op_id`) on the next free worker; `done` gets the
        worker's answer or a WorkerDied."""
        self._jobs.put((job, done))

    def pid_of(self, op_id: str) -> int | None:
        with self._lock:
            run = self._running.get(op_id)
        return run.pid if run else None

    def kill(self, op_id: str) -> None:
        """Hard-stop the worker running `op_id` and every engine process it started."""
        with self._lock:
            run = self._running.get(op_id)
        if run is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.pid, signal.SIGKILL)
            kill_tagged(lambda tag, run=run: tag == run.tag)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join(timeout=15)
        # Workers die with their slot thread (PR_SET_PDEATHSIG); their engines too.
        kill_tagged(lambda tag: tag.startswith(self.tag_prefix + ":"))
        os.close(self._lifeline)  # the guardian finds nothing left and exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._guardian.wait(timeout=15)

    # --- one slot ---------------------------------------------------------------
    def _slot(self, index: int) -> None:
        generation = 0
        proc, conn, tag = self._spawn(index, generation)
        while True:
            item = self._jobs.get()
            if item is None:
                break
            job, done = item
            if not proc.is_alive():
                generation += 1
                proc, conn, tag = self._spawn(index, generation)
            with self._lock:
                self._running[job.op_id] = _Running(job.op_id, proc.pid or 0, tag)
            try:
                conn.send(job)
                answer: Any = self._answer(proc, conn)
            except (EOFError, OSError, WorkerDied) as e:
                answer = e if isinstance(e, WorkerDied) else WorkerDied(str(e))
            if isinstance(answer, WorkerDied):
                log.warning("worker died", extra={"op": job.op_id, "pid": proc.pid})
                kill_tagged(lambda t, tag=tag: t == tag)
                with contextlib.suppress(Exception):
                    proc.kill()
                proc.join(timeout=5)
                generation += 1
                proc, conn, tag = self._spawn(index, generation)
            with self._lock:
                self._running.pop(job.op_id, None)
            try:
                done(answer)
            except Exception:  # noqa: BLE001 - one bad callback must not kill the slot
                log.exception("operation completion failed", extra={"op": job.op_id})
        with contextlib.suppress(Exception):
            conn.close()
            proc.kill()

    def _spawn(self, index: int, generation: int) -> tuple[Any, Any, str]:
        """Start a worker and wait until it says it is ready (retrying a worker
        that dies on the way)."""
        while True:
            tag = f"{self.tag_prefix}:{index}:{generation}"
            proc, parent = _start_worker(self._target, tag, self._args)
            try:
                if parent.poll(READY_TIMEOUT) and parent.recv() == READY:
                    return proc, parent, tag
            except (EOFError, OSError):
                pass
            log.warning("worker failed to start", extra={"slot": index})
            with contextlib.suppress(Exception):
                proc.kill()
            proc.join(timeout=5)
            generation += 1
            time.sleep(1)

    @staticmethod
    def _answer(proc: Any, conn: Any) -> Any:
        while True:
            if conn.poll(0.5):
                return conn.recv()
            if not proc.is_alive():
                if conn.poll(0):  # answered just before exiting
                    return conn.recv()
                raise WorkerDied(f"worker exited with code {proc.exitcode}")


class _Worker:
    """A worker process as the slot sees it (the part of multiprocessing.Process it uses)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self._proc = proc
        self.pid = proc.pid

    def is_alive(self) -> bool:
        return self._proc.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self._proc.poll()

    def kill(self) -> None:
        self._proc.kill()

    def join(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=timeout)


def _start_worker(target: str, tag: str, args: tuple[Any, ...]) -> tuple[_Worker, Connection]:
    """`python -m service.pool --worker TARGET FD`, fed over a socket pair with
    multiprocessing's message framing. A plain subprocess, not a spawned
    multiprocessing.Process: that would also start a resource-tracker process
    (~12 MB) that this pool has no use for. Started from the slot's thread, so
    the worker's PR_SET_PDEATHSIG follows that thread."""
    parent, child = multiprocessing.Pipe()
    try:
        # The worker and every engine process under it see only the
        # allowlisted environment: no admin token, database URL or key.
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "service.pool", "--worker", target, str(child.fileno())],
            pass_fds=[child.fileno()], stdin=subprocess.DEVNULL,
            env=engine_environment(os.environ))
    finally:
        child.close()
    parent.send((tag, args))
    return _Worker(proc), parent


def _worker_process(target: str, fd: int) -> None:
    conn = Connection(fd)
    tag, args = conn.recv()
    module, function = target.split(":")
    getattr(importlib.import_module(module), function)(conn, tag, *args)


def _start_guardian(tag_prefix: str) -> tuple[subprocess.Popen, int]:
    """Start the guardian of this pool's engine processes; returns it and the
    write end of its lifeline (non-inheritable: only this process holds it)."""
    read, write = os.pipe()
    try:
        # Its own session: a Ctrl-C at the service's terminal must not kill it first.
        proc = subprocess.Popen([sys.executable, "-m", "service.pool", tag_prefix],  # noqa: S603
                                stdin=read, start_new_session=True)
    finally:
        os.close(read)
    return proc, write


def guard(tag_prefix: str) -> None:
    """The guardian's life: wait until the lifeline closes (the service exited
    or died), then kill the engine processes the service's workers left."""
    with contextlib.suppress(OSError):
        while os.read(0, 1024):
            pass
    kill_tagged(lambda tag: tag.startswith(tag_prefix + ":"))


def tagged_processes(match: Callable[[str], bool]) -> list[int]:
    """Pids whose environment carries an ENGINE_TAG that `match` accepts."""
    found = []
    marker = f"{ENGINE_TAG}=".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(marker) and match(var[len(marker):].decode(errors="replace")):
                found.append(int(entry.name))
                break
    return found


def kill_tagged(match: Callable[[str], bool], wait: float = 10.0) -> int:
    """SIGKILL every process whose ENGINE_TAG `match` accepts, until none is left."""
    killed = 0
    deadline = time.monotonic() + wait
    while pids := tagged_processes(match):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        if time.monotonic() > deadline:
            log.warning("engine processes survive SIGKILL", extra={"pids": pids})
            break
        time.sleep(0.1)
    return killed


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        _worker_process(sys.argv[2], int(sys.argv[3]))
    else:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        guard(sys.argv[1])
