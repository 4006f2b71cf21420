"""Celery, bound to the app's settings. Redis only rings the doorbell; the database is the truth.

Tasks take ids only and call one service each. `app.celery_app` is the module the Celery CLI
loads (`celery -A app.celery_app worker|beat`, or `milestones worker|beat`). Beat runs two
periodic jobs: firing due workflow timers, and a sweeper that re-rings every pending outbox row
and due delivery, so losing every message in Redis loses nothing. Retries of failed deliveries
wait in the database (`next_attempt_at`), never as far-future ETA messages.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy.exc import DBAPIError

from .config import Settings

log = logging.getLogger(__name__)

TIMER_PERIOD_SECONDS = 30.0
# A dropped database connection: the task's transaction changed nothing, so it runs again.
DB_RETRY = {"autoretry_for": (DBAPIError,), "retry_backoff": 1, "retry_backoff_max": 30, "retry_jitter": False,
            "max_retries": 8}


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    broker = settings.redis_url or "redis://127.0.0.1:6379/0"
    periods = settings.notifications
    celery = Celery("milestones", broker=broker, include=["app.worker"])
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Longer than the longest task, so an unacknowledged message is not redelivered mid-run.
        broker_transport_options={"visibility_timeout": 3600, "socket_connect_timeout": 3, "socket_timeout": 10},
        broker_connection_timeout=3,
        task_time_limit=300,
        task_soft_time_limit=240,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        beat_schedule={
            "fire-due-timers": {"task": "milestones.fire_due_timers",
                                "schedule": periods.timer_period or TIMER_PERIOD_SECONDS},
            "sweep-outbox": {"task": "milestones.sweep", "schedule": periods.sweep_period},
        },
    )
    return celery


class CeleryDoorbell:
    """Rings the workers after a commit: one message per id. A failure to ring is only logged:
    the sweeper finds the work in the database anyway. After a failure it stays silent for
    QUIET_SECONDS, so that requests do not wait on a broker that is down."""

    QUIET_SECONDS = 10.0

    def __init__(self, celery: Celery):
        self.celery = celery
        self._quiet_until = 0.0

    def ring(self, kind: str, ids: list[int]) -> None:
        for item in ids:
            if time.monotonic() < self._quiet_until:
                return
            try:
                self.celery.send_task(f"milestones.{kind}", args=[item], retry=False)
            except Exception as exc:  # Redis down: the sweeper re-rings from the database
                self._quiet_until = time.monotonic() + self.QUIET_SECONDS
                log.warning("could not ring %s(%s), quiet for %.0f s: %s: %s", kind, item, self.QUIET_SECONDS,
                            type(exc).__name__, exc)


def producer_doorbell(settings: Settings) -> CeleryDoorbell:
    """The doorbell of a process that only publishes (the API): with Redis down, a ring fails at
    once instead of retrying the connection for seconds inside a request."""
    celery = make_celery(settings)
    celery.conf.broker_transport_options = {**celery.conf.broker_transport_options, "max_retries": 0}
    return CeleryDoorbell(celery)


@dataclass
class WorkerContext:
    state: Any
    transports: dict[str, Any]
    doorbell: CeleryDoorbell


_context: WorkerContext | None = None


def _worker_context(celery: Celery) -> WorkerContext:
    # Built on first use inside the worker process (after a prefork fork), never at import.
    global _context
    if _context is None:
        from .channels import build_transports
        from .cli import _state as build_state

        state = build_state()
        _context = WorkerContext(state, build_transports(state.settings.notifications, state.settings.instance_dir),
                                 CeleryDoorbell(celery))
    return _context


def _register_tasks(celery: Celery) -> None:
    @celery.task(name="milestones.fire_due_timers", **DB_RETRY)
    def fire_due_timers_task() -> dict[str, list[int]]:
        from .services.timers import fire_due_timers

        ctx = _worker_context(celery)
        run = fire_due_timers(ctx.state.session_factory, ctx.state.deployments, doorbell=ctx.doorbell)
        return {"fired": run.fired, "conflicts": run.conflicts, "failed": run.failed}

    @celery.task(name="milestones.sweep", **DB_RETRY)
    def sweep_task() -> dict[str, int]:
        from .services.delivery import due_work

        ctx = _worker_context(celery)
        work = due_work(ctx.state.session_factory)
        ctx.doorbell.ring("dispatch_outbox", work.outbox_ids)
        ctx.doorbell.ring("deliver", work.delivery_ids)
        return {"outbox": len(work.outbox_ids), "deliveries": len(work.delivery_ids)}

    @celery.task(name="milestones.dispatch_outbox", **DB_RETRY)
    def dispatch_outbox_task(outbox_id: int) -> list[int]:
        from .services.delivery import dispatch_outbox

        ctx = _worker_context(celery)
        return dispatch_outbox(ctx.state.session_factory, ctx.state.settings.notifications, outbox_id,
                               doorbell=ctx.doorbell)

    @celery.task(name="milestones.deliver", **DB_RETRY)
    def deliver_task(delivery_id: int) -> str:
        from .services.delivery import deliver

        ctx = _worker_context(celery)
        return deliver(ctx.state.session_factory, ctx.state.settings.notifications, ctx.transports, delivery_id)


def build() -> Celery:
    celery = make_celery()
    _register_tasks(celery)
    return celery
