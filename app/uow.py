"""Unit of work: one database transaction per command.

Services receive a UnitOfWork, do their work and call `commit()` once; leaving the `with`
block without a commit rolls everything back. Optimistic-lock and uniqueness failures at
commit become `Conflict`, so a lost race is a 409 for a caller, or a retry for a worker.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from .errors import Conflict


class UnitOfWork:
    def __init__(self, session_factory: sessionmaker[Session], *, actor_id: int | None = None,
                 request_id: str | None = None):
        self._factory = session_factory
        self.actor_id = actor_id
        self.request_id = request_id
        self.session: Session | None = None
        # When set (idempotent HTTP requests), commit() only flushes and the request layer makes
        # the real commit after it has stored the response in the same transaction.
        self.defer_commit = False
        self.committed = False
        # Request-scoped units stay open until the response is serialized; teardown closes them.
        self.close_on_exit = True
        self._after_commit: list[Any] = []
        # Rings the workers (Celery) after a commit that left work in the outbox; None: the
        # periodic sweeper or the embedded scheduler finds it (the database is the truth).
        self.doorbell: Any = None

    def __enter__(self) -> UnitOfWork:
        if self.session is None:
            self.session = self._factory()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None and self.session is not None:
            self.session.rollback()
        if self.close_on_exit:
            self.close()

    @property
    def s(self) -> Session:
        if self.session is None:
            self.session = self._factory()
        return self.session

    def after_commit(self, callback: Any) -> None:
        """Run `callback()` once the transaction has really committed (e.g. ring a doorbell)."""
        self._after_commit.append(callback)

    def flush(self) -> None:
        try:
            self.s.flush()
        except (StaleDataError, IntegrityError, OperationalError) as exc:
            conflict = as_conflict(exc)
            if conflict is None:
                raise
            raise conflict from exc

    def commit(self) -> None:
        if self.defer_commit:
            self.flush()
            self.committed = True
            return
        self.commit_now()

    def commit_now(self) -> None:
        try:
            self.s.commit()
        except (StaleDataError, IntegrityError, OperationalError) as exc:
            self.s.rollback()
            conflict = as_conflict(exc)
            if conflict is None:
                raise
            raise conflict from exc
        self.committed = True
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    def insert_unless_exists(self, model: Any, values: dict[str, Any], returning: Any) -> Any:
        """INSERT one row unless a unique key already holds it (ON CONFLICT DO NOTHING): one statement,
        so racing writers are decided by the database, nothing is read first, and pending ORM changes
        are not flushed for it. Returns `returning` of the new row, None when it existed."""
        dialect = self.s.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = insert(model).values(**values).on_conflict_do_nothing().returning(returning)
        return self.s.execute(statement, execution_options={"autoflush": False}).scalar()

    def rollback(self) -> None:
        if self.session is not None:
            self.session.rollback()

    def fresh(self) -> UnitOfWork:
        """A separate transaction for the same actor and request (e.g. to record an incident after a rollback)."""
        fresh = UnitOfWork(self._factory, actor_id=self.actor_id, request_id=self.request_id)
        fresh.doorbell = self.doorbell
        return fresh

    def close(self) -> None:
        if self.session is not None:
            self.session.rollback()
            self.session.close()
            self.session = None


def as_conflict(exc: BaseException) -> Conflict | None:
    """The Conflict a lost race amounts to, or None when `exc` is not a lost race."""
    if isinstance(exc, Conflict):
        return exc
    if isinstance(exc, StaleDataError):
        return Conflict("the record was changed by someone else; reload and retry")
    if isinstance(exc, IntegrityError):
        return Conflict(f"conflicting write: {_short(exc)}")
    if isinstance(exc, OperationalError) and "locked" in str(exc).lower():
        return Conflict("the database is busy with a conflicting write; retry")
    return None


def _short(exc: Exception) -> str:
    return str(getattr(exc, "orig", exc)).splitlines()[0][:200]
