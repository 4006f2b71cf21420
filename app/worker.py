"""Celery, bound to the app's settings. Redis only rings the doorbell; the database is the truth.

Tasks take ids only and call one service each. `app.celery_app` is the module the Celery CLI
loads (`celery -A app.celery_app worker|beat`, or `milestones worker|beat`).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from .config import Settings

TIMER_PERIOD_SECONDS = 30.0


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    broker = settings.redis_url or "redis://127.0.0.1:6379/0"
    celery = Celery("milestones", broker=broker, include=["app.worker"])
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Longer than the longest task, so an unacknowledged message is not redelivered mid-run.
        broker_transport_options={"visibility_timeout": 3600},
        task_time_limit=300,
        task_soft_time_limit=240,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        beat_schedule={
            "fire-due-timers": {"task": "milestones.fire_due_timers", "schedule": TIMER_PERIOD_SECONDS},
        },
    )
    return celery


_state: Any = None


def _app_state() -> Any:
    global _state
    if _state is None:
        from .cli import _state as build_state

        _state = build_state()
    return _state


def _register_tasks(celery: Celery) -> None:
    @celery.task(name="milestones.fire_due_timers")
    def fire_due_timers_task() -> dict[str, list[int]]:
        from .services.timers import fire_due_timers

        state = _app_state()
        run = fire_due_timers(state.session_factory, state.deployments)
        return {"fired": run.fired, "conflicts": run.conflicts, "failed": run.failed}


def build() -> Celery:
    celery = make_celery()
    _register_tasks(celery)
    return celery
