"""The fleet's side of the HTTP API (SPEC §6, §10): which component code each
workspace runs, against the service's own."""

from __future__ import annotations

from typing import Any

from flask import Flask

from stacks import code_version


def code_state(outputs: dict[str, Any]) -> dict[str, Any]:
    """`code_version` (what the workspace's last run applied) and `outdated`."""
    recorded = outputs.get(code_version.OUTPUT) if isinstance(outputs, dict) else None
    recorded = recorded if isinstance(recorded, str) else None
    return {"code_version": recorded,
            "outdated": code_version.outdated(recorded, code_version.current())}


def register_fleet(app: Flask, store: Any, runner: Any) -> None:
    """Fleet routes on the service's app. The service's own code version is
    computed here, once, at start."""
    code_version.current()
