"""`Idempotency-Key` on POST: a replay returns the first successful answer and changes nothing.

The answer is stored in the same transaction as the command's effects (the command's unit of
work defers its commit until the response exists), so a crash can never leave effects without
their key or a key without its effects. Two concurrent requests with one key: the loser's
transaction fails on the unique key, is rolled back whole, and it answers with the winner's
stored response. Only successful answers are stored: after an error, nothing changed, so a
retry runs the command again.
"""

from __future__ import annotations

import hashlib

from flask import Flask, Response, g, request
from sqlalchemy import select

from ..errors import Conflict
from ..models import IdempotencyRecord
from ..uow import UnitOfWork
from .context import read_uow, state
from .problems import problem

HEADER = "Idempotency-Key"
MAX_KEY = 255


def _fingerprint() -> str:
    digest = hashlib.sha256()
    digest.update(request.method.encode())
    digest.update(b"\0" + request.full_path.encode() + b"\0")
    digest.update(request.get_data(cache=True))
    return digest.hexdigest()


def _stored(user_id: int, key: str) -> IdempotencyRecord | None:
    with read_uow(scoped=False) as uow:
        record = uow.s.scalar(select(IdempotencyRecord).where(IdempotencyRecord.user_id == user_id,
                                                              IdempotencyRecord.key == key))
        if record is not None:
            uow.s.expunge(record)
        return record


def _replay(record: IdempotencyRecord) -> Response:
    response = Response(record.response_body, status=record.status_code,
                        mimetype=record.response_headers.get("Content-Type", "application/json"))
    for name in ("Location", "ETag"):
        if record.response_headers.get(name):
            response.headers[name] = record.response_headers[name]
    response.headers["Idempotent-Replayed"] = "true"
    return response


def _mismatch() -> Response:
    return problem(422, "Idempotency key reused",
                   f"the {HEADER} was already used for a different request; use a new key per request")


def register_idempotency(app: Flask) -> None:
    @app.before_request
    def _check_key() -> Response | None:
        g.idempotency_key = None
        key = request.headers.get(HEADER)
        if request.method != "POST" or key is None or getattr(g, "user", None) is None:
            return None
        if not key.strip() or len(key) > MAX_KEY:
            return problem(400, "Bad request", f"{HEADER} must be 1 to {MAX_KEY} characters",
                           errors={HEADER: ["invalid length"]})
        g.idempotency_fp = _fingerprint()
        record = _stored(g.user.id, key)
        if record is not None:
            return _replay(record) if record.fingerprint == g.idempotency_fp else _mismatch()
        g.idempotency_key = key
        return None

    @app.after_request
    def _store_answer(response: Response) -> Response:
        key = getattr(g, "idempotency_key", None)
        if not key:
            return response
        g.idempotency_key = None
        uow = g.pop("uow", None)
        if not (200 <= response.status_code < 300):
            if uow is not None:
                uow.close()
            winner = _stored(g.user.id, key)
            return _replay(winner) if winner is not None and winner.fingerprint == g.idempotency_fp else response
        if uow is None:
            uow = UnitOfWork(state().session_factory)
        with uow:
            uow.s.add(IdempotencyRecord(
                user_id=g.user.id, key=key, method=request.method, path=request.full_path[:500],
                fingerprint=g.idempotency_fp, status_code=response.status_code, response_body=response.get_data(),
                response_headers={k: v for k, v in response.headers.items()
                                  if k in ("Content-Type", "Location", "ETag")},
            ))
            try:
                uow.defer_commit = False
                uow.commit_now()
            except Conflict:
                winner = _stored(g.user.id, key)
                if winner is None:
                    return problem(409, "Conflict", "a concurrent request changed the same records; retry")
                return _replay(winner) if winner.fingerprint == g.idempotency_fp else _mismatch()
            finally:
                uow.close()
        return response
