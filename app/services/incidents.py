"""Incidents: a script, decision or service step failed while a saved instance advanced.

The caller's transaction is rolled back whole (its request changed nothing, as every error), and
a separate transaction records the incident and holds the instance (status `incident`) at its
last saved state: no completion, timer or message moves it until an operator retries. Keeping
the instance's progress up to the failure instead would keep half a transaction: the service
steps before the failing one (status changes, fund releases) were rolled back with the caller's
request, so the saved state and the domain rows would disagree.

A retry runs the recorded command again (the task completion as its original user, or the due
timers) in one transaction, after an optional move to the latest deployment and/or a merge of
corrected data into the tasks the run starts from, so the failing step sees it. If the step
fails again, the same incident records the new error and stays open.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from workflows import ExecutionError

from ..errors import Conflict, NotFound, ValidationFailed, WorkflowIncident
from ..models import DeploymentRecord, Incident, User, WorkflowInstance, utcnow
from ..uow import UnitOfWork
from . import audit
from .deployments import migrate_to_latest, require_analyst
from .records import Page, paginate
from .runtime import DeploymentCache, LoadedInstance, StepFailed, execution_failure, load_instance

SNAPSHOT_MAX_BYTES = 8 * 1024
VALUE_MAX_BYTES = 1024


# --------------------------------------------------------------------------- opening
@contextmanager
def incident_on_failure(uow: UnitOfWork, loaded: LoadedInstance, command: dict[str, Any]) -> Iterator[None]:
    """Around the engine call of a use case that advances a saved instance: a failing step
    (StepFailed) rolls the caller back and raises WorkflowIncident for the incident it opened."""
    try:
        yield
    except StepFailed as failure:
        _raise_if_database_down(failure.error)
        raise open_incident(uow, loaded, failure.error, command) from failure
    except ExecutionError as error:
        mapped = execution_failure(error)  # a lost race inside a service step stays a Conflict
        if not isinstance(mapped, StepFailed):
            raise mapped from error
        _raise_if_database_down(error)
        raise open_incident(uow, loaded, error, command) from error


def _raise_if_database_down(error: ExecutionError) -> None:
    """A step that lost its database connection (or hit another operational error) did not find a
    fault in the diagram: the error propagates, nothing was kept, and a worker retries."""
    seen: set[int] = set()
    cause: BaseException | None = error.cause
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, DBAPIError) and (cause.connection_invalidated
                                              or isinstance(cause, (OperationalError, InterfaceError))):
            raise cause
        cause = getattr(cause, "exception", None) or cause.__cause__ or cause.__context__


def open_incident(uow: UnitOfWork, loaded: LoadedInstance, error: ExecutionError,
                  command: dict[str, Any]) -> WorkflowIncident:
    """Roll back `uow`, then record the failure in a transaction of its own. Returns the error to raise.

    Raises Conflict instead when the instance changed meanwhile (the failure was on a stale state).
    """
    failed = loaded.instance.failed_task() or {}
    row = loaded.row
    instance_id, seen_version = row.id, row.version
    milestone_id, deployment_hash = row.milestone_id, row.deployment_hash
    uow.rollback()
    message = error.problem.message
    with uow.fresh() as side:
        current = side.s.get(WorkflowInstance, instance_id)
        # `seen_version` may be ahead of the stored one (this transaction wrote the row before the
        # step failed, e.g. a retry); only a version beyond it means someone else saved meanwhile.
        if current is None or current.version > seen_version:
            raise Conflict(f"instance {instance_id} changed while the step ran; reload and retry")
        incident = side.s.scalar(select(Incident).where(Incident.instance_id == instance_id,
                                                        Incident.status == "open"))
        fields = {"element_id": error.element_id or failed.get("bpmn_id"), "file": error.file,
                  "task_id": failed.get("task_id"), "error": message, "data": snapshot(failed.get("data")),
                  "deployment_hash": current.deployment_hash or deployment_hash, "command": command}
        if incident is None:
            incident = Incident(instance_id=instance_id, milestone_id=milestone_id, created_by_id=uow.actor_id,
                                **fields)
            side.s.add(incident)
            action = "incident.opened"
        else:
            for key, value in fields.items():
                setattr(incident, key, value)
            incident.attempts += 1
            incident.updated_at = utcnow()
            action = "incident.failed_again"
        current.status = "incident"
        current.updated_at = utcnow()
        side.flush()
        audit.record(side, action, "incident", incident.id,
                     after={"instance_id": instance_id, "milestone_id": milestone_id, "element_id": incident.element_id,
                            "file": incident.file, "error": message, "attempts": incident.attempts})
        side.commit()
        incident_id, element_id, file = incident.id, incident.element_id, incident.file
    return WorkflowIncident(
        f"step {element_id or '?'} ({file or '?'}) failed: {message}. Nothing of this request was saved; "
        f"instance {instance_id} is held in incident {incident_id} until an operator retries it",
        incident_id=incident_id, instance_id=instance_id, element_id=element_id, file=file,
    )


def refuse_if_in_incident(uow: UnitOfWork, row: WorkflowInstance) -> None:
    """Raises WorkflowIncident when the instance is held in an open incident."""
    if row.status != "incident":
        return
    incident = uow.s.scalar(select(Incident).where(Incident.instance_id == row.id, Incident.status == "open"))
    raise WorkflowIncident(
        f"instance {row.id} is held in incident {incident.id if incident else '?'} since a step failed; "
        "an operator retries it", incident_id=incident.id if incident else None, instance_id=row.id,
        element_id=incident.element_id if incident else None, file=incident.file if incident else None,
    )


def snapshot(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """The failed task's data as small JSON: long values are cut, and past the cap only the keys stay."""
    if data is None:
        return None
    out: dict[str, Any] = {}
    for key, value in sorted(data.items(), key=lambda kv: str(kv[0])):
        encoded = json.dumps(value, default=_json_default)
        out[str(key)] = json.loads(encoded) if len(encoded) <= VALUE_MAX_BYTES else \
            f"<{len(encoded)} bytes omitted>"
    if len(json.dumps(out)) > SNAPSHOT_MAX_BYTES:
        return {"_truncated": True, "keys": sorted(out)}
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return repr(value)


