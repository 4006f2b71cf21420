"""Engine and session factory. SQLite gets WAL and a busy timeout so that threads wait, not fail.

PostgreSQL connections are not pinged at every checkout (a round trip per request): they are
replaced after POOL_RECYCLE_SECONDS, and a connection that the server closed (a restart) fails
the one statement that finds out, whereupon SQLAlchemy discards every pooled connection of that
age, so the next requests reconnect. /readyz retries once on such a failure (app.api.health).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

POOL_RECYCLE_SECONDS = 1800


def make_engine(url: str, echo: bool = False) -> Engine:
    kwargs: dict[str, Any] = {"echo": echo, "future": True}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    else:
        # pre_ping costs one round trip per checkout, but a connection killed by a database
        # restart or failover is replaced instead of failing a user's request with a 500.
        kwargs.update(pool_size=10, max_overflow=20, pool_recycle=POOL_RECYCLE_SECONDS, pool_pre_ping=True)
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(READ_ONLY):
            # Readers take a WAL snapshot and never block writers (a slow CSV export included).
            conn.exec_driver_sql("BEGIN")
            return
        # IMMEDIATE takes the write lock up front: two writers queue instead of deadlocking
        # when both read and then try to upgrade (SQLITE_BUSY that busy_timeout cannot wait out).
        conn.exec_driver_sql("BEGIN IMMEDIATE")


READ_ONLY = "milestones_read_only"


def make_session_factory(engine: Engine, *, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions for commands, or (read_only) for queries that must not take SQLite's write lock."""
    bind = engine.execution_options(**{READ_ONLY: True}) if read_only else engine
    return sessionmaker(bind=bind, expire_on_commit=False, autoflush=True)
