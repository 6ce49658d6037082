"""`stackspace`: run the service, manage tokens, check the toolchain, and act as
a client of the HTTP API (SPEC §7)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Any

import click
import requests

from proxy.logs import setup_logging
from service import files_cli, sdk
from service.config import load_config
from service.token_cli import token as token_command

log = logging.getLogger("stackspace")


@click.group()
def main() -> None:
    """stackspace: developer workspaces as Pulumi stacks."""


# --- server side ---------------------------------------------------------------

def _serve(config: str | None, data_dir: str | None, listen: str | None,
           retention: str | None = None) -> None:
    from service import tokens
    from service.db import DatabaseUnavailable
    from service.http_server import HttpSettings, serve
    from service.secret_files import SecretUnavailable
    from service.store import open_store
    from stacks.settings import BackendUnavailable, prepare_backend

    setup_logging()
    try:
        cfg = load_config(Path(config) if config else None, data_dir=data_dir, listen=listen,
                          retention=retention)
        http = HttpSettings.parse(cfg.http)
        store = open_store(cfg)
    except (ValueError, DatabaseUnavailable, SecretUnavailable) as e:
        raise click.ClickException(str(e)) from None  # names the setting, no traceback
    new_admin_token = tokens.ensure_admin(store, os.environ.get("STACKSPACE_ADMIN_TOKEN"))
    try:
        prepare_backend(cfg.pulumi_settings())  # fail here, clearly, not in the worker
    except BackendUnavailable as e:
        raise click.ClickException(str(e)) from None
    finally:
        store.close()  # the server's worker process opens its own, after the fork

    def announce() -> None:
        click.echo(f"stackspace listening on http://{cfg.listen} (exec proxy {cfg.proxy_url})")
        click.echo(f"data dir: {cfg.data_dir}")
        if new_admin_token:  # made once; `stackspace token rotate-admin` replaces it
            click.echo(f"admin token (shown once): {new_admin_token}")

    serve(cfg.listen, http, partial(_build_service, cfg), announce)


def _build_service(cfg: Any, gate: Any) -> Any:
    """In the HTTP server's worker process: the store, the one operation runner
    and the app; and what stops them."""
    from service.api import create_app
    from service.config import default_replica_id
    from service.http_server import Service
    from service.replica import is_default_id
    from service.runner import OperationRunner
    from service.session_activity import in_use_check
    from service.store import open_store
    from service.terminals import Terminals

    if is_default_id(cfg.replica_id, os.getppid()):
        # The runner's process names the replica: once it is gone (a new worker,
        # a restarted container), its leases are known dead on this host.
        cfg.replica_id = default_replica_id()
    store = open_store(cfg)
    runner = OperationRunner(store, cfg.pulumi_settings(), cfg.pool_size,
                             cfg.operation_timeout, cfg.idle_stop_after, runtimes=cfg.runtimes,
                             replica_id=cfg.replica_id, lease_seconds=cfg.lease_seconds,
                             retention=cfg.retention)
    terminals = Terminals(cfg.ticket_key, cfg.proxy_url, cfg.runtimes,
                          internal_url=cfg.proxy_internal_url)
    runner.in_use = in_use_check(store, terminals)
    runner.start()

    def stop() -> None:
        log.info("stopping")
        runner.shutdown()
        store.close()

    return Service(create_app(cfg, store, runner, terminals, streams=gate), stop,
                   on_long_thread=store.db.share_this_thread)


class Stopped(Exception):
    """SIGTERM or SIGINT arrived: unwind so every `finally` runs."""


def stop_on_signals() -> None:
    """SIGTERM and SIGINT stop the service cleanly, even when it was started with
    SIGINT ignored (nohup, `cmd &` in scripts): shutdown code must run."""
    def handler(signum: int, frame: Any) -> None:
        raise Stopped(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def _die_with_parent() -> None:
    """In a child: get SIGKILL when the service dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def server_options(listen_help: str) -> Any:
    def decorate(fn: Any) -> Any:
        fn = click.option("--listen", help=listen_help)(fn)
        fn = click.option("--data-dir", type=click.Path(file_okay=False))(fn)
        return click.option("--config", type=click.Path(exists=True, dir_okay=False))(fn)
    return decorate


RETENTION_OPTION = click.option(
    "--retention", help="prune ended operations and events older than this "
    "(seconds, or 90m, 12h, 30d; default 30d) [STACKSPACE_RETENTION]")