# --------------------------------------------------------------------------- reading
def list_incidents(uow: UnitOfWork, user: User, *, page: int, page_size: int, status: str | None = "open",
                   milestone_id: int | None = None) -> Page:
    """Newest first. Raises Forbidden unless admin or analyst."""
    require_analyst(uow, user, "see incidents")
    stmt = select(Incident)
    if status:
        stmt = stmt.where(Incident.status == status)
    if milestone_id is not None:
        stmt = stmt.where(Incident.milestone_id == milestone_id)
    return paginate(uow, stmt.order_by(Incident.id.desc()), page, page_size)


def get_incident(uow: UnitOfWork, user: User, incident_id: int) -> Incident:
    require_analyst(uow, user, "see incidents")
    return _incident(uow, incident_id)


def _incident(uow: UnitOfWork, incident_id: int) -> Incident:
    incident = uow.s.get(Incident, incident_id)
    if incident is None:
        raise NotFound(f"no incident {incident_id}")
    return incident


# --------------------------------------------------------------------------- retrying
def retry_incident(uow: UnitOfWork, cache: DeploymentCache, user: User, incident_id: int, *,
                   data: dict[str, Any] | None = None, migrate: bool = False) -> Incident:
    """Run the failed command again after a fix; resolves the incident when it gets through. Commits.

    `migrate` first moves the instance to the latest deployment (a corrected diagram); `data` is
    merged into the tasks the run starts from. Raises Forbidden, NotFound, Conflict (not open, an
    impossible move, or a concurrent change), ValidationFailed (reserved keys in `data`) and
    WorkflowIncident when the step fails again (the incident stays open with the new error).
    """
    from . import approvals, timers

    require_analyst(uow, user, "retry incidents")
    incident = _incident(uow, incident_id)
    if incident.status != "open":
        raise Conflict(f"incident {incident_id} is {incident.status}", incident_status=incident.status)
    row = uow.s.get(WorkflowInstance, incident.instance_id)
    assert row is not None
    before = {"deployment": row.deployment_hash, "attempts": incident.attempts}
    moved_to = None
    if migrate:
        plan = migrate_to_latest(uow, cache, row.id)
        moved_to = uow.s.scalar(select(DeploymentRecord.version).where(DeploymentRecord.hash == plan.target_hash))
    if data:
        loaded = load_instance(uow, cache, row.id)
        try:
            loaded.instance.merge_data(data)
        except ValueError as exc:
            raise ValidationFailed(str(exc), {"data": [str(exc)]}) from exc
        loaded.save()
    incident.status = "resolved"
    incident.resolved_at = incident.updated_at = utcnow()
    incident.resolved_by_id = user.id
    row.status = "running"
    audit.record(uow, "incident.retried", "incident", incident.id, before=before,
                 after={"migrated_to_version": moved_to, "data_keys": sorted(data or {}), "by": user.username,
                        "command": incident.command.get("kind")})
    command = dict(incident.command)
    if command.get("kind") == "complete_task":
        original = uow.s.get(User, command["user_id"])
        if original is None:
            raise Conflict(f"the user who completed task {command['task_id']} no longer exists")
        # complete_task commits: the resolution, the move and the merged data land with the completion.
        approvals.complete_task(uow, cache, original, command["task_id"], decision=command.get("decision"),
                                comment=command.get("comment"), data=command.get("data"))
    elif command.get("kind") == "fire_timers":
        timers.advance_timers(uow, cache, row.id)
    else:
        raise Conflict(f"incident {incident_id} records no command that can be retried")
    return incident
