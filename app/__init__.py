"""Contract Milestones: the Flask application factory."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from .config import Settings


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the app: settings, database, deployments, API. Nothing happens at import time."""
    settings = settings or Settings.from_env(**overrides)
    app = Flask(__name__, instance_path=str(settings.instance_dir.resolve()))
    app.config["MAX_CONTENT_LENGTH"] = 10 * 1024 * 1024
    init_state(app, settings)
    from .api import register_api

    register_api(app)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SpiffWorkflow logs every task state change at INFO: far too much for a service log.
    logging.getLogger("spiff").setLevel(logging.WARNING)
    return app


def init_state(app: Flask, settings: Settings) -> None:
    app.extensions["milestones"] = build_state(settings)


def build_state(settings: Settings) -> Any:
    """Engine, session factories, deployment cache and engine limits for one process."""
    from workflows import sandbox

    from .api.context import AppState
    from .db import make_engine, make_session_factory
    from .services.runtime import DeploymentCache

    sandbox.configure(time_seconds=settings.script_time_seconds,
                      memory_bytes=settings.script_memory_mb * 1024 * 1024)
    engine = make_engine(settings.database_url, echo=settings.sql_echo)
    return AppState(
        settings=settings, engine=engine, session_factory=make_session_factory(engine),
        deployments=DeploymentCache(), read_session_factory=make_session_factory(engine, read_only=True),
        doorbell=make_doorbell(settings),
    )


def make_doorbell(settings: Settings) -> Any:
    """With REDIS_URL, commits that queue work ring the Celery workers; without, nothing rings."""
    if not settings.redis_url:
        return None
    from .worker import producer_doorbell

    return producer_doorbell(settings)
