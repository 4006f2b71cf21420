"""Per-request access to the unit of work and the deployment cache (kept on the app, not globals)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, g, request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from ..config import Settings
from ..services.identity import TokenCache
from ..services.runtime import DeploymentCache
from ..uow import UnitOfWork


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    deployments: DeploymentCache
    read_session_factory: sessionmaker[Session] | None = None
    tokens: TokenCache = field(default_factory=TokenCache)
    # Rings Celery after a commit that queued work (None in embedded mode: the scheduler polls).
    doorbell: Any = None


def state(app: Flask | None = None) -> AppState:
    return (app or current_app).extensions["milestones"]


def command_uow() -> UnitOfWork:
    """The request's unit of work for a command (at most one per request)."""
    uow = getattr(g, "uow", None)
    if uow is None:
        user = getattr(g, "user", None)
        uow = UnitOfWork(state().session_factory, actor_id=user.id if user else None, request_id=g.request_id)
        uow.defer_commit = bool(getattr(g, "idempotency_key", None))
        uow.doorbell = state().doorbell
        uow.close_on_exit = False
        g.uow = uow
    return uow


def read_uow(*, scoped: bool = True) -> UnitOfWork:
    """A unit of work for reads; request-scoped ones stay open until the response is written."""
    app_state = state()
    uow = UnitOfWork(app_state.read_session_factory or app_state.session_factory,
                     request_id=getattr(g, "request_id", None))
    if scoped:
        uow.close_on_exit = False
        g.setdefault("read_uows", []).append(uow)
    return uow


def deployments() -> DeploymentCache:
    return state().deployments


def register_request_context(app: Flask) -> None:
    @app.before_request
    def _request_id() -> None:
        g.request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex

    @app.after_request
    def _echo_request_id(response):  # type: ignore[no-untyped-def]
        response.headers["X-Request-ID"] = g.get("request_id", "")
        return response

    @app.teardown_request
    def _close_uow(_exc: BaseException | None) -> None:
        for uow in [g.pop("uow", None), *g.pop("read_uows", [])]:
            if uow is not None:
                uow.close()
