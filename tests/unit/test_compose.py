"""docker-compose.yml cannot be run here (no Docker engine), so it is checked by parsing it."""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path

import yaml

from app.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_five_services_and_they_depend_on_healthy_stores():
    services = _compose()["services"]
    assert set(services) == {"api", "worker", "beat", "postgres", "redis"}
    for name in ("api", "worker", "beat"):
        service = services[name]
        assert service["build"] == "."
        assert service["environment"]["DATABASE_URL"].startswith("postgresql+psycopg://")
        assert service["environment"]["REDIS_URL"].startswith("redis://redis:6379")
        assert service["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                         "redis": {"condition": "service_healthy"}}
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]
    assert (ROOT / "Dockerfile").is_file()


def test_api_runs_gunicorn_on_the_app_factory_after_migrating():
    command = _compose()["services"]["api"]["command"]
    assert "milestones db upgrade" in command and "milestones deploy" in command
    gunicorn = command[command.index("gunicorn"):].rstrip('"')
    args = shlex.split(gunicorn)
    target = args[-1]
    module, _, call = target.partition(":")
    assert call == "create_app()"
    assert callable(importlib.import_module(module).create_app)
    # the milestones subcommands the api command uses exist
    assert {"db", "deploy"} <= set(cli_main.commands)
    assert "upgrade" in cli_main.commands["db"].commands


def test_worker_and_beat_run_celery_on_a_real_module():
    services = _compose()["services"]
    for name, sub in (("worker", "worker"), ("beat", "beat")):
        args = shlex.split(services[name]["command"])
        assert args[:2] == ["celery", "-A"] and args[3] == sub
        module = importlib.import_module(args[2])
        celery = module.celery
        assert "milestones.fire_due_timers" in celery.tasks
        assert celery.conf.task_acks_late and celery.conf.worker_prefetch_multiplier == 1
    beat_schedule = importlib.import_module("app.celery_app").celery.conf.beat_schedule
    assert beat_schedule["fire-due-timers"]["task"] == "milestones.fire_due_timers"
