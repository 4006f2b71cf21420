"""Transports that carry one delivery out of the service: e-mail (SMTP, or a log file) and webhooks.

A transport raises on failure and returns on success; retries, backoff and leases are the
delivery service's business. Every message carries the delivery's idempotency key, so a receiver
that sees a message twice (a worker died after sending and before recording it) can drop it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any, Protocol

from .config import NotificationSettings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Milestones-Signature"
TIMESTAMP_HEADER = "X-Milestones-Timestamp"


@dataclass(frozen=True)
class OutgoingMessage:
    delivery_id: int
    key: str  # the idempotency key
    event: str
    channel: str
    recipient: str
    title: str
    body: str
    facts: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None


class Transport(Protocol):
    def send(self, message: OutgoingMessage) -> None: ...


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<body>`: what receivers recompute and compare."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookTransport:
    """POSTs JSON; a 2xx answer is success. Headers: Idempotency-Key, X-Milestones-Event,
    X-Milestones-Delivery, X-Milestones-Timestamp (Unix seconds) and, with a secret,
    X-Milestones-Signature (see `sign`): receivers reject stale timestamps and bad signatures."""

    def __init__(self, secret: str | None, timeout: float):
        self.secret = secret
        self.timeout = timeout

    def send(self, message: OutgoingMessage) -> None:
        body = json.dumps({
            "id": message.key, "event": message.event, "delivery_id": message.delivery_id,
            "created_at": message.created_at.isoformat() if message.created_at else None,
            "title": message.title, "body": message.body, "data": message.facts,
        }, sort_keys=True, default=str).encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": "contract-milestones",
                   "Idempotency-Key": message.key, "X-Milestones-Event": message.event,
                   "X-Milestones-Delivery": str(message.delivery_id), TIMESTAMP_HEADER: timestamp}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, timestamp, body)
        request = urllib.request.Request(message.recipient, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (configured URL)
                response.read(1024)
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"webhook answered {exc.code} {exc.reason}") from None


class SmtpTransport:
    """Sends with the standard library's smtplib; one connection per message."""

    def __init__(self, settings: NotificationSettings):
        self.settings = settings

    def send(self, message: OutgoingMessage) -> None:
        s = self.settings
        assert s.smtp_host is not None
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=30) as smtp:
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password or "")
            smtp.send_message(email_message(message, s.mail_from))


class LogMailer:
    """Without an SMTP server: each e-mail goes to the log and is appended to `path` (the demo's inbox)."""

    def __init__(self, path: Path, mail_from: str):
        self.path = path
        self.mail_from = mail_from
        self._lock = threading.Lock()

    def send(self, message: OutgoingMessage) -> None:
        text = email_message(message, self.mail_from).as_string()
        log.info("e-mail to %s: %s (delivery %s, key %s)", message.recipient, message.title, message.delivery_id,
                 message.key)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as out:
                out.write(text.rstrip("\n") + "\n\n")


def email_message(message: OutgoingMessage, mail_from: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = mail_from
    mail["To"] = message.recipient
    mail["Subject"] = message.title
    if message.created_at is not None:
        mail["Date"] = format_datetime(message.created_at)
    # The same Message-ID on every attempt: mail systems and people can recognize a repeat.
    mail["Message-ID"] = f"<{message.key}@milestones>" if message.key else make_msgid()
    mail["X-Idempotency-Key"] = message.key
    mail["X-Milestones-Event"] = message.event
    mail.set_content(message.body + "\n")
    return mail


class PaymentLog:
    """The embedded default for payment instructions (no MILESTONES_PAYMENT_URL): one JSON line each in
    <instance>/payments.log, keyed by the instruction's idempotency key."""

    def __init__(self, path: Path):
        self.path = path

    def send(self, message: OutgoingMessage) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"id": message.key, "event": message.event, "data": message.facts}, sort_keys=True,
                          default=str)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        log.info("payment instruction %s: %s", message.key, line)


def build_transports(settings: NotificationSettings, instance_dir: Path) -> dict[str, Transport]:
    email: Transport = SmtpTransport(settings) if settings.smtp_host else \
        LogMailer(instance_dir / "mail.log", settings.mail_from)
    transports: dict[str, Transport] = {"email": email}
    if settings.webhook_url:
        if not settings.webhook_secret:
            log.warning("MILESTONES_WEBHOOK_URL is set without MILESTONES_WEBHOOK_SECRET: webhooks are not signed")
        transports["webhook"] = WebhookTransport(settings.webhook_secret, settings.webhook_timeout)
    if settings.payment_url:
        if not settings.payment_secret:
            log.warning("MILESTONES_PAYMENT_URL is set without MILESTONES_PAYMENT_SECRET: instructions are not signed")
        transports["payment"] = WebhookTransport(settings.payment_secret, settings.webhook_timeout)
    else:
        transports["payment"] = PaymentLog(instance_dir / "payments.log")
    return transports