@main.command()
@server_options("HOST:PORT (default 127.0.0.1:8080)")
@RETENTION_OPTION
def serve(config: str | None, data_dir: str | None, listen: str | None,
          retention: str | None) -> None:
    """Run one service replica: the HTTP API and an operation runner, no exec
    proxy. Several replicas may share one store (SPEC §9)."""
    _serve(config, data_dir, listen, retention)


@main.command()
@server_options("HOST:PORT (default 127.0.0.1:8080)")
@RETENTION_OPTION
def run(config: str | None, data_dir: str | None, listen: str | None,
        retention: str | None) -> None:
    """Run the service and the exec proxy (a separate process) with embedded defaults."""
    cfg = load_config(Path(config) if config else None, data_dir=data_dir, listen=listen)
    # The proxy is its own process, on the address this service hands out.
    args = [sys.executable, "-m", "service.cli", "proxy", "--listen", cfg.proxy_listen,
            "--api", cfg.listen]
    if config:
        args += ["--config", config]
    if data_dir:
        args += ["--data-dir", data_dir]
    stop_on_signals()
    proxy = subprocess.Popen(args, stdout=subprocess.PIPE, text=True,  # noqa: S603
                             preexec_fn=_die_with_parent)  # noqa: PLW1509
    started = proxy.stdout.readline() if proxy.stdout else ""  # its "listening on" line
    if not started:  # it exited: terminals would reach nothing (or another proxy)
        proxy.wait()
        raise click.ClickException(
            f"the exec proxy did not start on {cfg.proxy_listen} (see its error above; "
            "is the address in use? set proxy_listen or STACKSPACE_PROXY_LISTEN)")
    click.echo(started, nl=False)
    threading.Thread(target=shutil.copyfileobj, args=(proxy.stdout, sys.stdout),
                     daemon=True, name="proxy-output").start()
    try:
        _serve(config, data_dir, listen, retention)
    except Stopped:
        pass
    finally:
        proxy.terminate()
        try:
            proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.kill()


@main.command()
@server_options("HOST:PORT for the proxy (default 127.0.0.1:8081)")
@click.option("--api", help="HOST:PORT of the service, for activity reports")
@click.option("--database-url", envvar="STACKSPACE_DATABASE_URL",
              help="the service's database (postgresql://... or its SQLite file): tickets "
                   "are then single-use across all proxy replicas [STACKSPACE_DATABASE_URL]")
def proxy(config: str | None, data_dir: str | None, listen: str | None, api: str | None,
          database_url: str | None) -> None:
    """Run one exec proxy (terminals into running workspaces) with the service's
    ticket key and listen address; the same process as `python -m proxy`. Run
    several on one --database-url to scale out (SPEC §9)."""
    from proxy.server import ProxyConfig, run_proxy

    setup_logging()
    cfg = load_config(Path(config) if config else None, data_dir=data_dir, proxy_listen=listen)
    host, _, port = cfg.proxy_listen.rpartition(":")
    try:
        run_proxy(ProxyConfig(key=cfg.ticket_key, host=host, port=int(port),
                              activity_url=f"http://{api or cfg.listen}/internal/activity",
                              database_url=database_url or cfg.database_url,
                              session_idle_timeout=cfg.session_idle_timeout),
                  announce=lambda url: click.echo(f"exec proxy listening on {url}"))
    except OSError as e:  # the address is taken or not ours
        raise click.ClickException(f"cannot listen on {cfg.proxy_listen}: "
                                   f"{e.strerror or e}") from e


main.add_command(token_command)  # service.token_cli: create, list, revoke, rotate-admin


@main.command(name="stack", context_settings={"ignore_unknown_options": True})
@click.argument("workspace")
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--config", type=click.Path(exists=True, dir_okay=False))
@click.option("--data-dir", type=click.Path(file_okay=False))
def stack_(workspace: str, args: tuple[str, ...], config: str | None,
           data_dir: str | None) -> None:
    """Run the plain `pulumi` CLI on a workspace's stack: `stackspace stack
    OWNER/NAME -- preview` (or the stack's name; also `stack output`, `config`,
    `refresh` ...), with the service's backend and passphrase and the stack's
    settings from its store."""
    from service.operator import WorkspaceNotFound, run_pulumi
    from service.store import Store

    cfg = load_config(Path(config) if config else None, data_dir=data_dir)
    try:
        # Opened without its key: stack settings are no encrypted column.
        store = Store(cfg.database_url or cfg.store_path)
        code = run_pulumi(store, cfg.pulumi_settings(), workspace, args,
                          warn=lambda text: click.echo(f"warning: {text}", err=True))
    except WorkspaceNotFound as e:
        raise click.ClickException(str(e)) from e
    sys.exit(code)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--config", type=click.Path(exists=True, dir_okay=False))
