"""Payment instructions reach a real (local) bank endpoint: HMAC-signed, with the ledger entry's
idempotency key, retried with backoff until acknowledged, applied once per key by the receiver, and
never given up on (no dead letter for money). Without a payment URL they land in
<instance>/payments.log. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select, update

from app.channels import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookTransport, build_transports, sign
from app.config import NotificationSettings
from app.models import Delivery, OutboxMessage, utcnow
from app.models.ledger import LedgerEntry
from app.services.delivery import MAX_PAYMENT_WAIT, deliver, dispatch_outbox, pump

SECRET = "bank-s3cret"


# --------------------------------------------------------------------------- the bank
@dataclass
class Attempt:
    path: str
    key: str
    body: dict[str, Any]
    signature_ok: bool
    status: int


@dataclass
class Bank:
    """A real HTTP server standing in for the payment provider.

    It checks the signature (HMAC-SHA256 over `<timestamp>.<body>`) and the timestamp's freshness
    (401 otherwise), answers 500 to the first `fail_first[path]` attempts of each instruction (per
    idempotency key), then 200; it applies an instruction once per key: a repeated key is
    acknowledged (200) and not applied again.
    """

    secret: str = SECRET
    fail_first: dict[str, int] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    applied: dict[str, dict[str, Any]] = field(default_factory=dict)  # idempotency key → the instruction
    repeats: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Bank:
        bank = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                timestamp = self.headers.get(TIMESTAMP_HEADER, "")
                signature_ok = bool(timestamp.isdigit()) \
                    and self.headers.get(SIGNATURE_HEADER) == sign(bank.secret, timestamp, raw) \
                    and abs(time.time() - int(timestamp)) < 300
                key = self.headers.get("Idempotency-Key", "")
                body = json.loads(raw)
                with bank._lock:
                    tried = sum(1 for a in bank.attempts if a.key == key and a.path == self.path)
                    if not signature_ok or not key:
                        status = 401
                    elif tried < bank.fail_first.get(self.path, 0):
                        status = 500
                    else:
                        status = 200
                        if key in bank.applied:
                            bank.repeats[key] = bank.repeats.get(key, 0) + 1  # acknowledged, not applied again
                        else:
                            bank.applied[key] = body
                    bank.attempts.append(Attempt(self.path, key, body, signature_ok, status))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps({"accepted": status == 200}).encode())

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_port}{path}"

    def attempts_for(self, key: str) -> list[Attempt]:
        with self._lock:
            return [a for a in self.attempts if a.key == key]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def bank() -> Any:
    server = Bank().start()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- helpers
def _state(app: Any) -> Any:
    return app.extensions["milestones"]


def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.get_json()
    return response.get_json()


def _approved(people: dict[str, Any], contract: dict[str, Any], new_milestone: Any,
              amounts: tuple[str, ...]) -> tuple[dict[str, Any], dict[int, str]]:
    """A financial milestone with a transaction linked per amount, approved: {transaction id: amount}."""
    alice = people["alice"]
    total = sum((Decimal(a) for a in amounts), Decimal("0"))
    milestone = new_milestone(amount=str(max(total, Decimal("10000.00"))))
    transactions: dict[int, str] = {}
    for i, amount in enumerate(amounts):
        body = {"kind": "invoice", "amount": amount, "currency": "EUR", "occurred_on": "2026-11-30",
                "external_ref": f"INV-{milestone['code']}-{i}"}
        if i % 2 == 0:
            created = _ok(alice.post(f"/contracts/{contract['id']}/transactions",
                                     {**body, "milestone_id": milestone["id"]}), 201)
        else:
            created = _ok(alice.post(f"/contracts/{contract['id']}/transactions", body), 201)
            _ok(alice.post(f"/transactions/{created['id']}/link", {"milestone_id": milestone["id"]}))
        transactions[created["id"]] = amount
    [seat] = _ok(alice.post(f"/milestones/{milestone['id']}/submission"), 201)["open_tasks"]
    _ok(people["bob"].post(f"/tasks/{seat['id']}/completion", {"decision": "approve"}))
    assert _ok(alice.get(f"/milestones/{milestone['id']}"))["status"] == "completed"
    return milestone, transactions


def _releases(app: Any, milestone_id: int) -> dict[int, LedgerEntry]:
    """The milestone's release entries by transaction id."""
    with _state(app).session_factory() as s:
        rows = list(s.scalars(select(LedgerEntry).where(LedgerEntry.milestone_id == milestone_id,
                                                        LedgerEntry.kind == "release")))
        for row in rows:
            s.expunge(row)
    out = {e.transaction_id: e for e in rows}
    assert len(out) == len(rows)
    return out


