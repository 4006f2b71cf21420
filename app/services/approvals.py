"""Submitting milestones and working approval tasks: submit, claim, unclaim, complete, inbox."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, exists, or_, select, update
from sqlalchemy.orm import joinedload

from workflows import ExecutionError, TaskNotFound, TaskNotReady

from ..errors import Conflict, Forbidden, NotFound, ValidationFailed
from ..models import (
    AuditEvent,
    FundRelease,
    Group,
    HumanTaskRow,
    Membership,
    Milestone,
    TaskCandidate,
    User,
    WorkflowInstance,
    utcnow,
)
from ..uow import UnitOfWork
from . import audit
from .automation import days_to_due
from .identity import group_names
from .incidents import incident_on_failure, refuse_if_in_incident
from .milestones import (
    LIFECYCLE,
    load_lifecycle,
    milestone_with_lifecycle,
    notify_approval_completed,
    open_rework_task,
    refuse,
    running_lifecycle_on,
    send,
)
from .objectives import raise_if_incomplete
from .records import Page, paginate
from .runtime import (
    APPROVAL_PROCESS,
    DeploymentCache,
    LoadedInstance,
    execution_failure,
    load_instance,
    start_instance,
)

DECISIONS = ("approve", "decline")


@dataclass
class Submission:
    milestone: Milestone
    instance_id: int
    round: int
    resumed: bool
    open_tasks: list[HumanTaskRow]


# --------------------------------------------------------------------------- visibility
def _visible_clause(user: User, groups: list[str]) -> Any:
    """SQL for "this user may see this task": a candidate (group or user) or the assignee."""
    candidate = exists().where(
        TaskCandidate.task_id == HumanTaskRow.id,
        or_(
            (TaskCandidate.kind == "group") & TaskCandidate.name.in_(groups or [""]),
            (TaskCandidate.kind == "user") & (TaskCandidate.name == user.username),
        ),
    )
    return or_(candidate, HumanTaskRow.assignee_id == user.id)


def _is_candidate(task: HumanTaskRow, user: User, groups: list[str]) -> bool:
    if task.assignee_id == user.id:
        return True
    for c in task.candidates:
        if (c.kind == "group" and c.name in groups) or (c.kind == "user" and c.name == user.username):
            return True
    return False


def _task_for(uow: UnitOfWork, user: User, task_id: str) -> HumanTaskRow:
    # Candidates joined in the same query (the mapping's default is a second, selectin query).
    task = uow.s.get(HumanTaskRow, task_id, options=[joinedload(HumanTaskRow.candidates)])
    # Someone who may not see a task learns nothing about it, not even that it exists.
    if task is None or not _is_candidate(task, user, group_names(uow, user.id)):
        raise NotFound(f"no task {task_id}")
    return task


@dataclass
class _TaskContext:
    """What completing a task reads, held here because the session's identity map is weak:
    while referenced, `uow.s.get` finds these rows without a query."""

    task: HumanTaskRow
    instance: WorkflowInstance | None
    milestone: Milestone | None
    lifecycle: WorkflowInstance | None


# Whether the user (bound as user_id) is in one of the task's candidate groups: the group part
# of `_is_candidate`, so that no separate `group_names` query is needed.
_IN_CANDIDATE_GROUP = exists().where(
    TaskCandidate.task_id == HumanTaskRow.id, TaskCandidate.kind == "group",
    TaskCandidate.name.in_(select(Group.name).join(Membership, Membership.group_id == Group.id)
                           .where(Membership.user_id == bindparam("user_id"))),
)
_TASK_CONTEXT = (
    select(HumanTaskRow, WorkflowInstance, Milestone, LIFECYCLE, _IN_CANDIDATE_GROUP.label("in_candidate_group"))
    .outerjoin(WorkflowInstance, WorkflowInstance.id == HumanTaskRow.instance_id)
    .outerjoin(Milestone, Milestone.id == HumanTaskRow.milestone_id)
    .outerjoin(LIFECYCLE, running_lifecycle_on(HumanTaskRow.milestone_id))
    .where(HumanTaskRow.id == bindparam("task_id"))
    .options(joinedload(HumanTaskRow.candidates))
)


def _task_context(uow: UnitOfWork, user: User, task_id: str) -> _TaskContext:
    """`_task_for`, with the task's instance, milestone and running lifecycle row, in one query."""
    found = uow.s.execute(_TASK_CONTEXT, {"task_id": task_id, "user_id": user.id}).unique().first()
    if found is None:
        raise NotFound(f"no task {task_id}")
    task, instance, milestone, lifecycle, in_candidate_group = found
    # As `_is_candidate`, the group test done by the query.
    if not (in_candidate_group or task.assignee_id == user.id
            or any(c.kind == "user" and c.name == user.username for c in task.candidates)):
        raise NotFound(f"no task {task_id}")
    return _TaskContext(task, instance, milestone, lifecycle)


