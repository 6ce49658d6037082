"""SSE streams are woken by the store, not by polling per stream: an event
added by another connection (another process or replica) wakes a waiting
stream at once, on SQLite and on a real PostgreSQL; nothing wakes it for no
reason; a stopping server ends every wait."""

from __future__ import annotations

import threading
import time

from components.runtime import parse_runtime, runtime_dict
from components.spec import WorkspaceSpec
from service.notify import EventFeed
from service.store import Store

RUNTIME = runtime_dict(parse_runtime({"name": "local", "type": "docker",
                                      "host": "unix:///nonexistent.sock"}))


def operation(store: Store, name: str) -> str:
    spec = WorkspaceSpec.parse({"name": name})
    op, _ = store.create_workspace("alice", name, f"alice-{name}", RUNTIME, spec.public_dict(),
                                   spec.secret_values(), quota=10)
    return op["id"]


def test_an_event_from_another_connection_wakes_the_stream_at_once(store_target, tmp_path):
    reader = Store(store_target, key_file=tmp_path / "store.key")
    writer = Store(store_target, key_file=tmp_path / "store.key")  # as a worker process would
    op_id, other = operation(writer, "a"), operation(writer, "b")
    stopping = threading.Event()
    feed = EventFeed(reader.path, stopping)
    try:
        # Idle: the wait lasts its whole timeout (the watcher starting wakes it once).
        seen = feed.version(op_id)
        feed.wait(op_id, seen, 2.0)
        seen = feed.version(op_id)
        start = time.monotonic()
        feed.wait(op_id, seen, 1.0)
        assert time.monotonic() - start >= 0.9

        for target in (op_id, other, op_id):
            seen = feed.version(op_id)
            timer = threading.Timer(0.3, writer.add_event, (target, {"type": "diagnostic"}))
            start = time.monotonic()
            timer.start()
            feed.wait(op_id, seen, 10.0 if target == op_id else 2.0)
            took = time.monotonic() - start
            timer.join()
            if target == op_id:
                assert took < 1.5, f"woken after {took:.2f}s"
                assert reader.events(op_id)[-1][1]["type"] == "diagnostic"
            elif reader.db.dialect == "postgresql":  # it says whose event: not woken
                assert took >= 1.9, "woken by another operation's event"
            else:  # SQLite only knows something changed: every stream looks again
                assert took < 1.5

        seen = feed.version(op_id)
        threading.Timer(0.3, stopping.set).start()
        start = time.monotonic()
        feed.wait(op_id, seen, 10.0)
        assert time.monotonic() - start < 2.0, "stopping did not end the wait"
    finally:
        stopping.set()
        reader.close()
        writer.close()
