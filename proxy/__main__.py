"""``python -m proxy``: run the exec proxy as its own process.

The ticket key (hex, shared with the service) comes from ``--key-file`` or the
``STACKSPACE_TICKET_KEY`` environment variable, never from argv. Once listening
it prints ``exec proxy listening on ws://HOST:PORT/exec`` (port 0 picks one).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from proxy.server import ProxyConfig, run_proxy

_D = ProxyConfig  # the defaults have one home: the dataclass's field defaults


def read_key(key_file: str | None) -> bytes:
    text = Path(key_file).read_text() if key_file else os.environ.get("STACKSPACE_TICKET_KEY", "")
    try:
        key = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise click.BadParameter("the ticket key must be hex", param_hint="key") from exc
    if len(key) < 32:
        raise click.BadParameter("the ticket key must be at least 32 bytes (64 hex digits): "
                                 "--key-file or STACKSPACE_TICKET_KEY", param_hint="key")
    return key


@click.command()
@click.option("--listen", default="127.0.0.1:8081", show_default=True, help="HOST:PORT")
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False),
              help="file holding the hex ticket key (else STACKSPACE_TICKET_KEY)")
@click.option("--activity-url", help="where to POST signed activity reports")
@click.option("--activity-interval", type=float, default=_D.activity_interval, show_default=True)
@click.option("--idle-timeout", type=float, default=_D.idle_timeout, show_default=True)
@click.option("--max-sessions-per-user", type=int, default=_D.max_sessions_per_user,
              show_default=True)
@click.option("--max-sessions-per-workspace", type=int,
              default=_D.max_sessions_per_workspace, show_default=True)
@click.option("--max-forwards-per-user", type=int, default=_D.max_forwards_per_user,
              show_default=True,
              help="open port-forward connections (counted apart from sessions)")
@click.option("--max-forwards-per-workspace", type=int,
              default=_D.max_forwards_per_workspace, show_default=True)
@click.option("--session-idle-timeout", type=float, default=_D.session_idle_timeout,
              show_default=True, envvar="STACKSPACE_SESSION_IDLE_TIMEOUT",
              help="seconds a session lives with no client attached "
                   "[STACKSPACE_SESSION_IDLE_TIMEOUT]")
@click.option("--max-frame-bytes", type=int, default=_D.max_frame_bytes, show_default=True)
@click.option("--database-url", envvar="STACKSPACE_DATABASE_URL",
              help="the service's database (postgresql://... or an SQLite file): tickets are "
                   "then single-use, and session caps count sessions, across all proxy "
                   "replicas on it [STACKSPACE_DATABASE_URL]")
def main(listen: str, key_file: str | None, activity_url: str | None,
         activity_interval: float, idle_timeout: float, max_sessions_per_user: int,
         max_sessions_per_workspace: int, max_forwards_per_user: int,
         max_forwards_per_workspace: int, session_idle_timeout: float, max_frame_bytes: int,
         database_url: str | None) -> None:
    """Run the exec proxy."""
    from proxy.logs import setup_logging

    setup_logging()
    host, _, port = listen.rpartition(":")
    run_proxy(ProxyConfig(
        key=read_key(key_file), host=host or "127.0.0.1", port=int(port),
        activity_url=activity_url, activity_interval=activity_interval,
        idle_timeout=idle_timeout, max_sessions_per_user=max_sessions_per_user,
        max_sessions_per_workspace=max_sessions_per_workspace,
        max_frame_bytes=max_frame_bytes, database_url=database_url,
        max_forwards_per_user=max_forwards_per_user,
        max_forwards_per_workspace=max_forwards_per_workspace,
        session_idle_timeout=session_idle_timeout),
        announce=lambda url: print(f"exec proxy listening on {url}", flush=True))


if __name__ == "__main__":
    sys.exit(main())
