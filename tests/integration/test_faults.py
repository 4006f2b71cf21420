"""Faults with real `celery worker` processes on the real Redis and PostgreSQL.

- a worker killed with SIGKILL in the middle of a delivery: another worker delivers it again, and
  the receiver, deduplicating by the idempotency key, applies it once;
- Redis flushed with messages in flight: the sweeper re-rings from the outbox and the timers, and
  nothing is lost;
- the worker's database connection terminated in the middle of a task: the task retries and its
  effect happens once.

Workers run the solo pool (concurrency 1) against a dedicated Redis database and the test schema;
every worker this module starts is ended when its test ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import make_url, select, text

from app.models import Delivery, Incident, OutboxMessage, WorkflowInstance
from app.worker import CeleryDoorbell, make_celery
from tests.conftest import require_service
from tests.notify_support import ROOT, WebhookReceiver, deploy, outbox, policy_bundle, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.faults]

BROKER_URL = os.environ.get("TEST_FAULTS_REDIS_URL", "redis://127.0.0.1:6379/13")
WORKER_APP_NAME = "milestones-fault-worker"


@pytest.fixture
def db_url(pg_schema_url: str) -> str:
    """PostgreSQL only: the faults are the server's (connections, locks)."""
    return pg_schema_url


@pytest.fixture
def broker() -> Any:
    client = redis.Redis.from_url(BROKER_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        require_service("Redis", exc)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


class Workers:
    """Starts `celery worker` processes and always ends them."""

    def __init__(self, db_url: str, tmp_path: Path):
        self.db_url = db_url
        self.tmp_path = tmp_path
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def log(self, name: str) -> str:
        path = self.tmp_path / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, name: str, *, beat: bool = False, webhook: str | None = None) -> subprocess.Popen[bytes]:
        url = make_url(self.db_url).update_query_dict({"application_name": WORKER_APP_NAME})
        env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": BROKER_URL,
               "DATABASE_URL": url.render_as_string(hide_password=False),
               "MILESTONES_INSTANCE_DIR": str(self.tmp_path / "instance"),
               "MILESTONES_DELIVERY_LEASE": "2", "MILESTONES_DELIVERY_BACKOFF": "0.2",
               "MILESTONES_SWEEP_PERIOD": "0.5", "MILESTONES_TIMER_PERIOD": "0.5",
               "MILESTONES_WEBHOOK_SECRET": "s3cret"}
        if webhook:
            env["MILESTONES_WEBHOOK_URL"] = webhook
        args = [sys.executable, "-m", "celery", "-A", "app.celery_app", "worker", "--pool", "solo",
                "--concurrency", "1", "-n", f"{name}@%h", "--loglevel", "INFO",
                "--without-gossip", "--without-mingle", "--without-heartbeat"]
        if beat:
            args += ["--beat", "--schedule", str(self.tmp_path / f"beat-{name}")]
        with open(self.tmp_path / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[name] = proc
        wait_for(lambda: proc.poll() is not None or " ready." in self.log(name), 45, f"worker {name} to start",
                 interval=0.1)
        assert proc.poll() is None, self.log(name)
        return proc

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Any:
    started = Workers(db_url, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def ring(app: Any, broker: Any) -> Any:
    """Requests made through the test client ring the workers, as the API does with REDIS_URL."""
    state = app.extensions["milestones"]
    celery = make_celery(replace(state.settings, redis_url=BROKER_URL))
    state.doorbell = CeleryDoorbell(celery)
    try:
        yield celery
    finally:
        state.doorbell = None
        celery.close()


def _activate_with_contact(people: dict[str, Any], contract: dict[str, Any], code: str, days: int = 30) -> None:
    alice = people["alice"]
    contact = alice.post(f"/accounts/{contract['account_id']}/contacts",
                         {"name": f"Contact {code}", "email": f"{code.lower()}@supplier.example"}).get_json()
    created = alice.post("/milestones", {"contract_id": contract["id"], "code": code, "type": "financial",
                                         "amount": "1000.00", "primary_contact_id": contact["id"],
                                         "due_date": (date.today() + timedelta(days=days)).isoformat()})
    assert created.status_code == 201, created.get_json()
    assert alice.post(f"/milestones/{created.get_json()['id']}/activation").status_code == 200


def _deliveries(app: Any, **where: Any) -> list[Delivery]:
    with app.extensions["milestones"].session_factory() as s:
        stmt = select(Delivery).order_by(Delivery.id)
        for key, value in where.items():
            stmt = stmt.where(getattr(Delivery, key) == value)
        rows = list(s.scalars(stmt))
        for row in rows:
            s.expunge(row)
        return rows


def _approval_row(app: Any, milestone_id: int) -> WorkflowInstance:
    with app.extensions["milestones"].session_factory() as s:
        row = s.scalar(select(WorkflowInstance).where(WorkflowInstance.milestone_id == milestone_id,
                                                      WorkflowInstance.process_id == "milestone_approval"))
        assert row is not None
        s.expunge(row)
        return row


def test_a_worker_killed_mid_delivery_is_replaced_and_the_effect_happens_once(app, people, contract, workers, ring):
    receiver = WebhookReceiver(secret="s3cret", hang_first=1).start()  # takes the first request, then stalls
    try:
        workers.start("first", webhook=receiver.url)
        _activate_with_contact(people, contract, "K1")
        wait_for(lambda: receiver.requests, 30, "the webhook to reach the receiver")
        workers.kill9("first")  # in the middle of the delivery: sent, never recorded
        [hook] = _deliveries(app, channel="webhook")
        assert hook.status == "sending" and hook.attempts == 1

        workers.start("second", beat=True, webhook=receiver.url)  # its sweeper finds the expired lease
        wait_for(lambda: _deliveries(app, channel="webhook")[0].status == "delivered", 30, "the redelivery")
        [hook] = _deliveries(app, channel="webhook")
        assert hook.attempts == 2
        assert [r.key for r in receiver.requests] == [hook.idempotency_key] * 2  # delivered again...
        assert list(receiver.effects) == [hook.idempotency_key]  # ...and applied once
        assert all(r.signature_ok for r in receiver.requests)
        [email] = _deliveries(app, channel="email")
        assert email.status == "delivered" and email.recipient == "k1@supplier.example"
    finally:
        receiver.stop()


def test_redis_flushed_with_messages_in_flight_loses_nothing(app, people, contract, new_milestone, broker, workers,
                                                             ring):
    receiver = WebhookReceiver(secret="s3cret").start()
    try:
        deploy(app, policy_bundle(remind_after="PT0.2S"))
        for code in ("R1", "R2", "R3"):
            _activate_with_contact(people, contract, code, days=3)  # assigned, and the first reminder at once
        milestone = new_milestone(amount="5000.00")  # its review's reminder is a timer in the database
        assert people["alice"].post(f"/milestones/{milestone['id']}/submission").status_code == 201
        assert broker.llen("celery") >= 6  # the doorbells rang: the messages wait in Redis
        broker.flushdb()  # ... and are gone
        assert broker.llen("celery") == 0

        workers.start("sweeper", beat=True, webhook=receiver.url)

        def settled() -> bool:
            rows = outbox(app)
            return len(rows) == 7 and all(m.status == "dispatched" for m in rows) and \
                all(d.status == "delivered" for d in _deliveries(app))

        wait_for(settled, 40, "every notification to be delivered")
        events = sorted(m.event for m in outbox(app))
        assert events == ["approval.reminder"] + ["contact.reminder"] * 3 + ["contact.tasks_assigned"] * 3
        hooks = _deliveries(app, channel="webhook")
        assert len(hooks) == 7 and set(receiver.effects) == {d.idempotency_key for d in hooks}
        assert len(_deliveries(app, channel="email")) == 6  # the three contacts, twice each
    finally:
        receiver.stop()


def test_a_database_connection_dropped_mid_task_is_retried_and_fires_once(app, people, new_milestone, workers,
                                                                         ring):
    deploy(app, policy_bundle(remind_after="PT0.1S"))
    milestone = new_milestone(amount="5000.00")
    assert people["alice"].post(f"/milestones/{milestone['id']}/submission").status_code == 201
    submitted = _approval_row(app, milestone["id"])
    assert submitted.status == "running" and submitted.next_timer_at is not None
    engine = app.extensions["milestones"].engine
    workers.start("victim")
    # (autocommit: pg_stat_activity is a snapshot per transaction)
    with engine.connect() as blocker, engine.connect().execution_options(isolation_level="AUTOCOMMIT") as admin:
        blocker.begin()
        # The reminder's outbox row cannot be written while this lock is held: the task stops there,
        # in the middle of its transaction (the instance row claimed, the engine step half done).
        blocker.execute(text("LOCK TABLE outbox IN EXCLUSIVE MODE"))
        ring.send_task("milestones.fire_due_timers")
        query = text("SELECT pid FROM pg_stat_activity WHERE application_name = :name AND wait_event_type = 'Lock'")
        pid = wait_for(lambda: admin.execute(query, {"name": WORKER_APP_NAME}).scalar(), 30,
                       "the worker to wait on the lock")
        assert admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar() is True
        blocker.rollback()
    wait_for(lambda: outbox(app, "approval.reminder"), 30, "the retried task to fire the reminder")
    log = workers.log("victim")
    assert "Retry in" in log and "OperationalError" in log, log
    assert len(outbox(app, "approval.reminder")) == 1
    with app.extensions["milestones"].session_factory() as s:
        assert s.scalar(select(Incident.id)) is None  # a lost connection is no incident
        assert s.scalar(select(OutboxMessage.instance_id)) == submitted.id
    row = _approval_row(app, milestone["id"])
    # the attempt that lost its connection wrote nothing; the retry saved the instance once
    assert row.id == submitted.id and row.status == "running" and row.version == submitted.version + 1
