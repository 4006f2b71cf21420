"""Submitting milestones and working approval tasks: submit, claim, unclaim, complete, inbox."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, or_, select, update
from sqlalchemy.orm import aliased, joinedload

from workflows import ExecutionError, TaskNotFound, TaskNotReady

from ..errors import Conflict, DomainError, Forbidden, NotFound, ValidationFailed
from ..models import (
    Account,
    AuditEvent,
    Contact,
    Contract,
    FundRelease,
    Group,
    HumanTaskRow,
    Membership,
    Milestone,
    TaskCandidate,
    TaskComment,
    User,
    WorkflowInstance,
    utcnow,
)
from ..uow import UnitOfWork
from . import audit, routing
from .automation import days_to_due
from .identity import group_names, user_named
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
    return or_(candidate, HumanTaskRow.assignee_id == user.id, HumanTaskRow.delegated_by_id == user.id)


_OTHER_SEAT = aliased(HumanTaskRow)
_FREE_SEAT = aliased(HumanTaskRow)


def _one_seat_clause(user: User) -> Any:
    """Of a level's open seats a user sees the one they hold (or delegated), else the first free
    one, and none once they hold or cast another seat of that level: one vote per person."""
    held_elsewhere = exists().where(
        _OTHER_SEAT.instance_id == HumanTaskRow.instance_id, _OTHER_SEAT.level == HumanTaskRow.level,
        _OTHER_SEAT.id != HumanTaskRow.id,
        or_(and_(_OTHER_SEAT.status == "open", _OTHER_SEAT.assignee_id == user.id),
            _OTHER_SEAT.completed_by_id == user.id, _OTHER_SEAT.on_behalf_of_id == user.id))
    first_free = (select(func.min(_FREE_SEAT.seat))
                  .where(_FREE_SEAT.instance_id == HumanTaskRow.instance_id, _FREE_SEAT.level == HumanTaskRow.level,
                         _FREE_SEAT.status == "open", _FREE_SEAT.assignee_id.is_(None))
                  .correlate(HumanTaskRow).scalar_subquery())
    return or_(HumanTaskRow.level.is_(None), HumanTaskRow.status != "open",
               HumanTaskRow.assignee_id == user.id, HumanTaskRow.delegated_by_id == user.id,
               and_(HumanTaskRow.assignee_id.is_(None), ~held_elsewhere, HumanTaskRow.seat == first_free))


def _is_candidate(task: HumanTaskRow, user: User, groups: list[str]) -> bool:
    if task.assignee_id == user.id or task.delegated_by_id == user.id:
        return True
    for c in task.candidates:
        if (c.kind == "group" and c.name in groups) or (c.kind == "user" and c.name == user.username):
            return True
    return False


def _task_for(uow: UnitOfWork, user: User, task_id: str) -> HumanTaskRow:
    # Candidates joined in the same query (the mapping's default is a second, selectin query).
    task = uow.s.get(HumanTaskRow, task_id, options=[joinedload(HumanTaskRow.candidates)])
    # Someone who may not see a task learns nothing about it, not even that it exists.
    if task is None:
        raise NotFound(f"no task {task_id}")
    groups = group_names(uow, user.id)
    if not _is_candidate(task, user, groups):
        _explain_exclusion(uow, user, task, groups)
        raise NotFound(f"no task {task_id}")
    return task


def _explain_exclusion(uow: UnitOfWork, user: User, task: HumanTaskRow, groups: list[str]) -> None:
    """A member of a seat's group left out of its electorate by segregation of duties learns why
    (403 naming the rule) instead of a bare 404."""
    if task.level is not None and task.group_name in groups:
        _check_segregation(uow, user, task)


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
    if not (in_candidate_group or task.assignee_id == user.id or task.delegated_by_id == user.id
            or any(c.kind == "user" and c.name == user.username for c in task.candidates)):
        _explain_exclusion(uow, user, task, group_names(uow, user.id))
        raise NotFound(f"no task {task_id}")
    return _TaskContext(task, instance, milestone, lifecycle)


def _principals(task: HumanTaskRow, user: User) -> set[int]:
    """Whose decision this would be: the actor, and whoever they act for (delegation, out of office)."""
    return {i for i in (user.id, task.delegated_by_id, task.substitute_for_id) if i is not None}


def _check_segregation(uow: UnitOfWork, user: User, task: HumanTaskRow, *, voting: bool = True) -> None:
    """Segregation of duties, on the server whatever the client does.

    The submitter of a milestone never acts on its approval seats (nor on a group task), only on
    tasks addressed to them by name (rework); nobody approves two levels of one round or casts two
    votes at one level, as themselves or for someone else. Raises Forbidden naming the rule.
    """
    if task.milestone_id is None:
        return
    milestone = uow.s.get(Milestone, task.milestone_id)
    if milestone is None:
        return
    principals = _principals(task, user)
    if milestone.submitted_by_id in principals:
        addressed = any(c.kind == "user" and c.name == user.username and c.substitute_for is None
                        for c in task.candidates)
        if task.level is not None or not addressed:
            who = user.username if milestone.submitted_by_id == user.id else f"{user.username} (acting for the submitter)"
            raise Forbidden(
                f"{who} submitted milestone {milestone.code} and so cannot review or approve it "
                "(segregation of duties)", task_id=task.id, milestone_id=milestone.id, rule="submitter")
    if task.level is None or not voting:
        return
    approved = uow.s.scalar(select(HumanTaskRow.level).where(
        HumanTaskRow.instance_id == task.instance_id, HumanTaskRow.level.is_not(None),
        HumanTaskRow.level != task.level, HumanTaskRow.status == "completed", HumanTaskRow.decision == "approve",
        or_(HumanTaskRow.completed_by_id.in_(principals), HumanTaskRow.on_behalf_of_id.in_(principals))).limit(1))
    if approved is not None:
        raise Forbidden(
            f"{user.username} approved level {approved} of this round of milestone {milestone.code} and cannot "
            f"approve level {task.level} too (segregation of duties)", task_id=task.id, milestone_id=milestone.id,
            rule="one_level_per_person", approved_level=approved)
    voted = uow.s.scalar(select(HumanTaskRow.seat).where(
        HumanTaskRow.instance_id == task.instance_id, HumanTaskRow.level == task.level,
        HumanTaskRow.id != task.id,
        or_(HumanTaskRow.completed_by_id.in_(principals), HumanTaskRow.on_behalf_of_id.in_(principals),
            and_(HumanTaskRow.status == "open", HumanTaskRow.assignee_id == user.id))).limit(1))
    if voted is not None:
        raise Forbidden(
            f"{user.username} already holds or cast seat {voted} of level {task.level}: one vote per person "
            "(segregation of duties)", task_id=task.id, milestone_id=milestone.id, rule="one_vote_per_level")


def _round_of(uow: UnitOfWork, task: HumanTaskRow) -> int | None:
    instance = uow.s.get(WorkflowInstance, task.instance_id)
    return instance.round if instance is not None else None


def _task_audit(uow: UnitOfWork, action: str, task: HumanTaskRow, **kw: Any) -> None:
    audit.record(uow, action, "task", task.id, milestone_id=task.milestone_id, round=_round_of(uow, task), **kw)


# --------------------------------------------------------------------------- inbox
def list_tasks(uow: UnitOfWork, user: User, *, page: int, page_size: int, status: str | None = "open",
               group: str | None = None, milestone_id: int | None = None) -> Page:
    """The caller's candidate tasks, from the projection only (no workflow state is read)."""
    groups = group_names(uow, user.id)
    stmt = select(HumanTaskRow).where(_visible_clause(user, groups), _one_seat_clause(user))
    if status:
        stmt = stmt.where(HumanTaskRow.status == status)
    if group:
        stmt = stmt.where(or_(HumanTaskRow.group_name == group,
                              exists().where(TaskCandidate.task_id == HumanTaskRow.id, TaskCandidate.kind == "group",
                                             TaskCandidate.name == group)))
    if milestone_id is not None:
        stmt = stmt.where(HumanTaskRow.milestone_id == milestone_id)
    stmt = stmt.order_by(HumanTaskRow.created_at, HumanTaskRow.id)
    return paginate(uow, stmt, page, page_size)


