"""Bearer-token authentication for everything under /api/v1 except the OpenAPI document and docs."""

from __future__ import annotations

from flask import Flask, g, request

from ..errors import Unauthenticated
from ..models import User
from ..services import identity
from .context import read_uow

PUBLIC_PREFIXES = ("/api/v1/openapi.json", "/api/v1/docs", "/healthz", "/readyz")


def current_user() -> User:
    user = getattr(g, "user", None)
    if user is None:
        raise Unauthenticated("missing bearer token")
    return user


def register_auth(app: Flask) -> None:
    @app.before_request
    def _authenticate() -> None:
        g.user = None
        if not request.path.startswith("/api/") or request.path.startswith(PUBLIC_PREFIXES):
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("send 'Authorization: Bearer <token>'; `milestones users create` prints one")
        with read_uow(scoped=False) as uow:
            user = identity.authenticate(uow, token.strip())
            uow.s.expunge(user)
        g.user = user
