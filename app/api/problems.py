"""Every error leaves as `application/problem+json` (RFC 9457): type, title, status, detail, errors."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, json, request
from werkzeug.exceptions import HTTPException

from ..errors import DomainError, Unauthenticated, ValidationFailed
from ..uow import as_conflict

log = logging.getLogger(__name__)
PROBLEM_TYPE_BASE = "https://contract-milestones.dev/problems/"


def problem(status: int, title: str, detail: str | None = None, *, errors: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + title.lower().replace(" ", "-"),
        "title": title,
        "status": status,
        "detail": detail or title,
        "instance": request.path if request else None,
    }
    if errors:
        body["errors"] = errors
    body.update({k: v for k, v in extra.items() if v is not None})
    request_id = getattr(g, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    response = Response(json.dumps(body), status=status, mimetype="application/problem+json")
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _from_domain(exc: DomainError) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="milestones"'} if isinstance(exc, Unauthenticated) else None
    errors = exc.errors if isinstance(exc, ValidationFailed) else None
    return problem(exc.status, exc.title, exc.detail, errors=errors, headers=headers, **exc.extra)


def _from_http(exc: HTTPException) -> Response:
    status = exc.code or 500
    errors = None
    detail = exc.description
    data = getattr(exc, "data", None) or {}
    messages = data.get("messages") if isinstance(data, dict) else None
    if messages:
        # webargs nests by location (json, query, headers): flatten for clients.
        errors = {}
        for location, fields in messages.items():
            if isinstance(fields, dict):
                errors.update(fields)
            else:
                errors[location] = fields
        detail = "the request does not match the schema; see errors"
    title = {400: "Bad request", 401: "Authentication required", 403: "Forbidden", 404: "Not found",
             405: "Method not allowed", 409: "Conflict", 413: "Payload too large",
             415: "Unsupported media type", 422: "Validation failed"}.get(status, exc.name)
    return problem(status, title, detail, errors=errors)


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(DomainError, _from_domain)
    app.register_error_handler(HTTPException, _from_http)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return _from_http(exc)
        conflict = as_conflict(exc)  # a lost race surfacing from an autoflush inside a service
        if conflict is not None:
            return _from_domain(conflict)
        log.exception("unhandled error")
        return problem(500, "Internal server error", "an unexpected error occurred; it has been logged")
