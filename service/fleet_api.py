"""The fleet's side of the HTTP API (SPEC §6, §10): which component code each
workspace runs against the service's own, and rollouts of the service's code
(admin only)."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

from flask import Flask, Response, g, request

from service.notify import ROLLOUTS, feed_for
from service.problems import Problem
from service.replays import Replays
from service.rollout_plan import OptionsError, parse_options, parse_reviews
from service.rollouts import Rollouts
from service.streams import StreamGate, event, follow, open_stream
from stacks import code_version

PREFIX = "/api/v1"


def code_state(outputs: dict[str, Any]) -> dict[str, Any]:
    """`code_version` (what the workspace's last run applied) and `outdated`."""
    recorded = outputs.get(code_version.OUTPUT) if isinstance(outputs, dict) else None
    recorded = recorded if isinstance(recorded, str) else None
    return {"code_version": recorded,
            "outdated": code_version.outdated(recorded, code_version.current())}


def register_fleet(app: Flask, store: Any, runner: Any,
                   authed: Callable[[Callable[..., Any]], Callable[..., Any]],
                   streams: StreamGate, replays: Replays) -> Rollouts:
    """Rollout routes on the service's app. The service's own code version is
    computed here, once, at start; rollouts a restart interrupted resume."""
    code_version.current()
    rollouts = Rollouts(store, runner)
    if rollouts.running():
        rollouts.wake()

    def admin() -> None:
        if not g.user.admin:
            raise Problem("not-found", "no such endpoint")  # as for any other user's object

    def found(rid: str) -> dict[str, Any]:
        admin()
        rollout = rollouts.get(rid)
        if rollout is None:
            raise Problem("not-found", "no such rollout")
        return rollout

    def answer(data: dict[str, Any], status: int = 200) -> Response:
        resp = app.response_class(json.dumps(data), status=status, mimetype="application/json")
        if status == 201:
            resp.headers["Location"] = f"{PREFIX}/rollouts/{data['id']}"
        return resp

    @app.post(f"{PREFIX}/rollouts")
    @authed
    def create_rollout() -> Response:
        admin()
        data = request.get_json(silent=True) if request.content_length else {}
        if data is None:
            raise Problem("bad-request", "the body is not valid JSON")
        try:
            options = parse_options(data)
        except OptionsError as e:
            raise Problem("validation", "the rollout options are not valid", e.errors) from e
        reviews = parse_reviews(data.get("reviews"))
        status, created = replays.answer(
            g.user.name, f"POST {request.path}", request.headers.get("Idempotency-Key"), data,
            lambda: (201, rollouts.create(options, reviews)))
        return answer(created, status)

    @app.get(f"{PREFIX}/rollouts/<rid>")
    @authed
    def get_rollout(rid: str) -> Response:
        return answer(found(rid))

    @app.post(f"{PREFIX}/rollouts/<rid>/cancel")
    @authed
    def cancel_rollout(rid: str) -> Response:
        rollout = found(rid)
        if not rollouts.cancel(rid):
            raise Problem("conflict", f"rollout is already {rollout['status']}")
        return answer(rollouts.get(rid) or rollout)

    @app.get(f"{PREFIX}/rollouts/<rid>/events")
    @authed
    def rollout_events(rid: str) -> Response:
        """Server-Sent Events: `item` when a workspace's item changes, `end`
        with the rollout once it is over."""
        found(rid)
        return open_stream(streams, lambda gone: follow(
            feed_for(store), ROLLOUTS, streams.stopping, partial(changes, rid, {}), gone=gone))

    def changes(rid: str, seen: dict[str, tuple[str, str | None]]) -> tuple[list[str], bool]:
        """The rollout's items changed since `seen` (updated), and whether it is over."""
        rollout = rollouts.get(rid)
        if rollout is None:
            return [], True
        out = []
        for item in rollout["items"]:
            now = (item["status"], item["detail"])
            if seen.get(item["workspace"]) != now:
                seen[item["workspace"]] = now
                out.append(event("item", json.dumps(item)))
        if rollout["status"] != "running":
            out.append(event("end", json.dumps(rollout)))
            return out, True
        return out, False

    return rollouts