def _check_segregation(uow: UnitOfWork, user: User, task: HumanTaskRow) -> None:
    """The submitter of a milestone acts only on tasks addressed to them by name (e.g. rework)."""
    if task.milestone_id is None:
        return
    milestone = uow.s.get(Milestone, task.milestone_id)
    if milestone is None or milestone.submitted_by_id != user.id:
        return
    if any(c.kind == "user" and c.name == user.username for c in task.candidates):
        return
    raise Forbidden(
        f"{user.username} submitted milestone {milestone.code} and so cannot review or approve it "
        "(segregation of duties)", task_id=task.id, milestone_id=milestone.id,
    )


# --------------------------------------------------------------------------- inbox
def list_tasks(uow: UnitOfWork, user: User, *, page: int, page_size: int, status: str | None = "open",
               group: str | None = None, milestone_id: int | None = None) -> Page:
    """The caller's candidate tasks, from the projection only (no workflow state is read)."""
    groups = group_names(uow, user.id)
    stmt = select(HumanTaskRow).where(_visible_clause(user, groups))
    if status:
        stmt = stmt.where(HumanTaskRow.status == status)
    if group:
        stmt = stmt.where(exists().where(TaskCandidate.task_id == HumanTaskRow.id, TaskCandidate.kind == "group",
                                         TaskCandidate.name == group))
    if milestone_id is not None:
        stmt = stmt.where(HumanTaskRow.milestone_id == milestone_id)
    stmt = stmt.order_by(HumanTaskRow.created_at, HumanTaskRow.id)
    return paginate(uow, stmt, page, page_size)


def get_task(uow: UnitOfWork, user: User, task_id: str) -> HumanTaskRow:
    return _task_for(uow, user, task_id)


