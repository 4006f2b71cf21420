"""Embedded mode: without REDIS_URL, `milestones serve` runs the workers' jobs in a thread.

Every gunicorn worker starts one `Scheduler` thread, but only the holder of the database lease
row `scheduler_leases.name = 'embedded'` works; the others wait to take over when the holder's
lease runs out (its process died). Each round runs the same services as the Celery tasks: fire
due timers, dispatch the outbox, make one attempt at each due delivery. Correctness does not
depend on the lease (every claim is atomic in the database); it keeps the work in one place.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.exc import IntegrityError

from .models import SchedulerLease, utcnow

log = logging.getLogger(__name__)

LEASE_NAME = "embedded"


@dataclass
class RoundResult:
    held: bool
    fired: list[int] = field(default_factory=list)
    dispatched: list[int] = field(default_factory=list)
    deliveries: dict[int, str] = field(default_factory=dict)


class Scheduler:
    """The embedded scheduler for one app state (settings, engine, session factory, deployments)."""

    def __init__(self, state: Any, *, interval: float | None = None, lease_seconds: float | None = None):
        from .channels import build_transports

        self.state = state
        settings = state.settings.notifications
        self.interval = interval if interval is not None else settings.scheduler_interval
        self.lease_seconds = lease_seconds if lease_seconds is not None else max(30.0, 10 * self.interval)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.transports = build_transports(settings, state.settings.instance_dir)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lease
    def hold_lease(self) -> bool:
        """Take or renew the lease; True when this scheduler holds it now."""
        now = utcnow()
        expires = now + timedelta(seconds=self.lease_seconds)
        with self.state.engine.begin() as conn:
            renewed = conn.execute(
                update(SchedulerLease)
                .where(SchedulerLease.name == LEASE_NAME,
                       (SchedulerLease.holder == self.holder) | (SchedulerLease.expires_at < now))
                .values(holder=self.holder, expires_at=expires)
            ).rowcount
        if renewed:
            return True
        try:
            with self.state.engine.begin() as conn:
                conn.execute(insert(SchedulerLease).values(name=LEASE_NAME, holder=self.holder, expires_at=expires,
                                                           acquired_at=now))
        except IntegrityError:
            return False  # someone else holds it
        log.info("embedded scheduler %s holds the lease", self.holder)
        return True

    def release_lease(self) -> None:
        with self.state.engine.begin() as conn:
            conn.execute(update(SchedulerLease).where(SchedulerLease.name == LEASE_NAME,
                                                      SchedulerLease.holder == self.holder)
                         .values(expires_at=utcnow()))

    # ------------------------------------------------------------------ one round
    def run_once(self) -> RoundResult:
        """One round if this scheduler holds the lease: timers, then the outbox."""
        from .services.delivery import pump
        from .services.timers import fire_due_timers

        if not self.hold_lease():
            return RoundResult(held=False)
        timers = fire_due_timers(self.state.session_factory, self.state.deployments)
        pumped = pump(self.state.session_factory, self.state.settings.notifications, self.transports)
        return RoundResult(True, timers.fired, pumped.dispatched, pumped.outcomes)

    # ------------------------------------------------------------------ thread
    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self._loop, name="milestones-scheduler", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            self.release_lease()
        except Exception:  # shutting down: the lease expires by itself
            log.debug("could not release the scheduler lease", exc_info=True)

    def _loop(self) -> None:
        log.info("embedded scheduler %s started (every %.1f s)", self.holder, self.interval)
        while not self._stop.is_set():
            try:
                result = self.run_once()
                if result.fired or result.dispatched or result.deliveries:
                    log.info("scheduler round: timers fired %s, outbox dispatched %s, deliveries %s",
                             result.fired, result.dispatched, result.deliveries)
            except Exception:  # a dropped connection, a full disk: log it, try again next round
                log.exception("embedded scheduler round failed")
            self._stop.wait(self.interval)


def start_embedded(app: Any) -> Scheduler:
    """Start the scheduler thread for a Flask app built by `create_app` (gunicorn's post_worker_init)."""
    scheduler = Scheduler(app.extensions["milestones"])
    scheduler.start()
    return scheduler
