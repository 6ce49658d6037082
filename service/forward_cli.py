"""``stackspace port-forward WS [LOCAL:]REMOTE...``: the command; the work is in
:mod:`service.forward_client`."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from typing import Any

import click

from service.forward_client import Grant, PortSpec, parse_port_spec, serve_forwards


def port_forward_command(connection_options: Callable[[Any], Any],
                         client: Callable[[str | None, str | None], Any]) -> click.Command:
    """Built with the main CLI's options and API client (passed in: no import cycle)."""

    @click.command(name="port-forward")
    @click.argument("name")
    @click.argument("ports", nargs=-1, required=True)
    @click.option("--address", default="127.0.0.1", show_default=True,
                  help="local address to listen on")
    @connection_options
    def port_forward(name: str, ports: tuple[str, ...], address: str, url: str | None,
                     token: str | None) -> None:
        """Forward local ports to ports inside workspace NAME, through the exec proxy:
        `LOCAL:REMOTE`, `REMOTE` (the same local port) or `:REMOTE` (a free local
        port, printed). No port is published on the workspace's host. Runs until
        interrupted."""
        try:
            specs = [parse_port_spec(p) for p in ports]
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="PORTS") from None
        api = client(url, token)

        def fetcher(spec: PortSpec) -> Callable[[], Grant]:
            return lambda: api.call("POST", f"/workspaces/{name}/terminals",
                                    {"port": spec.remote})

        def report(message: str) -> None:
            click.echo(f"error: {message}", err=True)

        def announce(message: str) -> None:
            click.echo(message)
            sys.stdout.flush()

        with contextlib.suppress(KeyboardInterrupt):
            try:
                asyncio.run(serve_forwards(address, [(s, fetcher(s)) for s in specs],
                                           announce, report))
            except OSError as e:  # the local port is taken, or the address is not ours
                raise click.ClickException(f"cannot listen on {address}: {e.strerror or e}"
                                           ) from None

    return port_forward