# --------------------------------------------------------------------------- claim
def claim_task(uow: UnitOfWork, user: User, task_id: str) -> HumanTaskRow:
    """Make the caller the task's assignee. Conflict if it is closed or someone else holds it."""
    task = _task_for(uow, user, task_id)
    _check_segregation(uow, user, task)
    if task.status != "open":
        raise Conflict(f"task {task_id} is already {task.status}", task_status=task.status)
    # A conditional UPDATE, not read-then-write: two simultaneous claims cannot both win.
    result = uow.s.execute(
        update(HumanTaskRow)
        .where(HumanTaskRow.id == task_id, HumanTaskRow.status == "open",
               or_(HumanTaskRow.assignee_id.is_(None), HumanTaskRow.assignee_id == user.id))
        .values(assignee_id=user.id)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        uow.s.refresh(task)
        holder = task.assignee.username if task.assignee else "someone else"
        raise Conflict(f"task {task_id} is claimed by {holder}", assignee=holder)
    audit.record(uow, "task.claimed", "task", task_id, after={"assignee": user.username})
    uow.commit()
    uow.s.refresh(task)
    return task


def unclaim_task(uow: UnitOfWork, user: User, task_id: str) -> HumanTaskRow:
    task = _task_for(uow, user, task_id)
    if task.status != "open":
        raise Conflict(f"task {task_id} is already {task.status}", task_status=task.status)
    if task.assignee_id is None:
        return task
    if task.assignee_id != user.id:
        raise Conflict(f"task {task_id} is claimed by {task.assignee.username if task.assignee else 'someone else'}")
    result = uow.s.execute(
        update(HumanTaskRow).where(HumanTaskRow.id == task_id, HumanTaskRow.assignee_id == user.id,
                                   HumanTaskRow.status == "open")
        .values(assignee_id=None).execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise Conflict(f"task {task_id} changed meanwhile; reload and retry")
    audit.record(uow, "task.unclaimed", "task", task_id, before={"assignee": user.username})
    uow.commit()
    uow.s.refresh(task)
    return task


# --------------------------------------------------------------------------- complete
def complete_task(uow: UnitOfWork, cache: DeploymentCache, user: User, task_id: str, *,
                  decision: str | None = None, comment: str | None = None,
                  data: dict[str, Any] | None = None) -> HumanTaskRow:
    """Complete a task and run the workflow until it waits again, in one transaction.

    Raises NotFound (not the caller's task), Forbidden (segregation of duties), ValidationFailed
    (missing decision or decline reason), Conflict (already completed, claimed by someone else,
    or a concurrent completion won) and WorkflowIncident (a step failed: nothing was kept and the
    instance is held in an incident; also when it already is).
    """
    context = _task_context(uow, user, task_id)
    task = context.task
    _check_segregation(uow, user, task)
    if task.status != "open":
        raise Conflict(f"task {task_id} is already {task.status}", task_status=task.status)
    if task.assignee_id is not None and task.assignee_id != user.id:
        holder = task.assignee.username if task.assignee else "someone else"
        raise Conflict(f"task {task_id} is claimed by {holder}", assignee=holder)
    is_group_task = any(c.kind == "group" for c in task.candidates)
    errors: dict[str, list[str]] = {}
    if is_group_task and decision is None:
        errors["decision"] = ["required: approve or decline"]
    if decision == "decline" and not (comment or "").strip():
        errors["comment"] = ["a decline needs a reason"]
    if errors:
        raise ValidationFailed("the completion is incomplete", errors)

    loaded = load_instance(uow, cache, task.instance_id)
    refuse_if_in_incident(uow, loaded.row)
    payload: dict[str, Any] = {"completed_by": user.username}
    if decision is not None:
        payload["decision"] = decision
    if comment is not None:
        payload["comment"] = comment
    if data:
        payload["form"] = data  # namespaced: a form can never overwrite routing or identity keys
    command = {"kind": "complete_task", "task_id": task_id, "user_id": user.id, "decision": decision,
               "comment": comment, "data": data}
    with incident_on_failure(uow, loaded, command):
        _run_completion(loaded, task_id, payload)
    task.status = "completed"
    task.completed_at = utcnow()
    task.completed_by_id = user.id
    task.decision = decision
    task.comment = comment
    if task.assignee_id is None:
        # The relationship, not only the key, so the answer needs no refresh after the commit;
        # merge(load=False) puts a copy of the caller in this session without reading it.
        task.assignee = uow.s.merge(user, load=False)
    # Recorded before the save (no event is recorded in between) so that it is in the same flush.
    audit.record(uow, "task.completed", "task", task_id,
                 after={"decision": decision, "comment": comment, "bpmn_id": task.bpmn_id,
                        "milestone_id": task.milestone_id, "by": user.username})
    loaded.save()
    _maybe_start_next_round(uow, cache, loaded)
    milestone = loaded.services.milestone
    if milestone is not None and loaded.instance.is_completed and milestone.status == "completed":
        notify_approval_completed(uow, cache, milestone, context.lifecycle)
    uow.commit()  # expire_on_commit=False: `task` holds what was written, nothing to reload
    return task


def _run_completion(loaded: LoadedInstance, task_id: str, payload: dict[str, Any]) -> None:
    try:
        loaded.instance.complete(task_id, payload)
    except (TaskNotFound, TaskNotReady) as exc:
        # The projection said open but the state disagrees: someone else got there first.
        raise Conflict(f"task {task_id} can no longer be completed: {exc}") from exc
    except ValueError as exc:
        raise ValidationFailed(str(exc), {"data": [str(exc)]}) from exc
    except ExecutionError as exc:
        raise execution_failure(exc) from exc


# --------------------------------------------------------------------------- submit
def submit_milestone(uow: UnitOfWork, cache: DeploymentCache, user: User, milestone_id: int) -> Submission:
    """Submit an active milestone for approval, or resubmit a declined one as the next round.

    The completeness gate runs first (409 listing what is missing per objective). An active
    milestone is submitted by asking its lifecycle workflow, which starts approval round 1; a
    declined one waits in its submitter's rework task, and completing that task ends the round
    and starts the next one as a new instance (bounded task trees).
    Raises NotFound, Forbidden (someone other than the submitter resubmits), InvalidTransition,
    Conflict (incomplete).
    """
    milestone, row = milestone_with_lifecycle(uow, milestone_id)
    rework = open_rework_task(uow, milestone.id)
    waiting = set(row.waiting_for or []) if row is not None else set()
    if rework is None and "submit" not in waiting:  # as `"submit" in allowed_actions(...)`
        raise refuse(uow, milestone, "submit")
    if rework is not None:
        if not any(c.kind == "user" and c.name == user.username for c in rework.candidates):
            raise Forbidden(f"only the submitter of milestone {milestone.code} can resubmit it")
        raise_if_incomplete(uow, milestone)
        complete_task(uow, cache, user, rework.id, comment="resubmitted")
        latest = _latest_round(uow, milestone.id)
        return Submission(milestone, latest.id, latest.round, True, _open_tasks(uow, latest.id))
    raise_if_incomplete(uow, milestone)
    milestone.submitted_by_id = user.id
    lifecycle = load_lifecycle(uow, cache, milestone, row)
    send(lifecycle, "submit", user, flush=False)  # its UPDATEs go with the new round's INSERT
    if not lifecycle.services.approval_round_requested:
        raise refuse(uow, milestone, "submit")
    loaded, created = _start_round(uow, cache, milestone, user)
    uow.commit()
    # A new instance: the rows its save created are all its open tasks.
    return Submission(milestone, loaded.row.id, loaded.row.round, False, created)


def _latest_round(uow: UnitOfWork, milestone_id: int) -> WorkflowInstance:
    latest = uow.s.scalar(select(WorkflowInstance).where(
        WorkflowInstance.milestone_id == milestone_id, WorkflowInstance.process_id == APPROVAL_PROCESS)
        .order_by(WorkflowInstance.round.desc()).limit(1))
    assert latest is not None
    return latest


def _start_round(uow: UnitOfWork, cache: DeploymentCache, milestone: Milestone,
                 submitter: User) -> tuple[LoadedInstance, list[HumanTaskRow]]:
    """Start the next approval round; returns it and its task rows (all open)."""
    milestone.round = milestone.round + 1
    data = {
        "milestone_id": milestone.id,
        "milestone_code": milestone.code,
        "milestone_type": milestone.type,
        "amount": milestone.amount if milestone.amount is not None else Decimal("0"),
        "currency": milestone.currency,
        "submitted_by": submitter.username,
        "round": milestone.round,
        "days_to_due": days_to_due(milestone),  # an input of the reminder policy
    }
    audit.record(uow, "milestone.submitted", "milestone", milestone.id,
                 after={"round": milestone.round, "by": submitter.username})
    loaded = start_instance(uow, cache, milestone, data)
    created = loaded.save(flush=False)  # its task rows are written with the command's commit
    return loaded, created


def _maybe_start_next_round(uow: UnitOfWork, cache: DeploymentCache, loaded: LoadedInstance) -> None:
    if not loaded.services.next_round_requested:
        return
    milestone = loaded.services.milestone
    assert milestone is not None and milestone.submitted_by_id is not None
    submitter = uow.s.get(User, milestone.submitted_by_id)
    assert submitter is not None
    _start_round(uow, cache, milestone, submitter)


def _open_tasks(uow: UnitOfWork, instance_id: int) -> list[HumanTaskRow]:
    return list(uow.s.scalars(select(HumanTaskRow).where(HumanTaskRow.instance_id == instance_id,
                                                         HumanTaskRow.status == "open")))


# --------------------------------------------------------------------------- milestone view
@dataclass
class MilestoneView:
    milestone: Milestone
    open_tasks: list[HumanTaskRow]
    history: list[AuditEvent]
    decisions: list[HumanTaskRow]
    release: FundRelease | None


def milestone_view(uow: UnitOfWork, milestone_id: int) -> MilestoneView:
    milestone = uow.s.get(Milestone, milestone_id)
    if milestone is None:
        raise NotFound(f"no milestone {milestone_id}")
    task_ids = select(HumanTaskRow.id).where(HumanTaskRow.milestone_id == milestone_id)
    history = list(uow.s.scalars(
        select(AuditEvent).where(or_(
            (AuditEvent.entity_type == "milestone") & (AuditEvent.entity_id == str(milestone_id)),
            (AuditEvent.entity_type == "task") & AuditEvent.entity_id.in_(task_ids),
        )).order_by(AuditEvent.id)
    ))
    tasks = list(uow.s.scalars(select(HumanTaskRow).where(HumanTaskRow.milestone_id == milestone_id)
                               .order_by(HumanTaskRow.created_at)))
    release = uow.s.scalar(select(FundRelease).where(FundRelease.milestone_id == milestone_id))
    return MilestoneView(
        milestone=milestone,
        open_tasks=[t for t in tasks if t.status == "open"],
        history=history,
        decisions=[t for t in tasks if t.status == "completed"],
        release=release,
    )
