"""Bearer-token authentication for everything under /api/v1 except the OpenAPI document and docs.

A process remembers valid tokens for 30 seconds (`identity.TokenCache`), so most requests do not
read the database to authenticate; a revoked token stops working within those 30 seconds.
"""

from __future__ import annotations

from flask import Flask, g, request

from ..errors import Unauthenticated
from ..models import User
from ..services import identity
from .context import read_uow, state

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
        token_hash = identity.hash_token(token.strip())
        tokens = state().tokens
        user = tokens.user(token_hash)
        if user is None:  # not seen for TokenCache.ttl seconds: ask the database
            with read_uow(scoped=False) as uow:
                user = identity.authenticate(uow, token.strip())
                uow.s.expunge(user)
            tokens.put(token_hash, user)
        g.user = user