def get_task(uow: UnitOfWork, user: User, task_id: str) -> HumanTaskRow:
    return _task_for(uow, user, task_id)


# --------------------------------------------------------------------------- claim, assign, delegate
def _holder(task: HumanTaskRow) -> str:
    return task.assignee.username if task.assignee else "someone else"


def _require_open(task: HumanTaskRow) -> None:
    if task.status != "open":
        raise Conflict(f"task {task.id} is already {task.status}", task_status=task.status)


def _take(uow: UnitOfWork, task: HumanTaskRow, *, expected: int | None, values: dict[str, Any]) -> None:
    """A conditional UPDATE from the assignee the caller saw: two racing changes cannot both win."""
    holder = HumanTaskRow.assignee_id.is_(None) if expected is None else HumanTaskRow.assignee_id == expected
    result = uow.s.execute(update(HumanTaskRow).where(HumanTaskRow.id == task.id, HumanTaskRow.status == "open", holder)
                           .values(**values).execution_options(synchronize_session=False))
    if result.rowcount != 1:
        uow.s.refresh(task)
        if task.status != "open":
            raise Conflict(f"task {task.id} is already {task.status}", task_status=task.status)
        raise Conflict(f"task {task.id} is claimed by {_holder(task)}", assignee=_holder(task))


