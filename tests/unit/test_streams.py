"""The one way the API streams (service.streams.follow): it reads when the
feed says its topic may have news, sends a keep-alive only when idle, ends
when the read says so or when the server stops."""

from __future__ import annotations

import threading
from pathlib import Path

from service.notify import EventFeed
from service.streams import event, follow


def test_a_stream_reads_on_news_keeps_alive_when_idle_and_ends(tmp_path: Path):
    import sqlite3

    sqlite3.connect(tmp_path / "s.db").close()
    stopping = threading.Event()
    feed = EventFeed(tmp_path / "s.db", threading.Event())
    queue = ["a"]  # what the store holds that the stream has not sent yet

    def read() -> tuple[list[str], bool]:
        chunks = queue[:]
        queue.clear()
        return [event("item", c) for c in chunks], "end" in chunks

    body = follow(feed, "topic", stopping, read, keepalive=0.2)
    assert next(body) == "event: item\ndata: a\n\n"  # at once: the response starts
    # Nothing new: a keep-alive once `keepalive` has passed without a word.
    assert next(body) == ": keep-alive\n\n"
    queue += ["b", "c"]
    feed.poke("topic")
    assert next(body) == "event: item\ndata: b\n\n"
    assert next(body) == "event: item\ndata: c\n\n"
    queue.append("end")
    feed.poke("topic")
    assert list(body) == ["event: item\ndata: end\n\n"]
    assert event("end", "{}", 7) == "id: 7\nevent: end\ndata: {}\n\n"

    # A server that stops ends a waiting stream.
    idle = follow(feed, "other", stopping, lambda: ([], False), keepalive=60)
    assert next(idle) == ": keep-alive\n\n"
    threading.Timer(0.1, stopping.set).start()
    assert list(idle) == []


def test_a_stream_whose_client_left_ends_at_its_next_wake_up(tmp_path: Path):
    import socket
    import sqlite3

    from service.streams import client_gone

    sqlite3.connect(tmp_path / "s.db").close()
    feed = EventFeed(tmp_path / "s.db", threading.Event())
    server, client = socket.socketpair()
    server.settimeout(30)  # as the HTTP server's sockets: the check must not wait on it
    gone = client_gone(server)
    reads = []

    def read() -> tuple[list[str], bool]:
        reads.append(1)
        return [], False

    body = follow(feed, "topic", threading.Event(), read, keepalive=60, gone=gone)
    assert next(body) == ": keep-alive\n\n" and not gone()
    client.close()
    assert gone()
    feed.poke("topic")  # news: the stream wakes, sees the client gone, reads nothing
    assert list(body) == [] and reads == [1]
    assert client_gone(None)() is False  # no socket known (another server): never
    server.close()
