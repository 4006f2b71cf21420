"""Out of office: a user names a substitute for a period; their approval work goes to the substitute.

- Tasks created in the period go to the substitute: electorates, candidate users and assignees are
  resolved through the running periods (`routing.active_substitutes`), chains A → B → C included.
- When a period starts (at once, or when the scheduler reaches its start), the user's open work
  moves: seats and tasks they hold go to the substitute (`substitute_for` names them), their pools
  are re-projected, tasks addressed to them by name are readdressed. When it ends, the pools give
  the user back their place; tasks the substitute holds stay with the substitute.
- A period that would close a loop (A → B while B → A, directly or through others, at any moment
  of the new period) is refused.
Every switch is audited with the original approver and the substitute.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from ..errors import Conflict, NotFound, ValidationFailed
from ..models import HumanTaskRow, OutOfOffice, TaskCandidate, User, WorkflowInstance, utcnow
from ..uow import UnitOfWork
from . import audit, routing
from .identity import user_named

MAX_PERIOD_DAYS = 366



def _overlapping(uow: UnitOfWork, starts_at: datetime, ends_at: datetime) -> list[OutOfOffice]:
    return list(uow.s.scalars(select(OutOfOffice).where(
        OutOfOffice.cancelled_at.is_(None), OutOfOffice.starts_at < ends_at, OutOfOffice.ends_at > starts_at)))


def _loop(uow: UnitOfWork, user: User, substitute: User, starts_at: datetime, ends_at: datetime) -> list[str] | None:
    """The chain that would lead from `substitute` back to `user` at some moment of the new period."""
    periods = _overlapping(uow, starts_at, ends_at)
    moments = sorted({starts_at, *(p.starts_at for p in periods if starts_at <= p.starts_at < ends_at)})
    names = {user.id: user.username, substitute.id: substitute.username}
    for p in periods:
        names[p.user_id] = p.user.username
        names[p.substitute_id] = p.substitute.username
    for moment in moments:
        following = {p.user_id: p.substitute_id for p in periods if p.starts_at <= moment < p.ends_at}
        chain = [user.id, substitute.id]
        current = substitute.id
        while current in following and len(chain) <= routing.MAX_SUBSTITUTION_CHAIN + 1:
            current = following[current]
            chain.append(current)
            if current == user.id:
                return [names[i] for i in chain]
    return None


def set_out_of_office(uow: UnitOfWork, user: User, substitute: str, starts_at: datetime | None,
                      ends_at: datetime, *, reason: str = "") -> OutOfOffice:
    """Record a period; if it has started, move the user's open work now. Raises ValidationFailed
    (bad period, unknown or same substitute), Conflict (overlaps one of the user's periods, or
    closes a substitution loop: the chain is in the problem)."""
    now = utcnow()
    starts_at = starts_at or now
    errors: dict[str, list[str]] = {}
    if ends_at <= starts_at:
        errors["ends_at"] = ["must be after starts_at"]
    elif (ends_at - starts_at).days > MAX_PERIOD_DAYS:
        errors["ends_at"] = [f"a period lasts at most {MAX_PERIOD_DAYS} days"]
    if ends_at <= now:
        errors.setdefault("ends_at", []).append("must be in the future")
    if errors:
        raise ValidationFailed("the out-of-office period is not valid", errors)
    target = user_named(uow, substitute, "substitute")
    if target.id == user.id:
        raise ValidationFailed("a user cannot substitute for themselves", {"substitute": ["choose someone else"]})
    mine = [p for p in _overlapping(uow, starts_at, ends_at) if p.user_id == user.id]
    if mine:
        raise Conflict(f"{user.username} is already out of office from {mine[0].starts_at.isoformat()} to "
                       f"{mine[0].ends_at.isoformat()} (period {mine[0].id}); end it first", period_id=mine[0].id)
    chain = _loop(uow, user, target, starts_at, ends_at)
    if chain is not None:
        raise Conflict("substitutes would form a loop: " + " → ".join(chain), chain=chain)
    period = OutOfOffice(user_id=user.id, substitute_id=target.id, starts_at=starts_at, ends_at=ends_at,
                         reason=reason or "")
    uow.s.add(period)
    uow.flush()
    audit.record(uow, "out_of_office.set", "user", user.id,
                 after={"period_id": period.id, "user": user.username, "substitute": target.username,
                        "starts_at": starts_at, "ends_at": ends_at, "reason": period.reason})
    if starts_at <= now:
        _start(uow, period)
    uow.commit()
    return period


def end_out_of_office(uow: UnitOfWork, user: User, period_id: int) -> OutOfOffice:
    """End (or cancel, if not started) one of the caller's periods now; admins may end anyone's."""
    period = uow.s.get(OutOfOffice, period_id)
    if period is None or (period.user_id != user.id and not user.is_admin):
        raise NotFound(f"no out-of-office period {period_id}")
    if period.cancelled_at is not None or period.ended_at is not None:
        raise Conflict(f"period {period_id} has already ended")
    now = utcnow()
    if period.starts_at > now:
        period.cancelled_at = now
        audit.record(uow, "out_of_office.cancelled", "user", period.user_id, after={"period_id": period.id})
    else:
        period.ends_at = now
        _end(uow, period)
    uow.commit()
    return period


def list_out_of_office(uow: UnitOfWork, user: User, *, include_past: bool = False) -> list[OutOfOffice]:
    stmt = select(OutOfOffice).where(OutOfOffice.user_id == user.id).order_by(OutOfOffice.starts_at)
    if not include_past:
        stmt = stmt.where(OutOfOffice.cancelled_at.is_(None), OutOfOffice.ends_at > utcnow())
    return list(uow.s.scalars(stmt))


def switch_due_periods(uow: UnitOfWork) -> dict[str, list[int]]:
    """Start the periods whose start has come and end those whose end has: the scheduler's job.
    Each switch happens once (started_at / ended_at), in this one transaction."""
    now = utcnow()
    starting = list(uow.s.scalars(select(OutOfOffice).where(
        OutOfOffice.cancelled_at.is_(None), OutOfOffice.started_at.is_(None), OutOfOffice.starts_at <= now,
        OutOfOffice.ends_at > now).order_by(OutOfOffice.starts_at).with_for_update(skip_locked=True, of=OutOfOffice)))
    ending = list(uow.s.scalars(select(OutOfOffice).where(
        OutOfOffice.cancelled_at.is_(None), OutOfOffice.ended_at.is_(None), OutOfOffice.ends_at <= now)
        .order_by(OutOfOffice.ends_at).with_for_update(skip_locked=True, of=OutOfOffice)))
    for period in starting:
        _start(uow, period)
    for period in ending:
        _end(uow, period)
    if starting or ending:
        uow.commit()
    return {"started": [p.id for p in starting], "ended": [p.id for p in ending]}


def _start(uow: UnitOfWork, period: OutOfOffice) -> None:
    period.started_at = utcnow()
    uow.flush()
    user = uow.s.get(User, period.user_id)
    assert user is not None
    substitutes = routing.active_substitutes(uow)
    acting_id = routing.final_substitute(substitutes, user.id)
    acting = uow.s.get(User, acting_id)
    assert acting is not None
    moved: list[str] = []
    # Work the user holds: it goes to the substitute, who acts for the user.
    held = list(uow.s.scalars(select(HumanTaskRow).where(HumanTaskRow.status == "open",
                                                         HumanTaskRow.assignee_id == user.id)))
    for task in held:
        task.assignee = acting
        task.substitute_for_id = user.id
        moved.append(task.id)
        audit.record(uow, "task.substituted", "task", task.id, milestone_id=task.milestone_id,
                     round=_round(uow, task), after={"original": user.username, "substitute": acting.username,
                                                     "period_id": period.id, "what": "assignee"})
    # Tasks addressed to the user by name (not seats: those are re-projected below).
    named = list(uow.s.scalars(select(HumanTaskRow).join(TaskCandidate, TaskCandidate.task_id == HumanTaskRow.id)
                               .where(HumanTaskRow.status == "open", HumanTaskRow.level.is_(None),
                                      TaskCandidate.kind == "user", TaskCandidate.name == user.username)))
    for task in named:
        present = {c.name: c for c in task.candidates if c.kind == "user"}
        original = present.pop(user.username)
        task.candidates.remove(original)
        if acting.username not in present:
            task.candidates.append(TaskCandidate(kind="user", name=acting.username, substitute_for=user.username))
        moved.append(task.id)
        audit.record(uow, "task.substituted", "task", task.id, milestone_id=task.milestone_id,
                     round=_round(uow, task), after={"original": user.username, "substitute": acting.username,
                                                     "period_id": period.id, "what": "candidate"})
    uow.flush()
    reprojected = routing.reproject_levels(uow, routing.open_levels_for_user(uow, user.id),
                                           reason=f"{user.username} out of office, {acting.username} substitutes")
    audit.record(uow, "out_of_office.started", "user", user.id,
                 after={"period_id": period.id, "user": user.username, "substitute": acting.username,
                        "moved_tasks": moved, "reprojected_tasks": reprojected})


def _end(uow: UnitOfWork, period: OutOfOffice) -> None:
    period.ended_at = utcnow()
    uow.flush()
    user = uow.s.get(User, period.user_id)
    assert user is not None
    substitute = uow.s.get(User, period.substitute_id)
    # Tasks readdressed to the substitute go back to the user (unless the substitute holds them).
    readdressed = list(uow.s.scalars(select(HumanTaskRow).join(TaskCandidate, TaskCandidate.task_id == HumanTaskRow.id)
                                     .where(HumanTaskRow.status == "open", HumanTaskRow.level.is_(None),
                                            TaskCandidate.kind == "user", TaskCandidate.substitute_for == user.username)))
    returned: list[str] = []
    for task in readdressed:
        if task.assignee_id is not None and task.assignee_id != user.id:
            continue
        for candidate in [c for c in task.candidates if c.kind == "user" and c.substitute_for == user.username]:
            task.candidates.remove(candidate)
        if not any(c.kind == "user" and c.name == user.username for c in task.candidates):
            task.candidates.append(TaskCandidate(kind="user", name=user.username))
        returned.append(task.id)
        audit.record(uow, "task.substitution_ended", "task", task.id, milestone_id=task.milestone_id,
                     round=_round(uow, task), after={"original": user.username,
                                                     "substitute": substitute.username if substitute else None,
                                                     "period_id": period.id})
    uow.flush()
    reprojected = routing.reproject_levels(uow, routing.open_levels_for_user(uow, user.id),
                                           reason=f"{user.username} back in office")
    audit.record(uow, "out_of_office.ended", "user", user.id,
                 after={"period_id": period.id, "user": user.username,
                        "substitute": substitute.username if substitute else None,
                        "returned_tasks": returned, "reprojected_tasks": reprojected})


def _round(uow: UnitOfWork, task: HumanTaskRow) -> int | None:
    instance = uow.s.get(WorkflowInstance, task.instance_id)
    return instance.round if instance is not None else None