def doctor(as_json: bool, config: str | None) -> None:
    """Check the Pulumi CLI, language host, plugins and every configured runtime."""
    from service.doctor import run_checks

    cfg = load_config(Path(config) if config else None)
    checks = run_checks(cfg)
    ok = all(c["ok"] for c in checks if c["required"])
    if as_json:
        click.echo(json.dumps({"ok": ok, "checks": checks}, indent=2))
    else:
        for c in checks:
            mark = "ok  " if c["ok"] else ("FAIL" if c["required"] else "warn")
            click.echo(f"{mark} {c['name']:<28} {c['detail']}")
    sys.exit(0 if ok else 1)


@main.command()
@click.option("--namespace", default="stackspace", show_default=True,
              help="namespace of the service and the proxy (one install per namespace)")
@click.option("--workspace-namespace", default="stackspace-workspaces", show_default=True,
              help="the only namespace the service may touch: workspaces live there")
@click.option("--image", required=True, help="the stackspace image (scripts/toolchain/"
              "stackspace-image.sh builds it; the cluster's nodes must have it)")
@click.option("--database-url", envvar="STACKSPACE_DATABASE_URL",
              help="postgresql://... store (STACKSPACE_DATABASE_URL); none: SQLite on the "
              "service's data volume (a PersistentVolumeClaim), 1 replica")
@click.option("--backend-url", envvar="STACKSPACE_INSTALL_BACKEND_URL",
              help="Pulumi backend of the workspaces (postgres://...); none: file:// on the "
              "service's data volume")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="another install setting (deploy/settings.py), e.g. serviceReplicas=2")
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="where the install's own Pulumi state and passphrase stay")
@click.option("--render", "render_dir", type=click.Path(file_okay=False),
              help="write the manifests as YAML into this directory instead ('-': stdout)")
@click.option("--show-admin-token", is_flag=True, help="print the service's admin token")
def install(namespace: str, workspace_namespace: str, image: str, database_url: str | None,
            backend_url: str | None, settings: tuple[str, ...], state_dir: str | None,
            render_dir: str | None, show_admin_token: bool) -> None:
    """Install or upgrade stackspace in a Kubernetes cluster (the Pulumi program in
    deploy/, run with the current kubeconfig unless --set kubeconfig=...)."""
    import tempfile

    from pulumi.automation.errors import CommandError

    from service import install as inst

    extra: dict[str, str] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: want KEY=VALUE", param_hint="--set")
        extra[key] = value
    opts = inst.InstallOptions(namespace=namespace, workspace_namespace=workspace_namespace,
                               image=image, database_url=database_url, backend_url=backend_url,
                               settings=extra,
                               state_dir=Path(state_dir) if state_dir else inst.DEFAULT_STATE_DIR)
    echo = lambda line: click.echo(line.rstrip("\n"), err=True)  # noqa: E731
    try:
        if render_dir == "-":
            with tempfile.TemporaryDirectory() as tmp:
                for path in inst.render(opts, Path(tmp), echo):
                    click.echo(f"---\n# {path.relative_to(tmp)}\n{path.read_text()}")
            return
        if render_dir:
            for path in inst.render(opts, Path(render_dir), echo):
                click.echo(str(path))
            return
        outputs = inst.install(opts, echo)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    except CommandError as e:
        raise click.ClickException(f"install failed: {_last_error(str(e))}") from e
    token = outputs.pop("adminToken", None)
    click.echo(json.dumps(outputs, indent=2, sort_keys=True))
    if show_admin_token:
        click.echo(f"admin token: {token}")


@main.command()
@click.option("--namespace", default="stackspace", show_default=True)
@click.option("--state-dir", type=click.Path(file_okay=False))
@click.option("--delete-data", is_flag=True,
              help="also delete the service's data volume (store and workspaces' state)")
