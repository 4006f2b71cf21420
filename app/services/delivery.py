"""Delivering the outbox: dispatch (outbox row → deliveries), deliver (one attempt), sweep, pump.

At least once, effect once:
- `dispatch_outbox` claims a pending outbox row (`FOR UPDATE SKIP LOCKED` on PostgreSQL) and, in
  one transaction, creates its deliveries (one per channel and recipient, unique) and in-app
  notifications, and marks it dispatched: running it twice creates nothing twice.
- `deliver` claims a due delivery with a lease, sends outside any transaction, then records the
  outcome; a worker killed mid-send leaves the lease to expire and the delivery is claimed and sent
  again with the same idempotency key, so the receiver can drop the repeat. Failures back off
  exponentially (`backoff * 2**(attempt-1)`); after the last attempt the delivery is dead.
- `due_work` is what a sweeper re-rings when Redis lost its messages: nothing lives only in Redis.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from ..channels import OutgoingMessage, Transport
from ..config import NotificationSettings
from ..models import (
    Contact,
    Delivery,
    Group,
    Membership,
    Notification,
    NotificationPreference,
    OutboxMessage,
    User,
    utcnow,
)
from ..uow import UnitOfWork
from .notifications import channels_for

log = logging.getLogger(__name__)
PAYMENT = "payment"
MAX_PAYMENT_WAIT = 3600.0


def idempotency_key(outbox_id: int, channel: str, recipient: str) -> str:
    digest = hashlib.sha256(f"{outbox_id}|{channel}|{recipient}".encode()).hexdigest()[:40]
    return f"dlv_{digest}"


# --------------------------------------------------------------------------- dispatch
@dataclass
class _Recipient:
    user: User | None
    email: str | None
    channels: list[str]


def _recipients(uow: UnitOfWork, message: OutboxMessage) -> list[_Recipient]:
    spec = message.recipients or {}
    users: dict[int, User] = {}
    for user in uow.s.scalars(select(User).where(User.username.in_(spec.get("users") or [""]))):
        users[user.id] = user
    if spec.get("groups"):
        members = select(User).join(Membership, Membership.user_id == User.id) \
            .join(Group, Group.id == Membership.group_id).where(Group.name.in_(spec["groups"]))
        for user in uow.s.scalars(members):
            users[user.id] = user
    contact_email: dict[int, str] = {}
    out: list[_Recipient] = []
    for contact in uow.s.scalars(select(Contact).where(Contact.id.in_(spec.get("contacts") or [0]))):
        if contact.user_id is not None:
            linked = uow.s.get(User, contact.user_id)
            if linked is not None:
                users[linked.id] = linked
                contact_email.setdefault(linked.id, contact.email)
                continue
        # A contact without a user account has no preferences: e-mail is all we can do.
        out.append(_Recipient(None, contact.email, ["email"]))
    preferences = {p.user_id: p for p in uow.s.scalars(
        select(NotificationPreference).where(NotificationPreference.user_id.in_(list(users) or [0])))}
    for user_id, user in sorted(users.items()):
        out.append(_Recipient(user, user.email or contact_email.get(user_id),
                              channels_for(preferences.get(user_id), message.event)))
    return out


def dispatch_outbox(session_factory: sessionmaker[Session], settings: NotificationSettings, outbox_id: int, *,
                    doorbell: Any = None) -> list[int]:
    """Turn one pending outbox row into its deliveries; returns the ids of those still to send.

    Does nothing (returns []) when the row is already dispatched or another worker holds it.
    """
    with UnitOfWork(session_factory) as uow:
        uow.doorbell = doorbell
        message = uow.s.scalar(select(OutboxMessage).where(OutboxMessage.id == outbox_id,
                                                           OutboxMessage.status == "pending")
                               .with_for_update(skip_locked=True))
        if message is None:
            return []
        now = utcnow()
        seen: set[tuple[str, str]] = set()
        deliveries: list[Delivery] = []

        def add(channel: str, recipient: str, user: User | None, status: str = "pending") -> Delivery | None:
            if (channel, recipient) in seen:
                return None
            seen.add((channel, recipient))
            delivery = Delivery(outbox_id=message.id, event=message.event, channel=channel, recipient=recipient,
                                user_id=user.id if user else None,
                                idempotency_key=idempotency_key(message.id, channel, recipient),
                                status=status, attempts=0, next_attempt_at=now, created_at=now, updated_at=now,
                                delivered_at=now if status == "delivered" else None)
            uow.s.add(delivery)
            deliveries.append(delivery)
            return delivery

        payload = message.payload or {}
        for recipient in _recipients(uow, message):
            if recipient.user is not None and "in_app" in recipient.channels:
                delivery = add("in_app", f"user:{recipient.user.id}", recipient.user, status="delivered")
                if delivery is not None:
                    delivery.attempts = 1
                    uow.flush()
                    uow.s.add(Notification(user_id=recipient.user.id, delivery_id=delivery.id, event=message.event,
                                           title=str(payload.get("title", message.event))[:300],
                                           body=str(payload.get("body", "")), milestone_id=message.milestone_id))
            if "email" in recipient.channels and recipient.email:
                add("email", recipient.email.strip().lower(), recipient.user)
        if (message.recipients or {}).get("payment"):
            # A payment instruction goes to the payment endpoint only, with the ledger entry's own key:
            # the receiver applies each key once, however often it is delivered.
            delivery = add("payment", settings.payment_url or "log:payments.log", None)
            facts = payload.get("facts") or {}
            if delivery is not None and facts.get("payment_key"):
                delivery.idempotency_key = str(facts["payment_key"])
        elif settings.webhook_url:
            add("webhook", settings.webhook_url, None)
        message.status = "dispatched"
        message.dispatched_at = now
        uow.flush()
        to_send = [d.id for d in deliveries if d.status == "pending"]
        if doorbell is not None and to_send:
            uow.after_commit(lambda: doorbell.ring("deliver", to_send))
        uow.commit()
        return to_send


# --------------------------------------------------------------------------- deliver
def _due(now: datetime) -> Any:
    return or_(and_(Delivery.status == "pending", Delivery.next_attempt_at <= now),
               and_(Delivery.status == "sending", Delivery.lease_until < now))


def deliver(session_factory: sessionmaker[Session], settings: NotificationSettings,
            transports: Mapping[str, Transport], delivery_id: int) -> str:
    """One attempt at one delivery. Returns delivered | retry | dead | skipped (not due, or held).

    Never raises for a failed send (the delivery records it); database errors propagate so that
    the caller (a Celery task) retries the attempt.
    """
    with UnitOfWork(session_factory) as uow:
        now = utcnow()
        delivery = uow.s.scalar(select(Delivery).where(Delivery.id == delivery_id, _due(now))
                                .with_for_update(skip_locked=True))
        if delivery is None:
            return "skipped"
        message = uow.s.get(OutboxMessage, delivery.outbox_id)
        assert message is not None
        delivery.status = "sending"
        delivery.attempts += 1
        delivery.lease_until = now + timedelta(seconds=settings.lease_seconds)
        delivery.updated_at = now
        attempt = delivery.attempts
        payload = message.payload or {}
        outgoing = OutgoingMessage(delivery_id=delivery.id, key=delivery.idempotency_key, event=delivery.event,
                                   channel=delivery.channel, recipient=delivery.recipient,
                                   title=str(payload.get("title", delivery.event)), body=str(payload.get("body", "")),
                                   facts=dict(payload.get("facts") or {}), created_at=message.created_at)
        uow.commit()
    error: str | None = None
    transport = transports.get(outgoing.channel)
    if transport is None:
        error = f"no transport for channel {outgoing.channel!r} (not configured)"
    else:
        try:
            transport.send(outgoing)
        except Exception as exc:  # any failure of the far side is recorded and retried
            error = f"{type(exc).__name__}: {exc}"[:2000]
    with UnitOfWork(session_factory) as uow:
        delivery = uow.s.get(Delivery, delivery_id)
        assert delivery is not None
        # Someone else took over after our lease ran out: their attempt owns the outcome now.
        if delivery.status != "sending" or delivery.attempts != attempt:
            return "skipped"
        now = utcnow()
        delivery.updated_at = now
        delivery.lease_until = None
        if error is None:
            delivery.status = "delivered"
            delivery.delivered_at = now
            delivery.last_error = None
            outcome = "delivered"
        else:
            delivery.last_error = error
            if attempt >= settings.max_attempts and delivery.channel != PAYMENT:
                delivery.status = "dead"
                outcome = "dead"
                log.error("delivery %s (%s to %s) is dead after %s attempts: %s", delivery.id, delivery.channel,
                          delivery.recipient, attempt, error)
            else:
                delivery.status = "pending"
                # A payment instruction never dies: it is retried until acknowledged, at most hourly.
                wait = settings.backoff_seconds * 2 ** min(attempt - 1, 20)
                delivery.next_attempt_at = now + timedelta(seconds=min(wait, MAX_PAYMENT_WAIT)
                                                           if delivery.channel == PAYMENT else wait)
                outcome = "retry"
                log.warning("delivery %s attempt %s failed, next at %s: %s", delivery.id, attempt,
                            delivery.next_attempt_at.isoformat(), error)
        uow.commit()
        return outcome


# --------------------------------------------------------------------------- sweep, pump
@dataclass
class DueWork:
    outbox_ids: list[int] = field(default_factory=list)
    delivery_ids: list[int] = field(default_factory=list)


def due_work(session_factory: sessionmaker[Session], *, limit: int = 500) -> DueWork:
    """Pending outbox rows and due deliveries (including expired leases), oldest first."""
    with UnitOfWork(session_factory) as uow:
        now = utcnow()
        outbox = list(uow.s.scalars(select(OutboxMessage.id).where(OutboxMessage.status == "pending")
                                    .order_by(OutboxMessage.id).limit(limit)))
        deliveries = list(uow.s.scalars(select(Delivery.id).where(_due(now))
                                        .order_by(Delivery.next_attempt_at, Delivery.id).limit(limit)))
        return DueWork(outbox, deliveries)


@dataclass
class PumpRun:
    dispatched: list[int] = field(default_factory=list)
    outcomes: dict[int, str] = field(default_factory=dict)


def pump(session_factory: sessionmaker[Session], settings: NotificationSettings,
         transports: Mapping[str, Transport], *, limit: int = 500,
         on_delivery: Callable[[int, str], None] | None = None) -> PumpRun:
    """Dispatch every pending outbox row and make one attempt at every due delivery, in this thread
    (the embedded scheduler's round; Celery runs the same services as separate tasks)."""
    run = PumpRun()
    work = due_work(session_factory, limit=limit)
    to_deliver = list(work.delivery_ids)
    for outbox_id in work.outbox_ids:
        created = dispatch_outbox(session_factory, settings, outbox_id)
        run.dispatched.append(outbox_id)
        to_deliver.extend(created)
    for delivery_id in dict.fromkeys(to_deliver):
        outcome = deliver(session_factory, settings, transports, delivery_id)
        run.outcomes[delivery_id] = outcome
        if on_delivery is not None:
            on_delivery(delivery_id, outcome)
    return run
