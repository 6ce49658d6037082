"""`stackspace fleet`: review component code against every workspace (SPEC §10)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import NoReturn

import click

from service.config import load_config
from service.rollout_plan import Options


@click.group()
def fleet() -> None:
    """Review and roll out component code across every workspace."""


@fleet.command()
@click.option("--program", type=click.Path(file_okay=False), default=".",
              help="the checkout whose program is previewed (default: the repository the "
              "command runs in; never the installed code)")
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option("--config", type=click.Path(exists=True, dir_okay=False))
@click.option("--owner", help="only this owner's workspaces")
@click.option("--runtime", help="only workspaces on this runtime")
@click.option("--concurrency", type=click.IntRange(min=1), help="stacks at once [cores]")
@click.option("--json", "as_json", is_flag=True)
@click.option("--markdown", is_flag=True, help="a table for a pull-request comment")
@click.option("--save-plans", type=click.Path(file_okay=False),
              help="keep each workspace's plan here (for `fleet rollout --plans`)")
def preview(program: str, data_dir: str | None, config: str | None, owner: str | None,
            runtime: str | None, concurrency: int | None, as_json: bool, markdown: bool,
            save_plans: str | None) -> None:
    """Preview a checkout's program against every workspace stack, writing
    nothing. Exit 0: nothing at risk; 1: some storage at risk; 2: error."""
    from service.fleet import ProgramError, check_program, preview_fleet
    from service.store import Store
    from stacks.fleet_report import exit_code, to_json, to_markdown

    if as_json and markdown:
        fail("--json and --markdown: choose one")
    try:
        checkout = check_program(Path(program))
        cfg = load_config(Path(config) if config else None, data_dir=data_dir)
        # Opened without its key: only plain columns are read.
        store = Store(cfg.database_url or cfg.store_path)
        reports = preview_fleet(store, cfg.pulumi_settings(), checkout, owner=owner,
                                runtime=runtime, concurrency=concurrency,
                                plans=Path(save_plans) if save_plans else None)
    except (ProgramError, ValueError) as e:
        fail(str(e))
    if as_json:
        click.echo(json.dumps(to_json(reports), indent=2))
    elif markdown:
        click.echo(to_markdown(reports))
    else:
        for r in reports:
            steps = " ".join(f"{k}={n}" for k, n in r.steps.items() if n) or "no changes"
            flags = [f for f, on in (("RESTART", r.restart), ("STORAGE AT RISK",
                                                              r.storage_at_risk)) if on]
            extra = "; ".join(x for x in (r.error, r.busy, r.note) if x)
            click.echo(f"{r.workspace}: {r.outcome}: {steps}"
                       + (f" [{', '.join(flags)}]" if flags else "")
                       + (f" ({extra})" if extra else ""))
    sys.exit(exit_code(reports))


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@fleet.command()
@click.option("--batch", default="10%", show_default=True, help="N workspaces, or P%")
@click.option("--max-failures", type=click.IntRange(min=1), default=1, show_default=True,
              help="stop after K failed updates")
@click.option("--skip-active", "skip_active", type=click.FloatRange(min=0),
              default=Options.skip_active_minutes, show_default=True,
              help="a workspace in use waits: terminal activity in the last MINUTES, or a "
              "kept session running (0: none waits)")
@click.option("--stopped-too", is_flag=True, help="update stopped workspaces now (they stay "
              "stopped); else they get the code at their next start")
@click.option("--plans", type=click.Path(exists=True, file_okay=False),
              help="the --save-plans dir of the reviewed preview: a workspace that changed "
              "since (or was not reviewed) is not updated")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--url", help="service URL (STACKSPACE_URL)")
@click.option("--token", help="admin token (STACKSPACE_TOKEN)")
@click.option("--json", "as_json", is_flag=True)
def rollout(batch: str, max_failures: int, skip_active: float, stopped_too: bool,
            plans: str | None, wait: bool, url: str | None, token: str | None,
            as_json: bool) -> None:
    """Roll the service's own component code out to every outdated workspace,
    through its operation queue, in batches (POST /api/v1/rollouts). Exit 0
    when every update succeeded; 1 when one failed or was refused."""
    from service.cli import Client
    from service.fleet import read_reviews

    client = Client(url, token)
    body: dict = {"batch": int(batch) if batch.isdigit() else batch,
                  "max_failures": max_failures, "skip_active_minutes": skip_active,
                  "stopped_too": stopped_too}
    if plans:
        body["reviews"] = read_reviews(Path(plans))
        if not body["reviews"]:
            fail(f"--plans: no reviews in {plans} (made by fleet preview --save-plans)")
    data = client.call("POST", "/rollouts", body)
    shown: dict[str, str] = {}
    while True:
        if not as_json:
            for item in data["items"]:
                line = f"{item['status']}" + (f" ({item['detail']})" if item["detail"] else "")
                if shown.get(item["workspace"]) != line:
                    shown[item["workspace"]] = line
                    click.echo(f"{item['workspace']}: {line}")
        if not wait or data["status"] != "running":
            break
        time.sleep(1)
        data = client.call("GET", f"/rollouts/{data['id']}")
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(f"rollout {data['id']}: {data['status']} "
                   + ", ".join(f"{n} {k}" for k, n in data["counts"].items() if n))
    bad = sum(data["counts"].get(k, 0) for k in ("failed", "refused", "stale"))
    sys.exit(1 if wait and (bad or data["status"] != "finished") else 0)
