"""Notifications end to end on real channels: e-mail to a real SMTP server (aiosmtpd), webhooks to a
real HTTP receiver (signature, timestamp, retries with backoff, dead letters), in-app rows; the
outbox dispatched once under concurrency; the embedded scheduler and its lease; the one-command
demo sending reminders. SQLite and PostgreSQL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import select

from app.channels import build_transports
from app.config import NotificationSettings
from app.models import Delivery, Notification, OutboxMessage
from app.scheduler import Scheduler
from app.services.delivery import deliver, dispatch_outbox, pump
from tests.notify_support import SmtpSink, WebhookReceiver, count, outbox, wait_for


def _state(app: Any) -> Any:
    return app.extensions["milestones"]


@pytest.fixture
def smtp() -> Any:
    sink = SmtpSink().start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
def receiver() -> Any:
    hook = WebhookReceiver().start()
    try:
        yield hook
    finally:
        hook.stop()


@pytest.fixture
def contact_milestone(people: dict[str, Any], contract: dict[str, Any], make_user: Any) -> Any:
    """Activate a milestone whose primary contact is linked to the user cora (with an e-mail address)."""
    cora = make_user("cora")
    alice = people["alice"]
    put = cora.client.put("/api/v1/me/notification-preferences", json={"events": {}, "email": "cora@supplier.example"},
                          headers={"Authorization": f"Bearer {cora.token}"})
    assert put.status_code == 200, put.get_json()
    contact = alice.post(f"/accounts/{contract['account_id']}/contacts",
                         {"name": "Cora", "email": "cora.contact@supplier.example", "username": "cora"}).get_json()

    def activate(code: str = "C1", days: int = 30) -> dict[str, Any]:
        created = alice.post("/milestones", {"contract_id": contract["id"], "code": code, "type": "financial",
                                             "amount": "1000.00", "primary_contact_id": contact["id"],
                                             "due_date": (date.today() + timedelta(days=days)).isoformat()})
        assert created.status_code == 201, created.get_json()
        activated = alice.post(f"/milestones/{created.get_json()['id']}/activation")
        assert activated.status_code == 200, activated.get_json()
        return activated.get_json()

    return activate


def _settings(**changes: Any) -> NotificationSettings:
    return replace(NotificationSettings(), **changes)


def test_email_goes_to_a_real_smtp_server_with_the_idempotency_key(app, smtp, contact_milestone, tmp_path):
    settings = _settings(smtp_host="127.0.0.1", smtp_port=smtp.port, mail_from="milestones@example.test")
    milestone = contact_milestone()
    run = pump(_state(app).session_factory, settings, build_transports(settings, tmp_path))
    assert len(run.dispatched) == 1 and set(run.outcomes.values()) == {"delivered"}
    [mail] = smtp.messages
    assert mail["To"] == "cora@supplier.example" and mail["From"] == "milestones@example.test"
    assert mail["Subject"] == f"Milestone {milestone['code']} is active: your to-dos"
    with _state(app).session_factory() as s:
        [email] = s.scalars(select(Delivery).where(Delivery.channel == "email"))
        assert email.status == "delivered" and email.attempts == 1
        assert mail["X-Idempotency-Key"] == email.idempotency_key
        assert mail["Message-ID"] == f"<{email.idempotency_key}@milestones>"
        [note] = s.scalars(select(Notification))  # the in-app copy, written at dispatch
        assert note.title == mail["Subject"]
    # a second round finds nothing to do: nothing is sent twice
    assert pump(_state(app).session_factory, settings, build_transports(settings, tmp_path)).outcomes == {}
    assert len(smtp.messages) == 1


def test_webhooks_are_signed_retried_with_backoff_and_dead_after_the_last_attempt(app, contact_milestone, tmp_path):
    receiver = WebhookReceiver(secret="s3cret", fail_first=2).start()
    try:
        settings = _settings(webhook_url=receiver.url, webhook_secret="s3cret", max_attempts=3, backoff_seconds=0.2)
        transports = build_transports(settings, tmp_path)
        factory = _state(app).session_factory
        contact_milestone()
        [outbox_id] = [m.id for m in outbox(app)]
        created = dispatch_outbox(factory, settings, outbox_id)
        [hook_id] = [d for d in created if _delivery(app, d).channel == "webhook"]
        assert deliver(factory, settings, transports, hook_id) == "retry"
        first = _delivery(app, hook_id)
        assert deliver(factory, settings, transports, hook_id) == "skipped"  # not due before its backoff
        wait_for(lambda: _delivery(app, hook_id).next_attempt_at <= _now(), 2, "the first backoff")
        assert deliver(factory, settings, transports, hook_id) == "retry"
        second = _delivery(app, hook_id)
        # exponential: 0.2 s after the first failure, 0.4 s after the second
        assert 0.15 < (first.next_attempt_at - first.updated_at).total_seconds() < 0.3
        assert 0.35 < (second.next_attempt_at - second.updated_at).total_seconds() < 0.5
        assert "500" in (second.last_error or "")
        wait_for(lambda: _delivery(app, hook_id).next_attempt_at <= _now(), 2, "the second backoff")
        assert deliver(factory, settings, transports, hook_id) == "delivered"
        assert _delivery(app, hook_id).attempts == 3
        assert len(receiver.requests) == 3 and all(r.signature_ok for r in receiver.requests)
        keys = {r.key for r in receiver.requests}
        assert keys == {_delivery(app, hook_id).idempotency_key}
        [effect] = receiver.effects.values()
        assert effect.event == "contact.tasks_assigned" and effect.body["data"]["milestone_code"] == "C1"
        assert effect.headers["X-Milestones-Timestamp"].isdigit()

        # a receiver that is gone: after the last attempt the delivery is dead
        dead_settings = replace(settings, webhook_url=f"http://127.0.0.1:{_closed_port()}/gone", max_attempts=2,
                                backoff_seconds=0.05)
        contact_milestone("C2")
        [second_outbox] = [m.id for m in outbox(app) if m.status == "pending"]
        [gone] = [d for d in dispatch_outbox(factory, dead_settings, second_outbox)
                  if _delivery(app, d).channel == "webhook"]
        dead_transports = build_transports(dead_settings, tmp_path)
        assert deliver(factory, dead_settings, dead_transports, gone) == "retry"
        time.sleep(0.1)
        assert deliver(factory, dead_settings, dead_transports, gone) == "dead"
        assert "Connection refused" in (_delivery(app, gone).last_error or "")
    finally:
        receiver.stop()


def _delivery(app: Any, delivery_id: int) -> Delivery:
    with _state(app).session_factory() as s:
        row = s.get(Delivery, delivery_id)
        assert row is not None
        s.expunge(row)
        return row


def _now() -> Any:
    from app.models import utcnow

    return utcnow()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_concurrent_dispatchers_create_each_delivery_once(app, contact_milestone):
    for code in ("C1", "C2", "C3"):
        contact_milestone(code)
    ids = [m.id for m in outbox(app)]
    settings = _settings(webhook_url="http://127.0.0.1:9/unused")
    barrier = threading.Barrier(4)
    created: list[int] = []
    errors: list[BaseException] = []

    def dispatcher() -> None:
        try:
            barrier.wait()
            for outbox_id in ids:
                created.extend(dispatch_outbox(_state(app).session_factory, settings, outbox_id))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    # per outbox row: cora's e-mail and webhook to send, her in-app notification written
    assert len(created) == len(set(created)) == 2 * len(ids)
    assert count(app, Delivery) == 3 * len(ids) and count(app, Notification) == len(ids)
    assert count(app, OutboxMessage, OutboxMessage.status == "dispatched") == len(ids)


def test_one_embedded_scheduler_holds_the_lease_and_another_takes_over(app, contact_milestone, tmp_path):
    state = _state(app)
    first, second = Scheduler(state, interval=0.1, lease_seconds=0.5), Scheduler(state, interval=0.1,
                                                                                lease_seconds=0.5)
    contact_milestone()
    assert first.run_once().held is True
    assert first.hold_lease()  # renewed, as every round does
    assert second.run_once().held is False  # held by the first
    assert count(app, OutboxMessage, OutboxMessage.status == "pending") == 0
    assert count(app, Delivery, Delivery.status == "delivered") == 2  # cora's in-app and e-mail (to the log)
    assert "Subject: Milestone C1 is active: your to-dos" in (state.settings.instance_dir / "mail.log").read_text()
    time.sleep(0.6)  # the first stops renewing: its lease runs out
    assert second.run_once().held is True
    assert second.hold_lease()
    assert first.run_once().held is False
    second.release_lease()
    assert first.run_once().held is True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_one_command_demo_sends_reminders_from_one_scheduler(tmp_path):
    """`milestones serve --demo` without REDIS_URL, two gunicorn workers: the embedded scheduler
    e-mails the demo contact (to instance/mail.log), each message once."""
    port = _free_port()
    env = {**os.environ, "MILESTONES_INSTANCE_DIR": str(tmp_path / "instance"), "MILESTONES_SCHEDULER_INTERVAL": "0.3"}
    for key in ("DATABASE_URL", "REDIS_URL", "MILESTONES_SMTP_HOST", "MILESTONES_WEBHOOK_URL"):
        env.pop(key, None)
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", "2", "--threads", "2", "--demo"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    mail_log = tmp_path / "instance" / "mail.log"
    try:
        def ready() -> bool:
            assert server.poll() is None, "the server exited"
            try:
                return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(ready, 60, "the server", interval=0.3)
        # M2 is due in 5 days: its first reminder (7 days before) went out at activation
        wait_for(lambda: mail_log.exists() and mail_log.read_text().count("Message-ID:") >= 4, 30,
                 "the demo's e-mails", interval=0.3)
        time.sleep(1.0)  # a few more scheduler rounds in both workers: nothing is sent again
        text = mail_log.read_text()
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    ids = [line for line in text.splitlines() if line.startswith("Message-ID:")]
    assert len(ids) == len(set(ids)) == 4, text
    assert "Subject: Reminder: milestone M2 is due on" in text
    assert text.count("To: erin@acme.example") == 4
    assert output.count("holds the lease") == 1, output
    assert output.count("embedded scheduler") >= 3  # both workers started one; one of them works
    assert "e-mails are logged and appended to" in output


def test_a_broker_that_is_down_does_not_hold_up_the_request(app, people, contract, db_url, tmp_path):
    """With REDIS_URL pointing nowhere the commit stands, the ring is logged, and the scheduler's
    sweep (here: a pump) still finds the work in the outbox."""
    from app import make_doorbell
    from app.config import Settings

    state = _state(app)
    state.doorbell = make_doorbell(Settings.from_env(database_url=db_url, redis_url="redis://127.0.0.1:1/0"))
    try:
        alice = people["alice"]
        contact = alice.post(f"/accounts/{contract['account_id']}/contacts",
                             {"name": "Dora", "email": "dora@supplier.example"}).get_json()
        created = alice.post("/milestones", {"contract_id": contract["id"], "code": "D1", "type": "financial",
                                             "amount": "1000.00", "primary_contact_id": contact["id"]}).get_json()
        started = time.monotonic()
        assert alice.post(f"/milestones/{created['id']}/activation").status_code == 200
        assert time.monotonic() - started < 2.0
    finally:
        state.doorbell = None
    [message] = outbox(app)
    assert message.status == "pending"
    settings = _settings()
    assert pump(state.session_factory, settings, build_transports(settings, tmp_path)).dispatched == [message.id]
