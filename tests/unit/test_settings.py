"""Settings come from the environment and reach the parts of the process they configure."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import build_state
from app.config import Settings, normalize_database_url
from workflows import sandbox


def test_script_limits_from_the_environment_configure_the_sandbox(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("MILESTONES_SCRIPT_TIME_SECONDS", "0.75")
    monkeypatch.setenv("MILESTONES_SCRIPT_MEMORY_MB", "96")
    settings = Settings.from_env(database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    assert (settings.script_time_seconds, settings.script_memory_mb) == (0.75, 96)
    previous = sandbox.limits()
    try:
        state = build_state(settings)
        assert sandbox.limits() == sandbox.Limits(time_seconds=0.75, memory_bytes=96 * 1024 * 1024)
        state.engine.dispose()
    finally:
        sandbox.configure(time_seconds=previous.time_seconds, memory_bytes=previous.memory_bytes)


def test_database_url_defaults_to_sqlite_in_the_instance_folder(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("MILESTONES_INSTANCE_DIR", str(tmp_path))
    assert Settings.from_env().database_url == f"sqlite:///{tmp_path / 'milestones.sqlite3'}"
    assert normalize_database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