def claim_task(uow: UnitOfWork, user: User, task_id: str) -> HumanTaskRow:
    """Make the caller the task's assignee. Conflict if it is closed or someone else holds it;
    Forbidden when segregation of duties keeps the caller from deciding it."""
    task = _task_for(uow, user, task_id)
    _check_segregation(uow, user, task)
    _require_open(task)
    if task.assignee_id == user.id:
        return task
    if task.assignee_id is not None:
        raise Conflict(f"task {task_id} is claimed by {_holder(task)}", assignee=_holder(task))
    _take(uow, task, expected=None, values={"assignee_id": user.id})
    _task_audit(uow, "task.claimed", task, after={"assignee": user.username})
    uow.commit()
    uow.s.refresh(task)
    return task


def unclaim_task(uow: UnitOfWork, user: User, task_id: str) -> HumanTaskRow:
    """Give a claimed task back to its candidates. Conflict if someone else holds it."""
    task = _task_for(uow, user, task_id)
    _require_open(task)
    if task.assignee_id is None:
        return task
    if task.assignee_id != user.id:
        raise Conflict(f"task {task_id} is claimed by {_holder(task)}", assignee=_holder(task))
    _take(uow, task, expected=user.id,
          values={"assignee_id": None, "delegated_by_id": None, "substitute_for_id": None})
    _task_audit(uow, "task.unclaimed", task, before={"assignee": user.username})
    uow.commit()
    uow.s.refresh(task)
    return task


def _task_groups(task: HumanTaskRow) -> set[str]:
    groups = {c.name for c in task.candidates if c.kind == "group"}
    if task.group_name:
        groups.add(task.group_name)
    return groups


def _is_lead(uow: UnitOfWork, user: User, groups: set[str]) -> bool:
    if not groups:
        return False
    return uow.s.scalar(select(Group.id).where(Group.name.in_(groups), Group.lead_id == user.id).limit(1)) is not None


def _may_act_on(uow: UnitOfWork, target: User, task: HumanTaskRow) -> bool:
    """Whether `target` is among the task's candidates (an electorate member for a seat)."""
    if any(c.kind == "user" and c.name == target.username for c in task.candidates):
        return True
    groups = {c.name for c in task.candidates if c.kind == "group"}
    return bool(groups & set(group_names(uow, target.id)))


def assign_task(uow: UnitOfWork, user: User, task_id: str, assignee: str, *, comment: str | None = None) -> HumanTaskRow:
    """Assign (or reassign) a task to one of its candidates: by the lead of one of its groups, an
    admin, or its current assignee handing it over. The new assignee must pass segregation of duties.
    Raises NotFound, Forbidden, Conflict (closed, or changed meanwhile), ValidationFailed (not a candidate)."""
    task = _task_for_manager(uow, user, task_id)
    _require_open(task)
    is_holder = task.assignee_id == user.id
    if not (user.is_admin or is_holder or _is_lead(uow, user, _task_groups(task))):
        raise Forbidden(f"only the lead of {', '.join(sorted(_task_groups(task))) or 'its group'}, an admin or "
                        f"its assignee can assign task {task_id}")
    target = user_named(uow, assignee, "assignee")
    if not _may_act_on(uow, target, task):
        raise ValidationFailed(f"{target.username} is not a candidate of task {task_id}",
                               {"assignee": [f"{target.username} cannot act on this task"]})
    _check_segregation(uow, target, _as_if_held(task, target))
    before = task.assignee.username if task.assignee else None
    if before == target.username:
        return task
    _take(uow, task, expected=task.assignee_id,
          values={"assignee_id": target.id, "delegated_by_id": None, "substitute_for_id": None})
    _task_audit(uow, "task.reassigned" if before else "task.assigned", task,
                before={"assignee": before}, after={"assignee": target.username, "by": user.username,
                                                    "comment": comment})
    uow.commit()
    uow.s.refresh(task)
    return task


