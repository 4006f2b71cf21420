"""Approval routing: the chain of levels a round goes through, who may vote at each, and the count.

The approval diagram decides the chain with `dmn/approval_routing.dmn` (every matching rule is one
level: group, quorum, what a decline does) and calls three service steps:

- `plan_approval_levels` checks the chain and stores it (`approval_levels`); a chain that nobody can
  work (no rule matched, an unknown group, a quorum the group cannot reach) refuses the submission.
- `open_approval_level` resolves the next level's electorate now (members of its group, out-of-office
  approvers replaced by their substitutes, minus the submitter and anyone who approved an earlier
  level of this round) and its seats: the review is a multi-instance task with one child per seat.
  With `on_decline = "first"` a level needs only `required` seats (any decline ends it); with
  "impossible" every eligible member gets a vote (`seats = eligible`).
- `close_approval_level` records the level's outcome and names the next level, if any.

Each seat's candidates are the electorate (user rows in the task projection), so inboxes never read
workflow state; a user sees one free seat of a level at a time and may hold or cast only one.
Membership and out-of-office changes re-project the open levels (`reproject_levels`). The routing
lives in these rows, written by service steps only: nothing a form submits can reach it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select

from workflows import ServiceCall

from ..errors import Conflict, Unroutable
from ..models import (
    ApprovalLevel,
    Group,
    GroupAlias,
    HumanTaskRow,
    Membership,
    Milestone,
    OutOfOffice,
    TaskCandidate,
    User,
    WorkflowInstance,
    utcnow,
)
from ..uow import UnitOfWork
from . import audit
from .notifications import notify

if TYPE_CHECKING:
    from .runtime import MilestoneServices

APPROVAL_PROCESS = "milestone_approval"
ON_DECLINE = ("first", "impossible")
MAX_SUBSTITUTION_CHAIN = 20


# --------------------------------------------------------------------------- groups and substitutes
def resolve_group(uow: UnitOfWork, name: str) -> Group | None:
    """The group called `name` now, or formerly (a rename keeps deployed tables working)."""
    group = uow.s.scalar(select(Group).where(Group.name == name))
    if group is not None:
        return group
    return uow.s.scalar(select(Group).join(GroupAlias, GroupAlias.group_id == Group.id)
                        .where(GroupAlias.name == name))


def active_substitutes(uow: UnitOfWork, at: datetime | None = None) -> dict[int, int]:
    """{user id: substitute id} for every out-of-office period running at `at` (now)."""
    at = at or utcnow()
    rows = uow.s.execute(select(OutOfOffice.user_id, OutOfOffice.substitute_id).where(
        OutOfOffice.starts_at <= at, OutOfOffice.ends_at > at, OutOfOffice.cancelled_at.is_(None))
        .order_by(OutOfOffice.starts_at))
    return {user_id: substitute_id for user_id, substitute_id in rows}


def final_substitute(substitutes: dict[int, int], user_id: int) -> int:
    """Follow A → B → C while each is away; a loop (refused when periods are set) stops at its start."""
    seen = {user_id}
    current = user_id
    for _ in range(MAX_SUBSTITUTION_CHAIN):
        following = substitutes.get(current)
        if following is None or following in seen:
            return current
        seen.add(following)
        current = following
    return current


# --------------------------------------------------------------------------- quorum
def parse_quorum(value: Any) -> str:
    """"any", "all" or a positive whole number as text; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"quorum {value!r} is not any, all or a number")
    if isinstance(value, (int, float)) or (hasattr(value, "as_integer_ratio") and not isinstance(value, str)):
        number = int(value)
        if number != value or number < 1:
            raise ValueError(f"quorum {value!r} is not a positive whole number")
        return str(number)
    text = str(value if value is not None else "").strip().lower()
    if text in ("any", "all"):
        return text
    if text.isdigit() and int(text) >= 1:
        return str(int(text))
    raise ValueError(f"quorum {value!r} is not any, all or a positive whole number")


def required_votes(quorum: str, eligible: int) -> int:
    if quorum == "any":
        return 1
    if quorum == "all":
        return eligible
    return int(quorum)


def outcome(level: ApprovalLevel) -> str:
    """"approved", "declined" or "pending" for the votes counted on `level` so far."""
    required, seats = level.required or 0, level.seats or 0
    if level.approvals >= required:
        return "approved"
    if level.declines and level.on_decline == "first":
        return "declined"
    if level.declines > seats - required:  # the quorum can no longer be reached
        return "declined"
    return "pending"


