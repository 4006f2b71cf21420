"""Service operations for task automation: notify, escalate, and the primary contact's to-dos.

The diagrams call these through `MilestoneServices` (service tasks `notify`, `escalate_tasks`,
`start_contact_tasks`, `end_contact_tasks`); they run inside the transaction that advances the
instance, so a reminder's outbox row commits with the timer that fired it, or not at all.

Whom to notify is a comma-separated list of: `approvers` (the assignee of the instance's open
task, or else its candidate groups and users), `submitter`, `primary_contact`, `group_lead` (the
lead of the open level's group), `user:<name>`, or a group name.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from workflows import MessageNotExpected, ServiceCall

from ..models import Contact, Group, HumanTaskRow, Milestone, TaskCandidate, User, WorkflowInstance, utcnow
from ..uow import UnitOfWork
from . import audit
from .notifications import notify

if TYPE_CHECKING:
    from .runtime import MilestoneServices

CONTACT_PROCESS = "milestone_contact_tasks"
NO_DUE_DATE_DAYS = 9999


def days_to_due(milestone: Milestone, today: date | None = None) -> int:
    """Whole days from today (UTC) to the due date; NO_DUE_DATE_DAYS without one (the policy's input)."""
    if milestone.due_date is None:
        return NO_DUE_DATE_DAYS
    return (milestone.due_date - (today or utcnow().date())).days


def _tokens(value: Any) -> list[str]:
    return [t.strip() for t in str(value or "").split(",") if t.strip()]


def _open_tasks(uow: UnitOfWork, instance_id: int | None) -> list[HumanTaskRow]:
    if instance_id is None:
        return []
    return list(uow.s.scalars(select(HumanTaskRow).where(HumanTaskRow.instance_id == instance_id,
                                                         HumanTaskRow.status == "open")
                              .order_by(HumanTaskRow.created_at)))


def resolve_recipients(uow: UnitOfWork, milestone: Milestone | None, instance_id: int | None, to: Any,
                       data: Any = None) -> dict[str, list[Any]]:
    """{"users", "groups", "contacts"} for a `to` list (see the module docstring)."""
    users: set[str] = set()
    groups: set[str] = set()
    contacts: set[int] = set()
    for token in _tokens(to):
        if token == "approvers":
            tasks = _open_tasks(uow, instance_id)
            for task in tasks:
                if task.assignee is not None:
                    users.add(task.assignee.username)
                    continue
                for candidate in task.candidates:
                    (groups if candidate.kind == "group" else users).add(candidate.name)
            if not tasks and data is not None and isinstance(data.get("level_plan"), dict):
                # the review opened in this very step (a zero delay): its projection comes at the save
                groups.update(_tokens(data["level_plan"].get("group")))
        elif token == "group_lead":
            users.update(_group_leads(uow, instance_id, data))
        elif token == "submitter":
            if milestone is not None and milestone.submitted_by_id is not None:
                submitter = uow.s.get(User, milestone.submitted_by_id)
                if submitter is not None:
                    users.add(submitter.username)
        elif token == "primary_contact":
            if milestone is not None and milestone.primary_contact_id is not None:
                contacts.add(milestone.primary_contact_id)
        elif token.startswith("user:"):
            users.add(token[5:])
        else:
            groups.add(token)
    return {"users": sorted(users), "groups": sorted(groups), "contacts": sorted(contacts)}


def _group_leads(uow: UnitOfWork, instance_id: int | None, data: Any) -> set[str]:
    """The leads of the groups the instance's open tasks are routed to (the open level's group)."""
    names: set[str] = set()
    for task in _open_tasks(uow, instance_id):
        names.update(c.name for c in task.candidates if c.kind == "group")
        if task.group_name:
            names.add(task.group_name)
    if not names and data is not None and isinstance(data.get("level_plan"), dict):
        names.add(str(data["level_plan"].get("group")))
    if not names:
        return set()
    return set(uow.s.scalars(select(User.username).join(Group, Group.lead_id == User.id).where(Group.name.in_(names))))


# --------------------------------------------------------------------------- operations
def op_notify(services: MilestoneServices, call: ServiceCall) -> dict[str, Any]:
    """Service task `notify(event, to)`: an outbox row in this transaction."""
    event = str(call.params.get("event") or "").strip()
    if not event:
        raise ValueError("notify needs an event name")
    instance_id = _instance_id(services)
    recipients = resolve_recipients(services.uow, services.milestone, instance_id, call.params.get("to"), call.data)
    tasks = [t.id for t in _open_tasks(services.uow, instance_id)]
    message = notify(services.uow, event, recipients=recipients, milestone=services.milestone,
                     instance_id=instance_id, context={"task_ids": tasks, "bpmn_id": call.bpmn_id,
                                                       "process_id": call.process_id})
    return {"outbox_id": message.id, "recipients": recipients}


def op_escalate_tasks(services: MilestoneServices, call: ServiceCall) -> dict[str, Any]:
    """Service task `escalate_tasks(to, event)`: the groups in `to` become candidates of the
    instance's open tasks (the next level can act on them), and are notified."""
    uow = services.uow
    instance_id = _instance_id(services)
    tokens = _tokens(call.params.get("to"))
    groups = [t for t in tokens if t not in ("approvers", "submitter", "primary_contact", "group_lead")
              and not t.startswith("user:")]
    leads = sorted(_group_leads(uow, instance_id, call.data)) if "group_lead" in tokens else []
    tasks = _open_tasks(uow, instance_id)
    for task in tasks:
        present = {(c.kind, c.name) for c in task.candidates}
        added = [g for g in groups if ("group", g) not in present]
        for group in added:
            task.candidates.append(TaskCandidate(kind="group", name=group))
        for lead in leads:
            if ("user", lead) not in present:
                task.candidates.append(TaskCandidate(kind="user", name=lead))
                added.append(f"user:{lead}")
        if added:
            audit.record(uow, "task.escalated", "task", task.id,
                         after={"added_groups": added, "bpmn_id": task.bpmn_id, "by_step": call.bpmn_id})
    uow.flush()
    event = str(call.params.get("event") or "approval.escalated")
    recipients = resolve_recipients(uow, services.milestone, instance_id, call.params.get("to"), call.data)
    message = notify(uow, event, recipients=recipients, milestone=services.milestone, instance_id=instance_id,
                     context={"task_ids": [t.id for t in tasks], "bpmn_id": call.bpmn_id,
                              "escalated_to": groups})
    return {"outbox_id": message.id, "escalated_to": groups, "tasks": [t.id for t in tasks]}


def op_start_contact_tasks(services: MilestoneServices, call: ServiceCall) -> dict[str, Any]:
    """Lifecycle step `assign_contact_tasks`: start the primary contact's to-dos (once per milestone)."""
    from .runtime import start_instance

    uow, milestone = services.uow, services.milestone
    if milestone is None or milestone.primary_contact_id is None:
        return {"started": False, "reason": "the milestone has no primary contact"}
    existing = _contact_instance(uow, milestone.id)
    if existing is not None:
        return {"started": False, "instance_id": existing.id, "reason": "already started"}
    contact = uow.s.get(Contact, milestone.primary_contact_id)
    assert contact is not None
    username = None
    if contact.user_id is not None:
        username = uow.s.scalar(select(User.username).where(User.id == contact.user_id))
    if username is None and milestone.created_by_id is not None:
        # Until the contact has an account, the milestone's creator works the to-dos for them.
        username = uow.s.scalar(select(User.username).where(User.id == milestone.created_by_id))
    data = {
        "milestone_id": milestone.id, "milestone_code": milestone.code, "milestone_type": milestone.type,
        "amount": milestone.amount if milestone.amount is not None else Decimal("0"),
        "currency": milestone.currency, "due_date": milestone.due_date.isoformat() if milestone.due_date else None,
        "days_to_due": days_to_due(milestone), "contact_username": username,
    }
    loaded = start_instance(uow, services.cache, milestone, data, process_id=CONTACT_PROCESS, round=0)
    loaded.save()
    audit.record(uow, "contact_tasks.started", "milestone", milestone.id,
                 after={"instance_id": loaded.row.id, "contact_id": contact.id, "assignee": username})
    return {"started": True, "instance_id": loaded.row.id}


def op_end_contact_tasks(services: MilestoneServices, call: ServiceCall) -> dict[str, Any]:
    """Lifecycle steps `close_contact_tasks` (reason `submitted`: the open to-dos count as done) and
    `cancel_contact_tasks` (reason `cancelled`)."""
    from .runtime import load_instance

    uow, milestone = services.uow, services.milestone
    reason = str(call.params.get("reason") or "cancelled")
    if milestone is None:
        return {"closed": False}
    row = _contact_instance(uow, milestone.id)
    if row is None or row.status != "running":
        return {"closed": False, "reason": "no running to-dos"}
    loaded = load_instance(uow, services.cache, row.id)
    open_before = {t.id for t in _open_tasks(uow, row.id)}
    if reason == "submitted":
        try:
            loaded.instance.send_message("milestone_submitted", {"by_step": call.bpmn_id})
        except MessageNotExpected:
            loaded.instance.cancel()
    else:
        loaded.instance.cancel()
    loaded.save()
    now = utcnow()
    if reason != "submitted" or row.status == "running":
        row.status = "completed" if reason == "submitted" else "cancelled"
        row.completed_at = now
    if reason == "submitted":
        for task in uow.s.scalars(select(HumanTaskRow).where(HumanTaskRow.id.in_(open_before or {""}))):
            task.status = "completed"
            task.completed_at = now
            task.comment = "closed: the milestone was submitted"
    audit.record(uow, f"contact_tasks.{'closed' if reason == 'submitted' else 'cancelled'}", "milestone",
                 milestone.id, after={"instance_id": row.id, "open_tasks": sorted(open_before),
                                      "by_step": call.bpmn_id})
    return {"closed": True, "instance_id": row.id, "reason": reason}


def _instance_id(services: MilestoneServices) -> int | None:
    row = services.instance_row
    if row is not None and row.id is None:
        services.uow.flush()
    return row.id if row is not None else None


def _contact_instance(uow: UnitOfWork, milestone_id: int) -> WorkflowInstance | None:
    return uow.s.scalar(select(WorkflowInstance).where(WorkflowInstance.milestone_id == milestone_id,
                                                       WorkflowInstance.process_id == CONTACT_PROCESS)
                        .order_by(WorkflowInstance.id.desc()).limit(1))


OPERATIONS = {
    "notify": op_notify,
    "escalate_tasks": op_escalate_tasks,
    "start_contact_tasks": op_start_contact_tasks,
    "end_contact_tasks": op_end_contact_tasks,
}