def _pending_instructions(app: Any, milestone_id: int) -> list[int]:
    with _state(app).session_factory() as s:
        return list(s.scalars(select(OutboxMessage.id).where(
            OutboxMessage.event == "payment.instruction", OutboxMessage.milestone_id == milestone_id,
            OutboxMessage.status == "pending").order_by(OutboxMessage.id)))


def _delivery(app: Any, delivery_id: int) -> Delivery:
    with _state(app).session_factory() as s:
        row = s.get(Delivery, delivery_id)
        assert row is not None
        s.expunge(row)
        return row


def _payment_deliveries(app: Any) -> list[Delivery]:
    with _state(app).session_factory() as s:
        rows = list(s.scalars(select(Delivery).where(Delivery.channel == "payment").order_by(Delivery.id)))
        for row in rows:
            s.expunge(row)
        return rows


def _due_now(app: Any, delivery_id: int) -> None:
    """Skip the wait: the next attempt is due now (instead of sleeping through the backoff)."""
    with _state(app).session_factory() as s:
        s.execute(update(Delivery).where(Delivery.id == delivery_id)
                  .values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        s.commit()


def _dispatch(app: Any, settings: NotificationSettings, milestone_id: int) -> list[int]:
    """Dispatch the milestone's payment instructions; the payment deliveries created, one per instruction."""
    factory = _state(app).session_factory
    outbox_ids = _pending_instructions(app, milestone_id)
    created = []
    for outbox_id in outbox_ids:
        [delivery_id] = dispatch_outbox(factory, settings, outbox_id)
        created.append(delivery_id)
        assert dispatch_outbox(factory, settings, outbox_id) == []  # dispatched once
    assert len(created) == len(outbox_ids)
    return created


def _assert_backoff(row: Delivery, seconds: float) -> None:
    waited = (row.next_attempt_at - row.updated_at).total_seconds()
    assert abs(waited - seconds) < 0.05, (waited, seconds)


# --------------------------------------------------------------------------- tests
def test_instructions_are_signed_retried_and_applied_once_per_key(app, bank, people, contract, new_milestone,
                                                                  monkeypatch, tmp_path):
    monkeypatch.setenv("MILESTONES_PAYMENT_URL", bank.url("/bank/instructions"))
    monkeypatch.setenv("MILESTONES_PAYMENT_SECRET", SECRET)
    monkeypatch.setenv("MILESTONES_DELIVERY_BACKOFF", "0.1")
    monkeypatch.setenv("MILESTONES_DELIVERY_ATTEMPTS", "5")
    settings = NotificationSettings.from_env()
    assert settings.payment_url == bank.url("/bank/instructions") and settings.payment_secret == SECRET
    transports = build_transports(settings, tmp_path)
    assert isinstance(transports["payment"], WebhookTransport)
    bank.fail_first["/bank/instructions"] = 2
    factory = _state(app).session_factory

    milestone, transactions = _approved(people, contract, new_milestone, ("30000.00", "20000.00"))
    releases = _releases(app, milestone["id"])
    assert sorted(releases) == sorted(transactions)
    delivery_ids = _dispatch(app, settings, milestone["id"])
    assert len(delivery_ids) == 2
    by_key = {_delivery(app, d).idempotency_key: d for d in delivery_ids}
    # each delivery carries its ledger entry's own key, to the configured endpoint, on the payment channel
    assert set(by_key) == {e.idempotency_key for e in releases.values()}
    for delivery_id in delivery_ids:
        row = _delivery(app, delivery_id)
        assert (row.channel, row.recipient, row.status, row.attempts) == \
            ("payment", settings.payment_url, "pending", 0)

    for delivery_id in delivery_ids:
        assert deliver(factory, settings, transports, delivery_id) == "retry"
        first = _delivery(app, delivery_id)
        assert (first.status, first.attempts) == ("pending", 1) and "500" in (first.last_error or "")
        _assert_backoff(first, 0.1)  # backoff * 2**0
        assert deliver(factory, settings, transports, delivery_id) == "skipped"  # not due during its backoff
        _due_now(app, delivery_id)
        assert deliver(factory, settings, transports, delivery_id) == "retry"
        second = _delivery(app, delivery_id)
        assert (second.status, second.attempts) == ("pending", 2)
        _assert_backoff(second, 0.2)  # backoff * 2**1
        _due_now(app, delivery_id)
        assert deliver(factory, settings, transports, delivery_id) == "delivered"
        done = _delivery(app, delivery_id)
        assert (done.status, done.attempts, done.last_error) == ("delivered", 3, None)
        assert done.delivered_at is not None and done.lease_until is None
        assert deliver(factory, settings, transports, delivery_id) == "skipped"  # delivered: never sent again

    # The bank: three attempts per instruction, all signed and fresh, each applied once.
    assert len(bank.attempts) == 6
    assert all(a.signature_ok and a.path == "/bank/instructions" for a in bank.attempts)
    for entry in releases.values():
        tries = bank.attempts_for(entry.idempotency_key)
        assert [a.status for a in tries] == [500, 500, 200]
        assert all(a.body == tries[0].body for a in tries)  # the same instruction every time
    assert set(bank.applied) == set(by_key) and bank.repeats == {}
    for transaction_id, amount in transactions.items():
        entry = releases[transaction_id]
        instruction = bank.applied[entry.idempotency_key]
        assert instruction["id"] == entry.idempotency_key
        assert instruction["event"] == "payment.instruction"
        assert instruction["delivery_id"] == by_key[entry.idempotency_key]
        data = instruction["data"]
        assert (data["action"], data["kind"], data["amount"], data["currency"]) == ("pay", "release", amount, "EUR")
        assert (data["transaction_id"], data["entry_id"], data["payment_key"]) == \
            (transaction_id, entry.id, entry.idempotency_key)
        assert data["milestone_id"] == milestone["id"] and data["contract_id"] == contract["id"]
        assert data["transaction_ref"] == f"INV-{milestone['code']}-{list(transactions).index(transaction_id)}"
    assert sum(Decimal(i["data"]["amount"]) for i in bank.applied.values()) == Decimal("50000.00")

    # A worker that died after sending and before recording it: the lease runs out, the instruction is
    # sent again with the same key, the bank acknowledges it and does not pay twice.
    again = delivery_ids[0]
    with factory() as s:
        s.execute(update(Delivery).where(Delivery.id == again).values(
            status="sending", lease_until=utcnow() - timedelta(seconds=1)))
        s.commit()
    assert deliver(factory, settings, transports, again) == "delivered"
    assert _delivery(app, again).attempts == 4
    key = _delivery(app, again).idempotency_key
    assert [a.status for a in bank.attempts_for(key)] == [500, 500, 200, 200]
    assert bank.repeats == {key: 1} and len(bank.applied) == 2

    # A wrong secret is refused by the bank (401): retried, not delivered, not applied.
    bank.fail_first["/bank/instructions"] = 0
    more, more_transactions = _approved(people, contract, new_milestone, ("15000.00",))
    wrong = replace(settings, payment_secret="not-the-secret")
    [wrong_delivery] = _dispatch(app, wrong, more["id"])
    assert deliver(factory, wrong, build_transports(wrong, tmp_path), wrong_delivery) == "retry"
    assert "401" in (_delivery(app, wrong_delivery).last_error or "")
    assert len(bank.applied) == 2
    _due_now(app, wrong_delivery)
    assert deliver(factory, settings, transports, wrong_delivery) == "delivered"  # the secret fixed
    [fixed] = [e for e in _releases(app, more["id"]).values()]
    assert bank.applied[fixed.idempotency_key]["data"]["amount"] == "15000.00"
    assert list(more_transactions) == [fixed.transaction_id]


def test_a_payment_delivery_is_never_dead_however_often_it_fails(app, bank, people, contract, new_milestone,
                                                                 tmp_path):
    bank.fail_first["/bank/flaky"] = 7
    settings = replace(NotificationSettings(), payment_url=bank.url("/bank/flaky"), payment_secret=SECRET,
                       max_attempts=5, backoff_seconds=0.01)
    transports = build_transports(settings, tmp_path)
    factory = _state(app).session_factory
    milestone, transactions = _approved(people, contract, new_milestone, ("12500.00",))
    [entry] = _releases(app, milestone["id"]).values()
    [delivery_id] = _dispatch(app, settings, milestone["id"])

    for attempt in range(1, 8):
        assert deliver(factory, settings, transports, delivery_id) == "retry", attempt
        row = _delivery(app, delivery_id)
        assert (row.status, row.attempts) == ("pending", attempt)  # past max_attempts too: never dead
        assert row.next_attempt_at > row.updated_at
        _assert_backoff(row, 0.01 * 2 ** (attempt - 1))
        _due_now(app, delivery_id)
    assert [a.status for a in bank.attempts_for(entry.idempotency_key)] == [500] * 7
    assert bank.applied == {}
    with factory() as s:
        assert s.scalar(select(Delivery.id).where(Delivery.status == "dead")) is None

    # A long outage: the wait grows, but never beyond an hour.
    patient = replace(settings, backoff_seconds=1000.0)
    bank.fail_first["/bank/flaky"] = 8
    assert deliver(factory, patient, transports, delivery_id) == "retry"
    row = _delivery(app, delivery_id)
    assert (row.status, row.attempts) == ("pending", 8)
    _assert_backoff(row, 3600.0)  # 1000 * 2**7 capped at an hour
    assert MAX_PAYMENT_WAIT == 3600.0
    assert deliver(factory, settings, transports, delivery_id) == "skipped"  # it waits that hour
    _due_now(app, delivery_id)

    assert deliver(factory, settings, transports, delivery_id) == "delivered"
    done = _delivery(app, delivery_id)
    assert (done.status, done.attempts, done.last_error) == ("delivered", 9, None)
    assert [a.status for a in bank.attempts_for(entry.idempotency_key)] == [500] * 8 + [200]
    assert list(bank.applied) == [entry.idempotency_key]
    data = bank.applied[entry.idempotency_key]["data"]
    assert (data["amount"], data["currency"], data["transaction_id"]) == ("12500.00", "EUR", list(transactions)[0])


def test_without_a_payment_url_instructions_land_in_the_payments_log(app, people, contract, new_milestone):
    state = _state(app)
    settings = replace(NotificationSettings(), payment_url=None, payment_secret=None)
    instance_dir = state.settings.instance_dir
    log = instance_dir / "payments.log"
    milestone, transactions = _approved(people, contract, new_milestone, ("30000.00", "20000.00"))
    releases = _releases(app, milestone["id"])
    assert not log.exists()

    run = pump(state.session_factory, settings, build_transports(settings, instance_dir))
    payments = _payment_deliveries(app)
    assert len(payments) == 2
    assert all(run.outcomes.get(d.id) == "delivered" for d in payments), run.outcomes
    assert all((d.status, d.attempts, d.recipient) == ("delivered", 1, "log:payments.log") for d in payments)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 2
    by_key = {line["id"]: line for line in lines}
    assert set(by_key) == {e.idempotency_key for e in releases.values()} == {d.idempotency_key for d in payments}
    for transaction_id, amount in transactions.items():
        line = by_key[releases[transaction_id].idempotency_key]
        assert line["event"] == "payment.instruction"
        data = line["data"]
        assert (data["action"], data["amount"], data["currency"], data["transaction_id"]) == \
            ("pay", amount, "EUR", transaction_id)
        assert data["payment_key"] == line["id"]

    # Nothing is written twice by later rounds.
    assert pump(state.session_factory, settings, build_transports(settings, instance_dir)).outcomes == {}
    assert len(log.read_text().splitlines()) == 2