# --------------------------------------------------------------------------- electorate
@dataclass(frozen=True)
class Voter:
    user_id: int
    username: str
    substitute_for: str | None = None  # the away approver this voter stands in for


def round_approvers(uow: UnitOfWork, instance_id: int, *, except_level: int | None = None) -> set[int]:
    """Everyone who approved a level of this round (as themselves or on someone's behalf)."""
    stmt = select(HumanTaskRow.completed_by_id, HumanTaskRow.on_behalf_of_id).where(
        HumanTaskRow.instance_id == instance_id, HumanTaskRow.level.is_not(None),
        HumanTaskRow.status == "completed", HumanTaskRow.decision == "approve")
    if except_level is not None:
        stmt = stmt.where(HumanTaskRow.level != except_level)
    ids: set[int] = set()
    for completed_by, on_behalf_of in uow.s.execute(stmt):
        ids.update(i for i in (completed_by, on_behalf_of) if i is not None)
    return ids


def electorate(uow: UnitOfWork, group_name: str, *, excluded: set[int],
               substitutes: dict[int, int] | None = None,
               memo: dict[Any, list[Voter]] | None = None) -> list[Voter]:
    """Who votes for `group_name` now: its members, each replaced by their (final) substitute while
    away, without the excluded (submitter, earlier approvers): an excluded member brings no
    substitute, and nobody votes twice. `memo` (one command's) answers a repeated question unread."""
    key = (group_name, frozenset(excluded))
    if memo is not None and key in memo:
        return memo[key]
    voters = _electorate(uow, group_name, excluded=excluded, substitutes=substitutes)
    if memo is not None:
        memo[key] = voters
    return voters


def _electorate(uow: UnitOfWork, group_name: str, *, excluded: set[int],
                substitutes: dict[int, int] | None) -> list[Voter]:
    group = resolve_group(uow, group_name)
    if group is None:
        return []
    substitutes = active_substitutes(uow) if substitutes is None else substitutes
    members = list(uow.s.execute(select(User.id, User.username).join(Membership, Membership.user_id == User.id)
                                 .where(Membership.group_id == group.id).order_by(User.username)))
    names = {user_id: username for user_id, username in members}
    wanted = {final_substitute(substitutes, user_id) for user_id, _ in members} - set(names)
    if wanted:
        names.update({k: v for k, v in uow.s.execute(select(User.id, User.username).where(User.id.in_(wanted)))})
    voters: dict[int, Voter] = {}
    for user_id, username in members:
        if user_id in excluded:
            continue
        acting = final_substitute(substitutes, user_id)
        if acting in excluded:
            continue
        if acting == user_id:
            voters[user_id] = Voter(user_id, username)
        elif acting not in voters:
            voters[acting] = Voter(acting, names[acting], substitute_for=username)
    return sorted(voters.values(), key=lambda v: v.username)


def _excluded(uow: UnitOfWork, milestone: Milestone, level: ApprovalLevel) -> set[int]:
    excluded = round_approvers(uow, level.instance_id, except_level=level.level)
    if milestone.submitted_by_id is not None:
        excluded.add(milestone.submitted_by_id)
    return excluded


def _candidates(voters: Iterable[Voter]) -> list[TaskCandidate]:
    return [TaskCandidate(kind="user", name=v.username, substitute_for=v.substitute_for) for v in voters]


# --------------------------------------------------------------------------- service steps
def _as_list(value: Any) -> list[Any]:
    # COLLECT gives lists; a single-hit table (FIRST, UNIQUE) gives one value per output
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _routing_inputs(data: Any) -> dict[str, Any]:
    keys = ("milestone_type", "amount", "currency", "contract_number", "account_name", "risk", "round")
    return {k: str(data.get(k)) if data.get(k) is not None else None for k in keys}


