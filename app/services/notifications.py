"""Notifications: written to the outbox with the state change that causes them; read, marked read,
preferred, and (for operators) inspected and retried.

`notify` adds an outbox row in the caller's transaction, so a notification exists if and only if
its cause was committed. Workers turn outbox rows into deliveries (`app.services.delivery`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import select

from ..errors import Conflict, Forbidden, NotFound, ValidationFailed
from ..models import Delivery, Milestone, Notification, NotificationPreference, OutboxMessage, User, utcnow
from ..uow import UnitOfWork
from . import audit
from .records import Page, paginate

PERSONAL_CHANNELS = ("email", "in_app")
DELIVERY_STATUSES = ("pending", "sending", "delivered", "dead")

# Events the diagrams raise, with their title and first line. Other event names (a `notify` step an
# analyst added) get a generic text and the default channels.
EVENTS: dict[str, tuple[str, str]] = {
    "approval.reminder": ("Reminder: milestone {code} awaits your review",
                          "Milestone {code} ({amount}) was submitted for approval and still waits for a decision."),
    "approval.escalated": ("Escalated: the review of milestone {code} is overdue",
                           "The review of milestone {code} ({amount}) is past its due date; it is now yours too."),
    "approval.declined": ("Declined: milestone {code} needs rework",
                          "Milestone {code} ({amount}) was declined. Address the reasons below, then resubmit it."),
    "payment.instruction": ("Payment instruction for milestone {code}",
                            "An approved milestone moved money: the instruction below, keyed by its idempotency key."),
    "contact.tasks_assigned": ("Milestone {code} is active: your to-dos",
                               "Answer the objective questions, upload the evidence and submit milestone {code}"
                               "{due_note}."),
    "contact.reminder": ("Reminder: milestone {code} is due{due}",
                         "Milestone {code} is not submitted yet{due}. Please finish your to-dos and submit it."),
    "contact.overdue": ("Overdue: milestone {code} was due{due}",
                        "Milestone {code} is past its due date and has not been submitted."),
}


# --------------------------------------------------------------------------- writing
def notify(uow: UnitOfWork, event: str, *, recipients: dict[str, list[Any]], milestone: Milestone | None = None,
           instance_id: int | None = None, context: dict[str, Any] | None = None) -> OutboxMessage:
    """Add a notification to the outbox in the caller's transaction (no commit).

    `recipients`: {"users": [usernames], "groups": [names], "contacts": [contact ids]}. After the
    caller commits, the unit of work's doorbell (if any) rings the dispatcher.
    """
    payload = compose(event, milestone, context or {})
    message = OutboxMessage(event=event, milestone_id=milestone.id if milestone else None, instance_id=instance_id,
                            recipients={k: sorted(set(v), key=str) for k, v in recipients.items() if v},
                            payload=payload, status="pending")
    uow.s.add(message)
    uow.flush()
    audit.record(uow, "notification.queued", "outbox", message.id,
                 after={"event": event, "milestone_id": message.milestone_id, "recipients": message.recipients})
    doorbell = uow.doorbell
    if doorbell is not None:
        outbox_id = message.id
        uow.after_commit(lambda: doorbell.ring("dispatch_outbox", [outbox_id]))
    return message


def compose(event: str, milestone: Milestone | None, context: dict[str, Any]) -> dict[str, Any]:
    """Title, body and facts of a notification, fixed when it is written."""
    facts: dict[str, Any] = {"event": event, **{k: v for k, v in context.items() if _plain(v)}}
    code, amount, due, due_note = "?", "", "", ""
    if milestone is not None:
        code = milestone.code
        amount = f"{milestone.amount} {milestone.currency}" if milestone.amount is not None else "non-financial"
        due = f" on {milestone.due_date.isoformat()}" if milestone.due_date else ""
        due_note = f" (due {milestone.due_date.isoformat()})" if milestone.due_date else ""
        facts.update(milestone_id=milestone.id, milestone_code=milestone.code, contract_id=milestone.contract_id,
                     due_date=milestone.due_date.isoformat() if milestone.due_date else None,
                     status=milestone.status)
    title, first = EVENTS.get(event, ("Milestone {code}: " + event, "Milestone {code}: " + event + "."))
    values = {"code": code, "amount": amount, "due": due, "due_note": due_note}
    lines = [first.format(**values)]
    for reason in context.get("reasons") or []:
        lines.append(f"- {reason}")
    if context.get("task_ids"):
        lines.append("Open tasks: " + ", ".join(f"/api/v1/tasks/{t}" for t in context["task_ids"]))
    if milestone is not None:
        lines.append(f"Milestone: /api/v1/milestones/{milestone.id}")
    return {"title": title.format(**values)[:300], "body": "\n".join(lines), "facts": facts}


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


# --------------------------------------------------------------------------- preferences
@dataclass
class Preferences:
    events: dict[str, list[str]]
    channels: tuple[str, ...]
    email: str | None


def channels_for(preference: NotificationPreference | None, event: str) -> list[str]:
    """The personal channels a user wants for `event` (default: all of them)."""
    if preference is None or event not in (preference.events or {}):
        return list(PERSONAL_CHANNELS)
    return [c for c in preference.events[event] if c in PERSONAL_CHANNELS]


def get_preferences(uow: UnitOfWork, user: User) -> Preferences:
    preference = uow.s.get(NotificationPreference, user.id)
    return Preferences(events={e: channels_for(preference, e) for e in EVENTS}, channels=PERSONAL_CHANNELS,
                       email=user.email)


def set_preferences(uow: UnitOfWork, user: User, events: dict[str, list[str]],
                    email: str | None = None) -> Preferences:
    """Replace the user's channels per event (events left out keep the default); commits.

    Raises ValidationFailed for unknown events or channels.
    """
    errors: dict[str, list[str]] = {}
    for event, channels in events.items():
        if event not in EVENTS:
            errors.setdefault("events", []).append(f"unknown event {event!r} (known: {', '.join(EVENTS)})")
        bad = [c for c in channels if c not in PERSONAL_CHANNELS]
        if bad:
            errors.setdefault("events", []).append(
                f"{event}: unknown channel(s) {', '.join(bad)} (known: {', '.join(PERSONAL_CHANNELS)})")
    if errors:
        raise ValidationFailed("the preferences are not valid", errors)
    preference = uow.s.get(NotificationPreference, user.id)
    before = dict(preference.events) if preference is not None else None
    if preference is None:
        preference = NotificationPreference(user_id=user.id, events={})
        uow.s.add(preference)
    preference.events = {e: list(dict.fromkeys(c)) for e, c in events.items()}
    preference.updated_at = utcnow()
    stored = uow.s.get(User, user.id)
    assert stored is not None
    if email is not None:
        stored.email = email.strip().lower() or None
    audit.record(uow, "notification_preferences.changed", "user", user.id, before={"events": before},
                 after={"events": preference.events, "email": stored.email})
    uow.commit()
    return get_preferences(uow, stored)


# --------------------------------------------------------------------------- in-app
def list_notifications(uow: UnitOfWork, user: User, *, page: int, page_size: int,
                       unread: bool | None = None) -> Page:
    """The caller's in-app notifications, newest first."""
    stmt = select(Notification).where(Notification.user_id == user.id)
    if unread is True:
        stmt = stmt.where(Notification.read_at.is_(None))
    elif unread is False:
        stmt = stmt.where(Notification.read_at.is_not(None))
    return paginate(uow, stmt.order_by(Notification.id.desc()), page, page_size)


