"""Liveness and readiness (database and, when configured, Redis)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from .context import state

health_blp = Blueprint("health", __name__)


@health_blp.get("/healthz")
def healthz() -> Any:
    return jsonify(status="ok")


def _ping_database() -> None:
    """SELECT 1; once more on a fresh connection if a pooled one turned out to be dead (the pool
    does not ping at checkout), so that a database restart is not reported as unreadiness."""
    for attempt in (1, 2):
        try:
            with state().engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise


@health_blp.get("/readyz")
def readyz() -> Any:
    checks: dict[str, str] = {}
    ok = True
    try:
        _ping_database()
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports, it does not raise
        ok = False
        checks["database"] = f"error: {type(exc).__name__}"
    redis_url = state().settings.redis_url
    if redis_url:
        try:
            import redis

            client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
            client.ping()
            client.close()
            checks["redis"] = "ok"
        except Exception as exc:
            ok = False
            checks["redis"] = f"error: {type(exc).__name__}"
    else:
        checks["redis"] = "not configured"
    response = jsonify(status="ok" if ok else "unavailable", checks=checks)
    response.status_code = 200 if ok else 503
    return response