def op_plan_approval_levels(services: MilestoneServices, call: ServiceCall) -> dict[str, Any]:
    """Check the chain the routing table wrote (level, approval_group, quorum, on_decline) and store
    it. Raises Unroutable (nothing matched, unknown group, bad quorum, a level nobody can reach)."""
    uow, milestone = services.uow, services.require_milestone()
    data = call.data
    levels, groups = _as_list(data.get("level")), _as_list(data.get("approval_group"))
    quorums, on_declines = _as_list(data.get("quorum")), _as_list(data.get("on_decline"))
    inputs = _routing_inputs(data)
    if not groups:
        raise Unroutable(f"no rule of the approval routing table matches milestone {milestone.code}; "
                         "an analyst must add one (dmn/approval_routing.dmn)", inputs=inputs)
    if not levels:
        levels = list(range(1, len(groups) + 1))  # a table without a level column: in rule order
    if len({len(levels), len(groups)}) != 1 or len(quorums) not in (0, len(groups)) \
            or len(on_declines) not in (0, len(groups)):
        raise Unroutable("the approval routing table gave outputs of different lengths",
                         inputs=inputs, levels=levels, groups=groups)
    plan: list[dict[str, Any]] = []
    problems: list[str] = []
    for i, (number, group_name) in enumerate(zip(levels, groups, strict=True)):
        try:
            level_number = int(number)
            if level_number != number or level_number < 1:
                raise ValueError
        except (TypeError, ValueError):
            problems.append(f"level {number!r} is not a positive whole number")
            continue
        quorum_value = quorums[i] if quorums else "any"
        try:
            quorum = parse_quorum(quorum_value)
        except ValueError as exc:
            problems.append(f"level {level_number}: {exc}")
            continue
        on_decline = str(on_declines[i] if on_declines and on_declines[i] is not None else "first").strip().lower()
        if on_decline not in ON_DECLINE:
            problems.append(f"level {level_number}: on_decline {on_decline!r} is not first or impossible")
            continue
        group = resolve_group(uow, str(group_name or "").strip())
        if group is None:
            problems.append(f"level {level_number}: there is no group {group_name!r}")
            continue
        plan.append({"level": level_number, "group": group.name, "quorum": quorum, "on_decline": on_decline})
    numbers = [p["level"] for p in plan]
    repeated = sorted({n for n in numbers if numbers.count(n) > 1})
    if repeated:
        problems.append(f"level(s) {', '.join(map(str, repeated))} given by more than one rule")
    if not problems:
        # Feasible now? (Each level is resolved again when it opens, against the members of then.)
        excluded = {milestone.submitted_by_id} if milestone.submitted_by_id is not None else set()
        substitutes = active_substitutes(uow)
        for p in plan:
            eligible = len(electorate(uow, p["group"], excluded=excluded, substitutes=substitutes,
                                      memo=services.electorates))
            needed = required_votes(p["quorum"], eligible)
            if eligible == 0 or needed > eligible:
                problems.append(f"level {p['level']} ({p['group']}, quorum {p['quorum']}) needs {max(needed, 1)} "
                                f"approver(s) but the group has {eligible} eligible member(s)")
    if problems:
        raise Unroutable(f"milestone {milestone.code} cannot be routed: " + "; ".join(problems),
                         inputs=inputs, problems=problems)
    instance_id = services.instance_row_id()
    for p in sorted(plan, key=lambda p: p["level"]):
        uow.s.add(ApprovalLevel(instance_id=instance_id, milestone_id=milestone.id, round=milestone.round,
                                level=p["level"], group_name=p["group"], quorum=p["quorum"],
                                on_decline=p["on_decline"], status="pending"))
    audit.record(uow, "approval.routed", "milestone", milestone.id, round=milestone.round,
                 after={"levels": sorted(plan, key=lambda p: p["level"]), "inputs": inputs, "by_step": call.bpmn_id})
    return {"levels": sorted(numbers)}


def _levels(uow: UnitOfWork, instance_id: int) -> list[ApprovalLevel]:
    return list(uow.s.scalars(select(ApprovalLevel).where(ApprovalLevel.instance_id == instance_id)
                              .order_by(ApprovalLevel.level)))


