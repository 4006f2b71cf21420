"""Shared fixtures: the app on SQLite and on a real PostgreSQL (a private schema per test run).

PostgreSQL and Redis are required when CI=true: a test that needs one fails (never skips)
when it is missing there. Elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import gc
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from app import create_app, migrate
from app.config import Settings
from app.models import Base
from app.services import identity
from app.services.runtime import deploy_directories
from app.uow import UnitOfWork

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def require_service(name: str, error: BaseException) -> None:
    message = f"{name} is not reachable: {type(error).__name__}: {error}"
    if IN_CI:
        pytest.fail(message + " (CI=true: services are mandatory)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_schema_url() -> Iterator[str]:
    """A fresh schema in the `test` database, migrated; dropped at the end of the run."""
    schema = f"t_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        admin.dispose()
        require_service("PostgreSQL", exc)
    # application_name marks this run's connections, so a leaked one cannot block the final drop.
    url = f"{PG_URL}?options=-csearch_path%3D{schema}&application_name={schema}"
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE application_name = :name AND pid <> pg_backend_pid()"), {"name": schema})
            conn.execute(text("SET LOCAL lock_timeout = '30s'"))
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"


_migrated: set[str] = set()


def _reset(app: Any) -> None:
    state = app.extensions["milestones"]
    engine = state.engine
    if engine.url.render_as_string(hide_password=False) not in _migrated:
        migrate.upgrade(engine)
        _migrated.add(engine.url.render_as_string(hide_password=False))
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(text(f'DELETE FROM "{table}"'))
    with UnitOfWork(state.session_factory) as uow:
        deploy_directories(uow, state.deployments, state.settings.bpmn_dirs)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture
def app(db_url: str, tmp_path: Path) -> Iterator[Any]:
    app = create_app(Settings.from_env(database_url=db_url, instance_dir=tmp_path / "instance"))
    app.config["TESTING"] = True
    _reset(app)
    yield app
    # Responses a test left unread still hold their request's session: collect them so their
    # connections go back to the pool before it is closed.
    gc.collect()
    app.extensions["milestones"].engine.dispose()


@dataclass
class Api:
    """A thin HTTP client for tests: one user's token, JSON in and out."""

    client: Any
    token: str | None
    username: str

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        headers.update(extra or {})
        return headers

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get("/api/v1" + path, headers=self._headers(kw.pop("headers", None)), **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.client.post("/api/v1" + path, json=json, headers=self._headers(kw.pop("headers", None)), **kw)

    def patch(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.client.patch("/api/v1" + path, json=json, headers=self._headers(kw.pop("headers", None)), **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.client.delete("/api/v1" + path, headers=self._headers(kw.pop("headers", None)), **kw)


@pytest.fixture
def make_user(app: Any) -> Any:
    def make(username: str, *groups: str) -> Api:
        with UnitOfWork(app.extensions["milestones"].session_factory) as uow:
            user = identity.create_user(uow, username, list(groups))
            token = identity.issue_token(uow, user, name="test")
            uow.commit()
        return Api(app.test_client(), token, username)

    return make


@pytest.fixture
def people(make_user: Any) -> dict[str, Api]:
    """alice submits; bob and carol approve finance; dave approves non-financial; eve is nobody."""
    return {
        "alice": make_user("alice", "contract-managers"),
        "bob": make_user("bob", "finance", "finance-managers"),
        "carol": make_user("carol", "finance-managers", "executive-board"),
        "dave": make_user("dave", "project-managers"),
        "eve": make_user("eve"),
    }


@pytest.fixture
def contract(people: dict[str, Api]) -> dict[str, Any]:
    alice = people["alice"]
    account = alice.post("/accounts", {"name": "Acme"})
    assert account.status_code == 201, account.get_json()
    contract = alice.post("/contracts", {"account_id": account.get_json()["id"], "number": "C-1",
                                         "title": "Tower", "currency": "EUR", "value": "5000000.00"})
    assert contract.status_code == 201, contract.get_json()
    return contract.get_json()


@pytest.fixture
def new_milestone(people: dict[str, Api], contract: dict[str, Any]) -> Any:
    counter = iter(range(1, 10_000))

    def create(type: str = "financial", amount: str | None = "50000.00", activate: bool = True,
               **extra: Any) -> dict[str, Any]:
        """A milestone made through the API; activated (ready to submit) unless activate=False."""
        body = {"contract_id": contract["id"], "code": f"M{next(counter)}", "type": type, **extra}
        if amount is not None:
            body["amount"] = amount
        response = people["alice"].post("/milestones", body)
        assert response.status_code == 201, response.get_json()
        if not activate:
            return response.get_json()
        activated = people["alice"].post(f"/milestones/{response.get_json()['id']}/activation")
        assert activated.status_code == 200, activated.get_json()
        return activated.get_json()

    return create


@pytest.fixture
def server(app: Any) -> Iterator[str]:
    """The app on a real threaded HTTP server (loopback); yields the API's base URL."""
    from werkzeug.serving import make_server

    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/api/v1"
    finally:
        httpd.shutdown()
        thread.join(5)


def race(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls at the same moment, each in its own thread; an exception is returned as the result."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # surfaced by the callers' assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results
