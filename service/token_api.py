"""`/api/v1/tokens` (SPEC §4): list, mint and revoke API tokens.

Everyone sees and revokes their own tokens; admins everyone's (`?owner=` to
narrow a list) and may mint for another user (created if new). Another
user's token answers 404, like a missing one. A token's value is in the
answer to the POST that minted it and nowhere else.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, g, request

from service import tokens
from service.durations import MAX_SECONDS
from service.problems import Problem
from service.replays import Replays
from service.store import Store
from stacks.naming import validate_owner

FIELDS = ("owner", "name", "expires_in", "expires_at")
MAX_NAME = 100


@dataclass(frozen=True)
class MintRequest:
    owner: str | None
    name: str | None
    expires_at: float | None


def parse_mint_request(data: Any, now: float) -> MintRequest:
    """Validate a POST body: a Problem("validation") naming each bad field."""
    if not isinstance(data, dict):
        raise Problem("validation", "the token request is not valid",
                      {"body": "must be a JSON object"})
    errors = {k: "unknown field" for k in data if k not in FIELDS}
    owner, name = data.get("owner"), data.get("name")
    if owner is not None:
        try:
            validate_owner(owner)
        except ValueError as e:
            errors["owner"] = str(e)
    if name is not None and not (isinstance(name, str) and 0 < len(name) <= MAX_NAME):
        errors["name"] = f"must be a string of 1 to {MAX_NAME} characters"
    expires_at = None
    if "expires_in" in data:
        value = data["expires_in"]
        if isinstance(value, bool) or not isinstance(value, int) \
                or not 0 < value <= MAX_SECONDS:
            errors["expires_in"] = "must be a whole number of seconds, 1 to ten years"
        else:
            expires_at = now + value
    if "expires_at" in data:
        value = data["expires_at"]
        if "expires_in" in data:
            errors["expires_at"] = "give expires_in or expires_at, not both"
        elif isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or not now < value <= now + MAX_SECONDS:
            errors["expires_at"] = ("must be a unix time (seconds) in the future, "
                                    "at most ten years ahead")
        else:
            expires_at = float(value)
    if errors:
        raise Problem("validation", "the token request is not valid", errors)
    return MintRequest(owner, name, expires_at)


def register(app: Flask, store: Store, authed: Callable[..., Any], prefix: str,
             replays: Replays) -> None:
    def answer(data: Any, status: int = 200) -> Response:
        return app.response_class(json.dumps(data), status=status, mimetype="application/json")

    @app.before_request
    def _no_queue() -> None:
        # `queue` (accepted by the app for operations) means nothing here.
        if request.path.startswith(f"{prefix}/tokens") and "queue" in request.args \
                and request.routing_exception is None:  # else its 404/405
            raise Problem("bad-request", "unknown query parameter(s): queue")

    @app.get(f"{prefix}/tokens")
    @authed
    def list_tokens() -> Response:
        owner = (request.args.get("owner") or None) if g.user.admin else g.user.name
        return answer({"items": [t.view() for t in tokens.tokens(store, owner)]})

    @app.post(f"{prefix}/tokens")
    @authed
    def mint_token() -> Response:
        if not request.is_json:
            raise Problem("unsupported-media-type", "send a JSON body (application/json)")
        data = request.get_json(silent=True)
        if data is None:
            raise Problem("bad-request", "the body is not valid JSON")
        req = parse_mint_request(data, time.time())
        owner = req.owner or g.user.name
        if owner != g.user.name and not g.user.admin:
            raise Problem("forbidden", "only admins mint tokens for other users")

        def mint() -> tuple[int, dict[str, Any]]:
            value, info = tokens.mint(store, owner, name=req.name, expires_at=req.expires_at)
            return 201, {**info.view(), "token": value}

        status, minted = replays.answer(g.user.name, f"POST {request.path}",
                                        request.headers.get("Idempotency-Key"), data, mint)
        return answer(minted, status)

    @app.delete(f"{prefix}/tokens/<token_id>")
    @authed
    def revoke_token(token_id: str) -> Response:
        if not tokens.revoke(store, token_id, None if g.user.admin else g.user.name):
            raise Problem("not-found", "no such token")
        return Response(status=204)


def _schema(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


_TOKEN = {"type": "object", "required": ["id", "owner", "admin", "created"], "properties": {
    "id": {"type": "string"}, "owner": {"type": "string"},
    "name": {"type": ["string", "null"]}, "admin": {"type": "boolean"},
    "created": {"type": "number"}, "expires_at": {"type": ["number", "null"]}}}
SCHEMAS: dict[str, Any] = {
    "TokenRequest": {"type": "object", "additionalProperties": False, "properties": {
        "owner": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$",
                  "description": "admins: mint for this user (created if new)"},
        "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
        "expires_in": {"type": "integer", "minimum": 1, "maximum": MAX_SECONDS,
                       "description": "seconds from now (or expires_at, not both)"},
        "expires_at": {"type": "number", "description": "unix time (s)"}}},
    "Token": _TOKEN,
    "NewToken": {**_TOKEN, "required": [*_TOKEN["required"], "token"], "properties": {
        **_TOKEN["properties"],
        "token": {"type": "string", "description": "the value: shown this once"}}},
    "TokenList": {"type": "object", "required": ["items"], "properties": {
        "items": {"type": "array", "items": _schema("Token")}}},
}


def paths(op: Callable[..., dict[str, Any]], problem: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI paths of this module, built with service.openapi's helper."""
    mint = op("Mint a token (the value is shown once)", "201", "NewToken", "TokenRequest",
              idempotent=True)
    return {
        "/api/v1/tokens": {
            "get": op("List tokens (own; admin: all, ?owner=)", "200", "TokenList"),
            "post": {**mint, "responses": {**mint["responses"], "403": problem}},
        },
        "/api/v1/tokens/{token_id}": {
            "delete": {**(revoke := op("Revoke a token", "204", params=["token_id"])),
                       "responses": {**revoke["responses"],
                                     "204": {"description": "revoked"}}}},
    }