def delegate_task(uow: UnitOfWork, user: User, task_id: str, to: str, *, comment: str | None = None) -> HumanTaskRow:
    """Delegate a task the caller holds (or could claim) to another user: the delegate completes it
    on the caller's behalf, the caller keeps seeing it, and the audit names both. Segregation of
    duties applies to the delegate as to the owner. Raises NotFound, Forbidden, Conflict, ValidationFailed."""
    task = _task_for(uow, user, task_id)
    _require_open(task)
    _check_segregation(uow, user, task)
    if task.assignee_id not in (None, user.id):
        raise Conflict(f"task {task_id} is claimed by {_holder(task)}", assignee=_holder(task))
    target = user_named(uow, to, "to")
    if target.id == user.id:
        raise ValidationFailed("a task cannot be delegated to oneself", {"to": ["choose someone else"]})
    owner_id = task.delegated_by_id or user.id
    _check_segregation(uow, target, _as_if_held(task, target, delegated_by_id=owner_id))
    _take(uow, task, expected=task.assignee_id, values={"assignee_id": target.id, "delegated_by_id": owner_id})
    owner = uow.s.get(User, owner_id)
    _task_audit(uow, "task.delegated", task, before={"assignee": task.assignee.username if task.assignee else None},
                after={"owner": owner.username if owner else None, "delegate": target.username, "by": user.username,
                       "comment": comment})
    uow.commit()
    uow.s.refresh(task)
    return task


def _as_if_held(task: HumanTaskRow, holder: User, *, delegated_by_id: int | None = None) -> HumanTaskRow:
    """A detached copy of `task` held by `holder`, for checking segregation of duties before the change."""
    copy = HumanTaskRow(id=task.id, instance_id=task.instance_id, milestone_id=task.milestone_id, level=task.level,
                        seat=task.seat, status=task.status, assignee_id=holder.id,
                        delegated_by_id=delegated_by_id, substitute_for_id=None)
    copy.candidates = [TaskCandidate(kind=c.kind, name=c.name, substitute_for=c.substitute_for)
                       for c in task.candidates]
    return copy



def _task_for_manager(uow: UnitOfWork, user: User, task_id: str, *, milestone_owners: bool = False) -> HumanTaskRow:
    """A task the caller may see, or that they manage as lead of one of its groups (or as an admin);
    with milestone_owners, also one of a milestone they own (creator, submitter, primary contact)."""
    task = uow.s.get(HumanTaskRow, task_id, options=[joinedload(HumanTaskRow.candidates)])
    if task is None:
        raise NotFound(f"no task {task_id}")
    if user.is_admin or _is_candidate(task, user, group_names(uow, user.id)) or _is_lead(uow, user, _task_groups(task)):
        return task
    if milestone_owners and user.id in _milestone_owner_ids(uow, task.milestone_id):
        return task
    raise NotFound(f"no task {task_id}")


# --------------------------------------------------------------------------- comments
def _milestone_owner_ids(uow: UnitOfWork, milestone_id: int | None) -> set[int]:
    if milestone_id is None:
        return set()
    milestone = uow.s.get(Milestone, milestone_id)
    if milestone is None:
        return set()
    ids = {i for i in (milestone.created_by_id, milestone.submitted_by_id) if i is not None}
    if milestone.primary_contact_id is not None:
        contact = uow.s.get(Contact, milestone.primary_contact_id)
        if contact is not None and contact.user_id is not None:
            ids.add(contact.user_id)
    return ids


def add_comment(uow: UnitOfWork, user: User, task_id: str, body: str) -> TaskComment:
    """Comment on a task (open or closed). Raises NotFound (may not see it), ValidationFailed (empty)."""
    task = _task_for_manager(uow, user, task_id, milestone_owners=True)
    text = (body or "").strip()
    if not text:
        raise ValidationFailed("a comment needs a body", {"body": ["must not be empty"]})
    comment = TaskComment(task_id=task.id, milestone_id=task.milestone_id, author_id=user.id, body=text)
    uow.s.add(comment)
    uow.flush()
    _task_audit(uow, "task.commented", task, after={"comment_id": comment.id, "body": text, "by": user.username})
    uow.commit()
    return comment


