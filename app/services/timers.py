"""Firing BPMN timers whose time has come. The database row's `next_timer_at` is the schedule."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ..errors import Conflict, DomainError, WorkflowIncident
from ..models import WorkflowInstance, utcnow
from ..uow import UnitOfWork
from . import audit
from .incidents import incident_on_failure, refuse_if_in_incident
from .out_of_office import switch_due_periods
from .runtime import DeploymentCache, load_instance

log = logging.getLogger(__name__)


@dataclass
class TimerRun:
    fired: list[int] = field(default_factory=list)
    conflicts: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    periods: list[int] = field(default_factory=list)  # out-of-office periods started or ended


def fire_due_timers(session_factory: sessionmaker[Session], cache: DeploymentCache, *,
                    now: datetime | None = None, limit: int = 100, doorbell: Any = None) -> TimerRun:
    """Advance every running instance whose next timer is due, one transaction per instance.

    Each transaction claims one due row (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite's single
    writer serializes) and keeps the lock while the instance advances and saves, so schedulers
    running at once (two beats, a beat and an embedded scheduler) fire every timer once: a
    claimed row is skipped by the others, and once saved its next timer is no longer due. The
    versioned save still turns a concurrent user action into a Conflict for one of the two.

    Database errors (a dropped connection) propagate for the caller to retry; the transaction
    that hit them changed nothing.
    """
    run = TimerRun()
    # Out-of-office periods whose start or end has come switch first, so that a reminder fired
    # in this run already reaches the substitute.
    with UnitOfWork(session_factory) as uow:
        switched = switch_due_periods(uow)
        run.periods = switched["started"] + switched["ended"]
    tried: set[int] = set()
    while len(tried) < limit:
        with UnitOfWork(session_factory) as uow:
            uow.doorbell = doorbell
            moment = now or utcnow()
            row = uow.s.scalar(
                select(WorkflowInstance)
                .where(WorkflowInstance.status == "running", WorkflowInstance.next_timer_at <= moment,
                       WorkflowInstance.id.not_in(tried or {0}))
                .order_by(WorkflowInstance.next_timer_at, WorkflowInstance.id).limit(1)
                .with_for_update(skip_locked=True)
            )
            if row is None:
                break
            instance_id = row.id
            tried.add(instance_id)
            try:
                advance_timers(uow, cache, instance_id)
                run.fired.append(instance_id)
            except WorkflowIncident as exc:
                log.error("timers of instance %s: %s", instance_id, exc.detail)
                run.failed.append(instance_id)
            except Conflict:
                run.conflicts.append(instance_id)
            except DomainError as exc:
                log.error("timers of instance %s failed: %s", instance_id, exc.detail)
                run.failed.append(instance_id)
    return run


def advance_timers(uow: UnitOfWork, cache: DeploymentCache, instance_id: int) -> None:
    """Fire the due timers of one instance and save it; commits.

    Raises Conflict (someone else saved it meanwhile) and WorkflowIncident (a step failed: the
    instance is held in an incident, the timers stay due).
    """
    loaded = load_instance(uow, cache, instance_id)
    refuse_if_in_incident(uow, loaded.row)
    before = loaded.row.next_timer_at
    with incident_on_failure(uow, loaded, {"kind": "fire_timers"}):
        loaded.instance.fire_due_timers()
    loaded.save()
    audit.record(uow, "workflow.timers_fired", "workflow_instance", instance_id,
                 before={"next_timer_at": before}, after={"next_timer_at": loaded.row.next_timer_at})
    uow.commit()