def op_open_approval_level(services: MilestoneServices, call: ServiceCall) -> dict[str, Any]:
    """Open the next pending level: resolve its electorate and seats now. Raises Unroutable when
    the group can no longer reach the quorum (members left since the submission)."""
    uow, milestone = services.uow, services.require_milestone()
    uow.flush()
    level = next((lv for lv in _levels(uow, services.instance_row_id()) if lv.status == "pending"), None)
    if level is None:
        raise LookupError("no pending approval level to open in this round")
    voters = electorate(uow, level.group_name, excluded=_excluded(uow, milestone, level), memo=services.electorates)
    required = required_votes(level.quorum, len(voters))
    if not voters or required > len(voters):
        raise Unroutable(f"level {level.level} of milestone {milestone.code} ({level.group_name}, quorum "
                         f"{level.quorum}) needs {max(required, 1)} approver(s) but {len(voters)} are eligible "
                         "now; add members to the group or change the routing", level=level.level,
                         group=level.group_name, eligible=[v.username for v in voters])
    level.required = required
    level.seats = required if level.on_decline == "first" else len(voters)
    level.eligible = [{"user": v.username, "for": v.substitute_for} for v in voters]
    level.status = "open"
    level.opened_at = utcnow()
    services.opened_levels.append(level)
    audit.record(uow, "approval.level_opened", "milestone", milestone.id, round=level.round,
                 after={"level": level.level, "group": level.group_name, "quorum": level.quorum,
                        "required": required, "seats": level.seats, "eligible": level.eligible})
    return {"level": level.level, "group": level.group_name, "quorum": level.quorum, "required": required,
            "seats": level.seats, "eligible": len(voters), "on_decline": level.on_decline}


def op_close_approval_level(services: MilestoneServices, call: ServiceCall) -> dict[str, Any]:
    """Record the open level's outcome; a decline cancels the levels after it."""
    uow, milestone = services.uow, services.require_milestone()
    levels = _levels(uow, services.instance_row_id())
    level = next((lv for lv in levels if lv.status == "open"), None)
    if level is None:
        raise LookupError("no open approval level to close in this round")
    result = outcome(level)
    if result == "pending":
        raise Conflict(f"level {level.level} closed with its vote still pending")
    level.status = result
    level.closed_at = utcnow()
    following = [lv for lv in levels if lv.status == "pending" and lv.level > level.level]
    if result == "declined":
        for lv in following:
            lv.status = "cancelled"
        following = []
    audit.record(uow, "approval.level_closed", "milestone", milestone.id, round=level.round,
                 after={"level": level.level, "outcome": result, "approvals": level.approvals,
                        "declines": level.declines})
    if result == "declined":
        _notify_declined(services, level)
    return {"level": level.level, "outcome": result, "approvals": level.approvals, "declines": level.declines,
            "next_level": following[0].level if following else None}


def _notify_declined(services: MilestoneServices, level: ApprovalLevel) -> None:
    """The milestone goes back to its primary contact (and submitter) with the reasons."""
    uow, milestone = services.uow, services.require_milestone()
    reasons = decline_reasons(uow, level.instance_id)
    users: list[str] = []
    if milestone.submitted_by_id is not None:
        submitter = uow.s.get(User, milestone.submitted_by_id)
        if submitter is not None:
            users.append(submitter.username)
    contacts = [milestone.primary_contact_id] if milestone.primary_contact_id is not None else []
    notify(uow, "approval.declined", recipients={"users": users, "groups": [], "contacts": contacts},
           milestone=milestone, instance_id=level.instance_id,
           context={"round": level.round, "level": level.level,
                    "reasons": [f"{r['by']} (level {r['level']}): {r['reason']}" for r in reasons]})


def decline_reasons(uow: UnitOfWork, instance_id: int) -> list[dict[str, Any]]:
    rows = uow.s.execute(select(HumanTaskRow.level, HumanTaskRow.comment, User.username)
                         .join(User, User.id == HumanTaskRow.completed_by_id)
                         .where(HumanTaskRow.instance_id == instance_id, HumanTaskRow.decision == "decline")
                         .order_by(HumanTaskRow.completed_at))
    return [{"level": level, "by": by, "reason": comment} for level, comment, by in rows]


OPERATIONS = {
    "plan_approval_levels": op_plan_approval_levels,
    "open_approval_level": op_open_approval_level,
    "close_approval_level": op_close_approval_level,
}


# --------------------------------------------------------------------------- projection
def seat_new_tasks(uow: UnitOfWork, levels: list[ApprovalLevel], created: list[HumanTaskRow],
                   multi_instance: set[str]) -> None:
    """Make the review children created by this save the seats of the level that opened in it."""
    free = sorted((t for t in created if t.id in multi_instance and t.level is None),
                  key=lambda t: (t.created_at, t.id))
    for level in levels:
        seats, free = free[: level.seats or 0], free[level.seats or 0:]
        voters = [Voter(0, e["user"], e.get("for")) for e in (level.eligible or [])]
        for number, task in enumerate(seats, start=1):
            task.level, task.seat, task.group_name = level.level, number, level.group_name
            task.candidates = _candidates(voters)