def list_comments(uow: UnitOfWork, user: User, task_id: str) -> list[TaskComment]:
    task = _task_for_manager(uow, user, task_id, milestone_owners=True)
    return list(uow.s.scalars(select(TaskComment).where(TaskComment.task_id == task.id).order_by(TaskComment.id)))


# --------------------------------------------------------------------------- complete
def complete_task(uow: UnitOfWork, cache: DeploymentCache, user: User, task_id: str, *,
                  decision: str | None = None, comment: str | None = None,
                  data: dict[str, Any] | None = None) -> HumanTaskRow:
    """Complete a task and run the workflow until it waits again, in one transaction.

    A seat of an approval level counts as one vote: the level completes (and its other seats are
    cancelled) once the quorum is reached or a decline ends it (`app.services.routing`).
    Raises NotFound (not the caller's task), Forbidden (segregation of duties), ValidationFailed
    (missing decision or decline reason), Conflict (already completed, claimed by someone else,
    or a concurrent completion won) and WorkflowIncident (a step failed: nothing was kept and the
    instance is held in an incident; also when it already is).
    """
    context = _task_context(uow, user, task_id)
    task = context.task
    if task.level is not None and context.instance is not None:
        # Votes of one level are counted one at a time: wait for a concurrent vote, then see it.
        uow.s.execute(select(WorkflowInstance).where(WorkflowInstance.id == task.instance_id).with_for_update()
                      .execution_options(populate_existing=True)).scalar_one()
        uow.s.refresh(task)
    _check_segregation(uow, user, task)
    if task.status != "open":
        raise Conflict(f"task {task_id} is already {task.status}", task_status=task.status)
    if task.assignee_id is not None and task.assignee_id != user.id:
        raise Conflict(f"task {task_id} is claimed by {_holder(task)}", assignee=_holder(task))
    is_vote = task.level is not None or any(c.kind == "group" for c in task.candidates)
    errors: dict[str, list[str]] = {}
    if is_vote and decision is None:
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
    level = routing.level_of(uow, task)  # read after the lock: the count of the votes before this one
    if level is not None:
        assert decision is not None
        payload["level_outcome"] = routing.count_vote(level, decision)
    command = {"kind": "complete_task", "task_id": task_id, "user_id": user.id, "decision": decision,
               "comment": comment, "data": data}
    # Written before the engine runs: the steps it runs (the next level's electorate) see this vote.
    task.status = "completed"
    task.completed_at = utcnow()
    task.completed_by_id = user.id
    task.on_behalf_of_id = task.delegated_by_id or task.substitute_for_id
    task.decision = decision
    task.comment = comment
    with incident_on_failure(uow, loaded, command):
        _run_completion(loaded, task_id, payload)
    if task.assignee_id is None:
        # The relationship, not only the key, so the answer needs no refresh after the commit;
        # merge(load=False) puts a copy of the caller in this session without reading it.
        task.assignee = uow.s.merge(user, load=False)
    on_behalf_of = uow.s.get(User, task.on_behalf_of_id) if task.on_behalf_of_id else None
    # Recorded before the save (no event is recorded in between) so that it is in the same flush.
    audit.record(uow, "task.completed", "task", task_id, milestone_id=task.milestone_id, round=loaded.row.round,
                 after={"decision": decision, "comment": comment, "bpmn_id": task.bpmn_id,
                        "milestone_id": task.milestone_id, "by": user.username,
                        "on_behalf_of": on_behalf_of.username if on_behalf_of else None,
                        "level": task.level, "seat": task.seat,
                        "level_outcome": payload.get("level_outcome")})
    loaded.save()
    _maybe_start_next_round(uow, cache, loaded, user)
    milestone = loaded.services.milestone
    if milestone is not None and loaded.instance.is_completed and milestone.status == "completed":
        notify_approval_completed(uow, cache, milestone, context.lifecycle)
    uow.commit()  # expire_on_commit=False: `task` holds what was written, nothing to reload
    return task


@dataclass
class BulkItem:
    task_id: str
    status: int
    task: HumanTaskRow | None = None
    problem: dict[str, Any] | None = None