def uninstall(namespace: str, state_dir: str | None, delete_data: bool) -> None:
    """Remove everything `stackspace install` made in NAMESPACE and the workspace
    namespace's Roles (the workspace namespace itself and its workspaces stay).
    The service's data volume and its namespace stay unless --delete-data."""
    from pulumi.automation.errors import CommandError

    from service import install as inst

    echo = lambda line: click.echo(line.rstrip("\n"), err=True)  # noqa: E731
    try:
        kept = inst.uninstall(namespace, Path(state_dir) if state_dir else
                              inst.DEFAULT_STATE_DIR, echo, delete_data=delete_data)
    except (ValueError, RuntimeError) as e:
        raise click.ClickException(str(e)) from e
    except CommandError as e:
        raise click.ClickException(f"uninstall failed: {_last_error(str(e))}") from e
    click.echo(inst.kept_note(namespace, kept))


def _last_error(text: str) -> str:
    """The program's refusal (a bad setting names its key) or the engine's last error
    lines, not the whole transcript."""
    lines = [ln.strip() for ln in text.splitlines()]
    refusals = [ln.removeprefix("ValueError: ") for ln in lines if ln.startswith("ValueError: ")]
    if refusals:
        return refusals[-1]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return "; ".join(errors[-3:]) or (lines or ["no output"])[-1]


# --- client side ---------------------------------------------------------------

class Client(sdk.Client):
    """The SDK (service.sdk), its refusals turned into the CLI's errors."""

    def __init__(self, url: str | None, token: str | None):
        try:
            super().__init__(url, token)
        except ValueError as e:
            raise click.UsageError("set STACKSPACE_TOKEN or pass --token") from e

    def call(self, method: str, path: str, body: Any = None, *,
             params: dict[str, str] | None = None) -> Any:
        try:
            return super().call(method, path, body, params=params)
        except sdk.ApiError as e:
            raise click.ClickException(str(e)) from e
        except requests.ConnectionError as e:
            raise click.ClickException(f"cannot reach the service at {self.url} "
                                       "(STACKSPACE_URL, --url): is it running?") from e

    def follow(self, op: dict[str, Any], as_json: bool) -> dict[str, Any]:
        """Follow an operation to its end, with a live status line on a TTY."""
        from rich.console import Console

        console = Console(stderr=True)
        show = sys.stderr.isatty() and not as_json
        with console.status(f"{op['kind']} {op['workspace']}: {op['status']}") if show \
                else contextlib.nullcontext() as status:
            return self.wait(op, check=False, on_status=lambda o: status and
                             status.update(f"{o['kind']} {o['workspace']}: {o['status']}"))


def connection_options(fn: Any) -> Any:
    fn = click.option("--url", help="service URL (STACKSPACE_URL)")(fn)
    return click.option("--token", help="API token (STACKSPACE_TOKEN)")(fn)


def client_options(fn: Any) -> Any:
    fn = connection_options(fn)
    return click.option("--json", "as_json", is_flag=True, help="machine-readable output")(fn)


from service.forward_cli import port_forward_command  # noqa: E402 - a hook, kept local

main.add_command(port_forward_command(connection_options, Client))


def _emit(data: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json or not sys.stdout.isatty() else text)


def _operation(client: Client, op: dict[str, Any], wait: bool, as_json: bool) -> None:
    if wait:
        op = client.follow(op, as_json)
    _emit(op, as_json, f"{op['kind']} {op['workspace']}: {op['status']}"
          + (f" ({op['error']})" if op.get("error") else ""))
    if wait and op["status"] != "succeeded":
        sys.exit(1)


@main.command()
@click.argument("spec_file", type=click.File())
@click.option("--wait", is_flag=True)
@client_options
def create(spec_file: Any, wait: bool, url: str, token: str, as_json: bool) -> None:
    """Create a workspace from a JSON/YAML spec file ('-' for stdin)."""
    from service import spec_file as spec_files

    client = Client(url, token)
    _operation(client, client.call("POST", "/workspaces", spec_files.read(spec_file)), wait,
               as_json)


@main.command(name="list")
@client_options
def list_(url: str, token: str, as_json: bool) -> None:
    """List your workspaces."""
    client = Client(url, token)
    data = client.call("GET", "/workspaces")
    items = data["items"]
    while data.get("next"):  # every page, following the cursors
        data = client.call("GET", f"/workspaces?cursor={data['next']}")
        items += data["items"]
    data = {"items": items}
    text = "\n".join(f"{w['name']:<24} {w['state']:<12} {w['runtime']}" for w in items)
    _emit(data, as_json, text or "no workspaces")


