"""`stackspace token`: mint, list and revoke API tokens, and rotate the admin
token, on the service's own store (the one `serve` and `stack` open: from
--config, --data-dir and the environment, SQLite or PostgreSQL).

`stackspace token USER [--admin]` (the form before subcommands existed)
still mints a token: a first argument that is no subcommand means `create`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from service import tokens
from service.config import load_config
from service.durations import parse_duration


class _TokenGroup(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


def store_options(fn: Any) -> Any:
    fn = click.option("--data-dir", type=click.Path(file_okay=False))(fn)
    return click.option("--config", type=click.Path(exists=True, dir_okay=False))(fn)


@contextmanager
def _store(config: str | None, data_dir: str | None) -> Iterator[Any]:
    """The service's store, as `serve` resolves it (no store key needed: tokens
    are hashed, not encrypted)."""
    from service.db import DatabaseUnavailable
    from service.store import Store

    try:
        cfg = load_config(Path(config) if config else None, data_dir=data_dir)
        store = Store(cfg.database_url or cfg.store_path)
    except (ValueError, DatabaseUnavailable) as e:
        raise click.ClickException(str(e)) from None
    try:
        yield store
    finally:
        store.close()


@click.group(cls=_TokenGroup)
def token() -> None:
    """API tokens: `create USER`, `list`, `revoke ID`, `rotate-admin`."""


@token.command()
@click.argument("user")
@click.option("--admin", is_flag=True, help="make USER an admin")
@click.option("--expires-in", help="e.g. 3600, 12h, 30d (default: never)")
@click.option("--name", help="a note to recognise it by in `token list`")
@store_options
def create(user: str, admin: bool, expires_in: str | None, name: str | None,
           config: str | None, data_dir: str | None) -> None:
    """Create USER if needed and print a new API token for it (only the value)."""
    from stacks.naming import validate_owner

    try:
        validate_owner(user)
        expires = time.time() + parse_duration(expires_in, "--expires-in") if expires_in \
            else None
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
    with _store(config, data_dir) as store:
        value, _ = tokens.mint(store, user, admin=True if admin else None, name=name,
                               expires_at=expires)
    click.echo(value)


@token.command(name="list")
@click.option("--user", help="only this user's tokens")
@click.option("--json", "as_json", is_flag=True)
@store_options
def list_(user: str | None, as_json: bool, config: str | None, data_dir: str | None) -> None:
    """List tokens (ids, owners, expiry; never their values)."""
    with _store(config, data_dir) as store:
        items = [t.view() for t in tokens.tokens(store, user)]
    if as_json:
        click.echo(json.dumps({"items": items}, indent=2))
        return
    now = time.time()
    for t in items:
        expiry = "never" if t["expires_at"] is None else (
            "expired" if t["expires_at"] <= now else time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(t["expires_at"])))
        role = " (admin)" if t["admin"] else ""
        click.echo(f"{t['id']}  {t['owner']}{role}  expires {expiry}  {t['name'] or ''}")


@token.command()
@click.argument("token_id")
@store_options
def revoke(token_id: str, config: str | None, data_dir: str | None) -> None:
    """Revoke a token by its id (from `token list`)."""
    with _store(config, data_dir) as store:
        if not tokens.revoke(store, token_id):
            raise click.ClickException(f"no token with id {token_id!r}")
    click.echo(f"revoked {token_id}")


@token.command(name="rotate-admin")
@store_options
def rotate_admin(config: str | None, data_dir: str | None) -> None:
    """Revoke the admin token(s) the service made and print a new one. A
    running service takes it at once; STACKSPACE_ADMIN_TOKEN, if set, is added
    again at the service's next start."""
    with _store(config, data_dir) as store:
        click.echo(tokens.rotate_admin(store))