def mark_read(uow: UnitOfWork, user: User, notification_id: int) -> Notification:
    """Mark one of the caller's notifications read (idempotent); commits. NotFound for anyone else's."""
    notification = uow.s.get(Notification, notification_id)
    if notification is None or notification.user_id != user.id:
        raise NotFound(f"no notification {notification_id}")
    if notification.read_at is None:
        notification.read_at = utcnow()
        uow.commit()
    return notification


# --------------------------------------------------------------------------- operators
def _require_admin(user: User, action: str) -> None:
    if not user.is_admin:
        raise Forbidden(f"only administrators may {action}")


def list_deliveries(uow: UnitOfWork, user: User, *, page: int, page_size: int, status: str | None = None,
                    channel: str | None = None, event: str | None = None) -> Page:
    """Deliveries, newest first. Raises Forbidden unless admin."""
    _require_admin(user, "see deliveries")
    stmt = select(Delivery)
    if status:
        stmt = stmt.where(Delivery.status == status)
    if channel:
        stmt = stmt.where(Delivery.channel == channel)
    if event:
        stmt = stmt.where(Delivery.event == event)
    return paginate(uow, stmt.order_by(Delivery.id.desc()), page, page_size)


def get_delivery(uow: UnitOfWork, user: User, delivery_id: int) -> Delivery:
    _require_admin(user, "see deliveries")
    delivery = uow.s.get(Delivery, delivery_id)
    if delivery is None:
        raise NotFound(f"no delivery {delivery_id}")
    return delivery


def retry_delivery(uow: UnitOfWork, user: User, delivery_id: int) -> Delivery:
    """Give a dead delivery a fresh set of attempts, due now; commits and rings the workers.

    Raises Forbidden (not admin), NotFound, Conflict (not dead).
    """
    delivery = get_delivery(uow, user, delivery_id)
    if delivery.status != "dead":
        raise Conflict(f"delivery {delivery_id} is {delivery.status}; only dead deliveries are retried",
                       delivery_status=delivery.status)
    before = {"status": delivery.status, "attempts": delivery.attempts, "last_error": delivery.last_error}
    delivery.status = "pending"
    delivery.attempts = 0
    delivery.next_attempt_at = delivery.updated_at = utcnow()
    delivery.lease_until = None
    audit.record(uow, "delivery.retried", "delivery", delivery.id, before=before,
                 after={"status": "pending", "by": user.username})
    doorbell = uow.doorbell
    if doorbell is not None:
        uow.after_commit(lambda: doorbell.ring("deliver", [delivery_id]))
    uow.commit()
    return delivery


def today() -> date:
    return utcnow().date()
