"""RFC 9457 problem details: every error the API returns, with a stable type."""

from __future__ import annotations

from typing import Any

from flask import Response, json

BASE = "https://stackspace.dev/problems/"

TITLES = {
    "unauthorized": (401, "Missing or invalid bearer token"),
    "forbidden": (403, "Not allowed"),
    "not-found": (404, "Not found"),
    "validation": (422, "The request is not valid"),
    "conflict": (409, "Conflicts with the current state"),
    "storage-at-risk": (409, "The plan would delete or replace workspace storage"),
    "quota-exceeded": (403, "Workspace quota exceeded"),
    "bad-request": (400, "Bad request"),
    "method-not-allowed": (405, "Method not allowed"),
    "unsupported-media-type": (415, "Send application/json"),
    "too-large": (413, "Request body too large"),
    "timeout": (408, "The request did not arrive in time"),
    "internal": (500, "Internal error"),
    "proxy-unavailable": (503, "The exec proxy or the workspace is unavailable"),
    "unavailable": (503, "Service unavailable"),  # saturated: retry after Retry-After
}


class Problem(Exception):
    def __init__(self, kind: str, detail: str, errors: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None):
        self.kind = kind
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        super().__init__(detail)

    def response(self) -> Response:
        status, title = TITLES[self.kind]
        body: dict[str, Any] = {"type": BASE + self.kind, "title": title, "status": status,
                                "detail": self.detail}
        if self.errors:
            body["errors"] = [{"field": k, "message": v} for k, v in sorted(self.errors.items())]
        resp = Response(json.dumps(body), status=status, mimetype="application/problem+json")
        for k, v in self.headers.items():
            resp.headers[k] = v
        return resp