def bulk_complete(uow: UnitOfWork, cache: DeploymentCache, user: User, items: list[dict[str, Any]]) -> list[BulkItem]:
    """Complete several tasks, each in a transaction of its own: one failure undoes none of the others.
    Each item answers what a single completion would (200, or the problem's status and body)."""
    results: list[BulkItem] = []
    for item in items:
        with uow.fresh() as item_uow:
            try:
                task = complete_task(item_uow, cache, user, item["task_id"], decision=item.get("decision"),
                                     comment=item.get("comment"), data=item.get("data"))
                # loaded now: the answer is written after this item's session has closed
                for relation in ("assignee", "completed_by", "delegated_by", "substitute_for", "on_behalf_of",
                                 "candidates"):
                    getattr(task, relation)
                results.append(BulkItem(item["task_id"], 200, task=task))
            except DomainError as exc:
                item_uow.rollback()
                problem: dict[str, Any] = {"status": exc.status, "title": exc.title, "detail": exc.detail, **exc.extra}
                if isinstance(exc, ValidationFailed) and exc.errors:
                    problem["errors"] = exc.errors
                results.append(BulkItem(item["task_id"], exc.status, problem=problem))
    return results


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
            raise Forbidden(f"only the primary contact or the submitter of milestone {milestone.code} "
                            "can resubmit it")
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
    contract = uow.s.get(Contract, milestone.contract_id)
    account = uow.s.get(Account, milestone.account_id)
    attributes = dict(milestone.attributes or {})
    data = {
        "milestone_id": milestone.id,
        "milestone_code": milestone.code,
        "milestone_type": milestone.type,
        "amount": milestone.amount if milestone.amount is not None else Decimal("0"),
        "currency": milestone.currency,
        # inputs the routing table may use (any custom field through `attributes`)
        "contract_id": milestone.contract_id,
        "contract_number": contract.number if contract is not None else None,
        "contract_value": contract.value if contract is not None else None,
        "account_id": milestone.account_id,
        "account_name": account.name if account is not None else None,
        "attributes": attributes,
        "risk": attributes.get("risk"),
        "submitted_by": submitter.username,
        "rework_to": _rework_to(uow, milestone, submitter),
        "round": milestone.round,
        "days_to_due": days_to_due(milestone),  # an input of the reminder policy
        "retention_of": milestone.retention_of_id,  # its approval releases that milestone's retention
    }
    audit.record(uow, "milestone.submitted", "milestone", milestone.id,
                 after={"round": milestone.round, "by": submitter.username})
    loaded = start_instance(uow, cache, milestone, data)
    created = loaded.save(flush=False)  # its task rows are written with the command's commit
    return loaded, created


def _rework_to(uow: UnitOfWork, milestone: Milestone, submitter: User) -> list[str]:
    """A declined milestone goes back to its primary contact (their user, if linked) and its submitter."""
    names: list[str] = []
    if milestone.primary_contact_id is not None:
        contact = uow.s.get(Contact, milestone.primary_contact_id)
        if contact is not None and contact.user_id is not None:
            user = uow.s.get(User, contact.user_id)
            if user is not None:
                names.append(user.username)
    if submitter.username not in names:
        names.append(submitter.username)
    return names


def _maybe_start_next_round(uow: UnitOfWork, cache: DeploymentCache, loaded: LoadedInstance,
                            resubmitter: User) -> None:
    """The rework task was completed: the one who resubmitted is the submitter of the next round."""
    if not loaded.services.next_round_requested:
        return
    milestone = loaded.services.milestone
    assert milestone is not None
    milestone.submitted_by_id = resubmitter.id
    _start_round(uow, cache, milestone, uow.s.merge(resubmitter, load=False))


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


def milestone_or_404(uow: UnitOfWork, milestone_id: int) -> Milestone:
    milestone = uow.s.get(Milestone, milestone_id)
    if milestone is None:
        raise NotFound(f"no milestone {milestone_id}")
    return milestone


def milestone_trail(uow: UnitOfWork, milestone_id: int, *, page: int, page_size: int, action: str | None = None,
                    round: int | None = None) -> Page:
    """The milestone's audit events (its own and its tasks'), oldest first, from the indexed column."""
    milestone_or_404(uow, milestone_id)
    stmt = select(AuditEvent).where(AuditEvent.milestone_id == milestone_id)
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    if round is not None:
        stmt = stmt.where(AuditEvent.round == round)
    return paginate(uow, stmt.order_by(AuditEvent.id), page, page_size)