def substitute_new_tasks(uow: UnitOfWork, created: list[HumanTaskRow]) -> None:
    """Tasks created while someone is out of office go to their substitute: a candidate user or
    assignee who is away is replaced by their (final) substitute, who is named as acting for them."""
    named = [t for t in created if t.level is None
             and (t.assignee_id is not None or any(c.kind == "user" for c in t.candidates))]
    if not named:
        return
    substitutes = active_substitutes(uow)
    if not substitutes:
        return
    wanted = {c.name for t in named for c in t.candidates if c.kind == "user"}
    ids = {k: v for k, v in uow.s.execute(select(User.username, User.id).where(User.username.in_(wanted)))}
    acting_ids = {final_substitute(substitutes, i) for i in ids.values()}
    names = {k: v for k, v in uow.s.execute(select(User.id, User.username).where(User.id.in_(acting_ids)))}
    for task in named:
        if task.assignee_id in substitutes:
            acting = final_substitute(substitutes, task.assignee_id)
            task.substitute_for_id, task.assignee_id = task.assignee_id, acting
        users = [c for c in task.candidates if c.kind == "user"]
        present = {c.name for c in users}
        for candidate in users:
            user_id = ids.get(candidate.name)
            if user_id is None or user_id not in substitutes:
                continue
            acting_name = names[final_substitute(substitutes, user_id)]
            task.candidates.remove(candidate)
            if acting_name not in present:
                task.candidates.append(TaskCandidate(kind="user", name=acting_name, substitute_for=candidate.name))
                present.add(acting_name)


def reproject_levels(uow: UnitOfWork, levels: Iterable[ApprovalLevel], *, reason: str) -> list[str]:
    """Resolve the electorate of open levels again and make their open seats' user candidates equal
    to it; a seat held by someone who left the electorate goes back to the pool (a delegate keeps
    theirs). Returns the ids of the tasks that changed. The quorum's numbers stay as opened."""
    changed: list[str] = []
    substitutes = active_substitutes(uow)
    for level in levels:
        if level.status != "open":
            continue
        milestone = uow.s.get(Milestone, level.milestone_id)
        assert milestone is not None
        voters = electorate(uow, level.group_name, excluded=_excluded(uow, milestone, level),
                            substitutes=substitutes)
        level.eligible = [{"user": v.username, "for": v.substitute_for} for v in voters]
        wanted = {v.username: v for v in voters}
        voter_ids = {v.user_id for v in voters}
        seats = uow.s.scalars(select(HumanTaskRow).where(HumanTaskRow.instance_id == level.instance_id,
                                                         HumanTaskRow.level == level.level,
                                                         HumanTaskRow.status == "open"))
        for task in seats:
            present = {c.name: c for c in task.candidates if c.kind == "user"}
            removed = sorted(set(present) - set(wanted))
            added = sorted(set(wanted) - set(present))
            for name in removed:
                task.candidates.remove(present[name])
            for name in added:
                task.candidates.append(TaskCandidate(kind="user", name=name, substitute_for=wanted[name].substitute_for))
            for name in set(present) & set(wanted):
                present[name].substitute_for = wanted[name].substitute_for
            released = None
            if task.assignee_id is not None and task.delegated_by_id is None and task.assignee_id not in voter_ids:
                holder = uow.s.get(User, task.assignee_id)
                released = holder.username if holder is not None else str(task.assignee_id)
                task.assignee = None
                task.substitute_for_id = None
            if removed or added or released:
                changed.append(task.id)
                audit.record(uow, "task.candidates_changed", "task", task.id, milestone_id=level.milestone_id,
                             round=level.round, after={"added": added, "removed": removed, "released": released,
                                                       "reason": reason, "level": level.level})
    uow.flush()
    return changed


def open_levels_of_groups(uow: UnitOfWork, group_names: Iterable[str]) -> list[ApprovalLevel]:
    names = list(group_names)
    if not names:
        return []
    return list(uow.s.scalars(select(ApprovalLevel).where(ApprovalLevel.status == "open",
                                                          ApprovalLevel.group_name.in_(names))))