@main.command()
@click.argument("name")
@client_options
def show(name: str, url: str, token: str, as_json: bool) -> None:
    """Show one workspace."""
    data = Client(url, token).call("GET", f"/workspaces/{name}")
    _emit(data, as_json, json.dumps(data, indent=2))


def _queue_option(default: bool) -> Any:
    return click.option("--queue/--no-queue", default=default, show_default=True,
                        help="run after the operations in flight instead of answering 409")


def _queue(queue: bool) -> dict[str, str] | None:
    return {"queue": "true"} if queue else None


def _lifecycle(kind: str, method: str, suffix: str, queue: bool = False) -> Any:
    @click.argument("name")
    @click.option("--wait", is_flag=True, help="block until the operation ends")
    @_queue_option(queue)
    @client_options
    def command(name: str, wait: bool, queue: bool, url: str, token: str,
                as_json: bool) -> None:
        client = Client(url, token)
        _operation(client, client.call(method, f"/workspaces/{name}{suffix}",
                                       params=_queue(queue)), wait, as_json)
    command.__doc__ = f"{kind.capitalize()} a workspace."
    return main.command(name=kind)(command)


start = _lifecycle("start", "POST", "/start")
stop = _lifecycle("stop", "POST", "/stop")
# Delete always goes through (SPEC §3): it waits its turn by default.
delete = _lifecycle("delete", "DELETE", "", queue=True)


@main.command()
@click.argument("name")
@click.argument("patch_file", type=click.File())
@click.option("--wait", is_flag=True)
@_queue_option(False)
@client_options
def update(name: str, patch_file: Any, wait: bool, queue: bool, url: str, token: str,
           as_json: bool) -> None:
    """Update image/env/files/resources/command from a JSON/YAML patch file."""
    from service import spec_file

    client = Client(url, token)
    _operation(client, client.call("PATCH", f"/workspaces/{name}",
                                   spec_file.read(patch_file, patch=True),
                                   params=_queue(queue)), wait, as_json)


def _grant(client: Client, name: str) -> Any:
    """Ticket requests for workspace NAME (service.session_cli.Grant)."""
    return lambda body: client.call("POST", f"/workspaces/{name}/terminals", body)


@main.command()
@click.argument("name")
@click.option("--list", "list_", is_flag=True, help="list the workspace's sessions")
@click.option("--attach", metavar="ID", help="reattach session ID (output replayed)")
@click.option("--kill", metavar="ID", help="end session ID")
@click.option("--json", "as_json", is_flag=True, help="machine-readable --list")
@connection_options
def term(name: str, list_: bool, attach: str | None, kill: str | None, as_json: bool,
         url: str, token: str) -> None:
    """An interactive terminal in workspace NAME (exit code passed through). It
    outlives its connection: a drop reattaches by itself; `--attach ID` later."""
    from service import session_cli
    from service.exec_client import ExecClientError

    grant = _grant(Client(url, token), name)
    try:
        if list_:
            items = session_cli.sessions(grant)
            _emit(items, as_json, session_cli.format_sessions(items))
            return
        if kill:
            sys.exit(session_cli.kill(grant, kill))
        sys.exit(session_cli.terminal(grant, attach))
    except (ExecClientError, RuntimeError) as e:
        raise click.ClickException(str(e)) from e


@main.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.option("--detach", is_flag=True, help="start in the background, print the session id")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@connection_options
def exec_(name: str, detach: bool, command: tuple[str, ...], url: str, token: str) -> None:
    """Run COMMAND in workspace NAME: `stackspace exec NAME -- CMD ARGS...`.
    stdin/stdout are raw byte pipes; exits with the command's exit code. A dropped
    connection reattaches by itself; `--detach` leaves the command running
    (`stackspace term NAME --attach ID` gets its output and exit code)."""
    from service import session_cli
    from service.exec_client import ExecClientError

    try:
        result = session_cli.command(_grant(Client(url, token), name), list(command),
                                     detach=detach)
    except ExecClientError as e:
        raise click.ClickException(str(e)) from e
    if detach:
        click.echo(result)
        return
    sys.exit(result)


files_cli.register(main, connection_options, Client)


from service.fleet_cli import fleet  # noqa: E402 - `stackspace fleet` (SPEC §10)

main.add_command(fleet)

if __name__ == "__main__":
    main()