def open_levels_for_user(uow: UnitOfWork, user_id: int) -> list[ApprovalLevel]:
    """Open levels the user could be part of: of their groups, or where they are a candidate."""
    groups = select(Group.name).join(Membership, Membership.group_id == Group.id).where(Membership.user_id == user_id)
    username = select(User.username).where(User.id == user_id).scalar_subquery()
    as_candidate = select(HumanTaskRow.instance_id).join(TaskCandidate, TaskCandidate.task_id == HumanTaskRow.id).where(
        HumanTaskRow.status == "open", HumanTaskRow.level.is_not(None), TaskCandidate.kind == "user",
        TaskCandidate.name == username)
    return list(uow.s.scalars(select(ApprovalLevel).where(
        ApprovalLevel.status == "open",
        or_(ApprovalLevel.group_name.in_(groups), ApprovalLevel.instance_id.in_(as_candidate)))))


def level_of(uow: UnitOfWork, task: HumanTaskRow) -> ApprovalLevel | None:
    if task.level is None:
        return None
    return uow.s.scalar(select(ApprovalLevel).where(ApprovalLevel.instance_id == task.instance_id,
                                                    ApprovalLevel.level == task.level))


def count_vote(level: ApprovalLevel, decision: str) -> str:
    """Count one vote on `level`; returns the level's outcome with it."""
    if decision == "approve":
        level.approvals += 1
    else:
        level.declines += 1
    return outcome(level)


def rounds(uow: UnitOfWork, milestone_id: int) -> list[dict[str, Any]]:
    """Every approval round of a milestone: its levels, and every vote (who, what, when, why)."""
    instances = list(uow.s.scalars(select(WorkflowInstance).where(
        WorkflowInstance.milestone_id == milestone_id, WorkflowInstance.process_id == APPROVAL_PROCESS)
        .order_by(WorkflowInstance.round)))
    if not instances:
        return []
    ids = [i.id for i in instances]
    levels: dict[int, list[ApprovalLevel]] = {}
    for lv in uow.s.scalars(select(ApprovalLevel).where(ApprovalLevel.instance_id.in_(ids))
                            .order_by(ApprovalLevel.level)):
        levels.setdefault(lv.instance_id, []).append(lv)
    tasks: dict[int, list[HumanTaskRow]] = {}
    for t in uow.s.scalars(select(HumanTaskRow).where(HumanTaskRow.instance_id.in_(ids))
                           .order_by(HumanTaskRow.created_at, HumanTaskRow.id)):
        tasks.setdefault(t.instance_id, []).append(t)
    referenced = {i for ts in tasks.values() for t in ts
                  for i in (t.completed_by_id, t.on_behalf_of_id, t.assignee_id) if i is not None}
    names = {k: v for k, v in uow.s.execute(select(User.id, User.username).where(User.id.in_(referenced)))}

    def vote(t: HumanTaskRow) -> dict[str, Any]:
        return {"task_id": t.id, "seat": t.seat, "status": t.status, "decision": t.decision, "comment": t.comment,
                "decided_by": names.get(t.completed_by_id), "on_behalf_of": names.get(t.on_behalf_of_id),
                "assignee": names.get(t.assignee_id), "decided_at": t.completed_at}

    out = []
    for inst in instances:
        inst_levels = levels.get(inst.id, [])
        inst_tasks = tasks.get(inst.id, [])
        declined = any(lv.status == "declined" for lv in inst_levels)
        approved = bool(inst_levels) and all(lv.status == "approved" for lv in inst_levels)
        out.append({
            "round": inst.round, "instance_id": inst.id, "status": inst.status,
            "outcome": "declined" if declined else "approved" if approved else
                       "cancelled" if inst.status == "cancelled" else "pending",
            "started_at": inst.created_at, "ended_at": inst.completed_at,
            "levels": [{"level": lv.level, "group": lv.group_name, "quorum": lv.quorum, "on_decline": lv.on_decline,
                        "required": lv.required, "seats": lv.seats, "status": lv.status,
                        "approvals": lv.approvals, "declines": lv.declines, "eligible": lv.eligible or [],
                        "opened_at": lv.opened_at, "closed_at": lv.closed_at,
                        "votes": [vote(t) for t in inst_tasks if t.level == lv.level]}
                       for lv in inst_levels],
            "decline_reasons": [{"level": t.level, "by": names.get(t.completed_by_id), "reason": t.comment}
                                for t in inst_tasks if t.decision == "decline"],
            "other_tasks": [vote(t) | {"bpmn_id": t.bpmn_id} for t in inst_tasks if t.level is None],
        })
    return out

