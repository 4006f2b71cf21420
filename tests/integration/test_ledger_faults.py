"""Funds are released exactly once, whatever fails, on a real PostgreSQL:

- the release step run twice (a retried job): the ledger and `op_release_funds` answer what they
  moved the first time and move nothing more;
- a real process SIGKILLed between the release and the commit keeps nothing; the approval made again
  releases once; a process killed after its commit but before it answered: the retry is a 409 and
  the money still moved once;
- two approvers racing on the final seat, and two release steps racing in open transactions: one
  release entry per transaction, one payment instruction per movement.

PostgreSQL is mandatory with CI=true (the fixtures fail, never skip, when it is missing).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select, text

from app.errors import Conflict
from app.models import AuditEvent, FundRelease, HumanTaskRow, Milestone, OutboxMessage, WorkflowInstance
from app.models.ledger import LedgerEntry
from app.services import ledger
from app.services.runtime import MilestoneServices
from app.uow import UnitOfWork
from tests.conftest import race
from workflows import ServiceCall

pytestmark = [pytest.mark.postgres, pytest.mark.faults]

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ledger_crash_worker.py")
AMOUNTS = ("30000.00", "20000.00")


@pytest.fixture
def db_url(pg_schema_url: str) -> str:
    """PostgreSQL only: the faults are the server's (transactions of killed clients, row locks)."""
    return pg_schema_url


# --------------------------------------------------------------------------- helpers
def _state(app: Any) -> Any:
    return app.extensions["milestones"]


def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.get_json()
    return response.get_json()


def _financial_with_transactions(people: dict[str, Any], contract: dict[str, Any], new_milestone: Any,
                                 amounts: tuple[str, ...] = AMOUNTS) -> tuple[dict[str, Any], list[int]]:
    """A 50 000 EUR milestone with transactions linked to it: one recorded already linked, the
    others recorded first and linked afterwards (both ways hold the money)."""
    alice = people["alice"]
    milestone = new_milestone(amount="50000.00")
    ids = []
    for i, amount in enumerate(amounts):
        body = {"kind": "invoice", "amount": amount, "currency": "EUR", "occurred_on": "2026-11-30",
                "external_ref": f"INV-{milestone['code']}-{i}"}
        if i == 0:
            created = _ok(alice.post(f"/contracts/{contract['id']}/transactions",
                                     {**body, "milestone_id": milestone["id"]}), 201)
        else:
            created = _ok(alice.post(f"/contracts/{contract['id']}/transactions", body), 201)
            _ok(alice.post(f"/transactions/{created['id']}/link", {"milestone_id": milestone["id"]}))
        assert created["amount"] == amount
        ids.append(created["id"])
    return milestone, ids


def _submit(people: dict[str, Any], milestone: dict[str, Any]) -> str:
    submitted = _ok(people["alice"].post(f"/milestones/{milestone['id']}/submission"), 201)
    [seat] = submitted["open_tasks"]
    return str(seat["id"])


def _entries(app: Any, milestone_id: int, kind: str | None = None) -> list[LedgerEntry]:
    with _state(app).session_factory() as s:
        stmt = select(LedgerEntry).where(LedgerEntry.milestone_id == milestone_id).order_by(LedgerEntry.id)
        if kind is not None:
            stmt = stmt.where(LedgerEntry.kind == kind)
        rows = list(s.scalars(stmt))
        for row in rows:
            s.expunge(row)
        return rows


def _instructions(app: Any, milestone_id: int) -> list[OutboxMessage]:
    with _state(app).session_factory() as s:
        rows = list(s.scalars(select(OutboxMessage).where(OutboxMessage.event == "payment.instruction",
                                                          OutboxMessage.milestone_id == milestone_id)
                              .order_by(OutboxMessage.id)))
        for row in rows:
            s.expunge(row)
        return rows


def _count(app: Any, model: Any, *where: Any) -> int:
    with _state(app).session_factory() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0


def _task_status(app: Any, task_id: str) -> str:
    with _state(app).session_factory() as s:
        status = s.scalar(select(HumanTaskRow.status).where(HumanTaskRow.id == task_id))
        assert status is not None
        return status


def _milestone_status(app: Any, milestone_id: int) -> str:
    with _state(app).session_factory() as s:
        status = s.scalar(select(Milestone.status).where(Milestone.id == milestone_id))
        assert status is not None
        return status


def assert_released_once(app: Any, milestone_id: int, transaction_ids: list[int],
                         amounts: tuple[str, ...] = AMOUNTS) -> list[LedgerEntry]:
    """Exactly one release entry per linked transaction, for its full amount; exactly one payment
    instruction per release, carrying its key; one FundRelease for the milestone."""
    releases = _entries(app, milestone_id, "release")
    assert sorted(e.transaction_id for e in releases) == sorted(transaction_ids), releases
    assert {e.transaction_id: e.amount for e in releases} == \
        {t: Decimal(a) for t, a in zip(transaction_ids, amounts, strict=True)}
    assert all(e.currency == "EUR" for e in releases)
    assert _entries(app, milestone_id, "retain") == []
    instructions = _instructions(app, milestone_id)
    facts = [m.payload["facts"] for m in instructions]
    assert sorted(f["payment_key"] for f in facts) == sorted(e.idempotency_key for e in releases), facts
    assert sorted(f["entry_id"] for f in facts) == sorted(e.id for e in releases)
    assert all(f["action"] == "pay" for f in facts)
    assert all(m.recipients == {"payment": ["endpoint"]} for m in instructions)
    assert _count(app, FundRelease, FundRelease.milestone_id == milestone_id) == 1
    return releases


# --------------------------------------------------------------------------- a. the release step twice
def test_the_release_step_run_again_moves_nothing_and_answers_the_same(app, people, contract, new_milestone):
    milestone, transaction_ids = _financial_with_transactions(people, contract, new_milestone)
    seat = _submit(people, milestone)
    assert len(_entries(app, milestone["id"], "hold")) == 2
    assert _entries(app, milestone["id"], "release") == [] and _instructions(app, milestone["id"]) == []
    _ok(people["bob"].post(f"/tasks/{seat}/completion", {"decision": "approve"}))
    assert _milestone_status(app, milestone["id"]) == "completed"
    first = assert_released_once(app, milestone["id"], transaction_ids)
    first_ids = sorted(e.id for e in first)
    entries_before = len(_entries(app, milestone["id"]))
    outbox_before = _count(app, OutboxMessage)
    state = _state(app)
    with state.session_factory() as s:
        header = s.scalar(select(FundRelease).where(FundRelease.milestone_id == milestone["id"]))
        assert header is not None
        s.expunge(header)
    assert header.amount == Decimal("50000.00") and header.currency == "EUR"
    assert {e.step for e in first} == {f"release_funds_task:{header.task_id}"}
    assert {e.instance_id for e in first} == {header.instance_id}

    # The ledger's release run again, as a retried job would, in a transaction of its own (committed).
    with UnitOfWork(state.session_factory) as uow:
        row = uow.s.get(Milestone, milestone["id"])
        assert row is not None
        again = ledger.release_for_milestone(uow, row, step=f"release_funds_task:{header.task_id}",
                                             instance_id=header.instance_id, round=row.round)
        uow.commit()
    assert again.repeated is True
    assert sorted(e.id for e in again.released) == first_ids
    assert again.retained == [] and again.retention_released == []
    assert again.as_dict()["released_total"] == "50000.00"

    # The diagram's step itself, run again for the same task id (a restarted worker).
    def run_step(task_id: str) -> dict[str, Any]:
        with UnitOfWork(state.session_factory) as uow:
            row = uow.s.get(Milestone, milestone["id"])
            instance = uow.s.get(WorkflowInstance, header.instance_id)
            assert row is not None and instance is not None
            services = MilestoneServices(uow, state.deployments, row, instance)
            answer = services(ServiceCall(
                operation="release_funds", task_id=task_id, bpmn_id="release_funds_task",
                process_id="milestone_approval",
                params={"milestone_id": milestone["id"], "amount": "50000.00", "currency": "EUR"}))
            uow.commit()
            return answer

    answer = run_step(header.task_id)
    assert answer["repeated"] is True
    assert answer["release_id"] == header.id
    assert sorted(answer["released"]) == first_ids
    assert answer["amount"] == "50000.00" and answer["currency"] == "EUR"
    # ... and a *different* task claiming to release the same milestone is refused outright.
    with pytest.raises(Conflict):
        run_step("00000000-0000-0000-0000-000000000000")

    # Nothing more was written by any of it.
    again_released = assert_released_once(app, milestone["id"], transaction_ids)
    assert sorted(e.id for e in again_released) == first_ids
    assert len(_entries(app, milestone["id"])) == entries_before == 4  # two holds, two releases
    assert _count(app, OutboxMessage) == outbox_before
    assert _count(app, FundRelease) == 1
    assert _count(app, AuditEvent, AuditEvent.action == "funds.released") == 1
    money = _ok(people["alice"].get(f"/milestones/{milestone['id']}/ledger"))["balance"]
    assert money["released"] == "50000.00" and money["held"] == "0.00" and money["linked"] == "50000.00"


# --------------------------------------------------------------------------- b. crashes around the commit
class Worker:
    """`ledger_crash_worker.py` in a real process against the test schema; always ended."""

    def __init__(self, db_url: str, tmp_path: Path):
        self.db_url = db_url
        self.tmp_path = tmp_path
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self, mode: str, task_id: str, username: str) -> Worker:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": self.db_url,
               "MILESTONES_INSTANCE_DIR": str(self.tmp_path / "worker-instance")}
        for key in ("REDIS_URL", "MILESTONES_PAYMENT_URL", "MILESTONES_WEBHOOK_URL", "MILESTONES_SMTP_HOST"):
            env.pop(key, None)
        self.proc = subprocess.Popen([sys.executable, str(WORKER), mode, task_id, username], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        proc = self.proc

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.lines.put(line)

        self._reader = threading.Thread(target=pump, daemon=True)
        self._reader.start()
        return self

    def wait_for_marker(self, marker: str, timeout: float = 60) -> dict[str, Any]:
        """The JSON after `marker` on the worker's output; fails if the worker ends first."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.output.append(line)
            if line.startswith(marker + " "):
                return dict(json.loads(line[len(marker) + 1:]))
        raise AssertionError(f"no {marker} from the worker (exit {self.proc.poll()}):\n" + "".join(self.output))

    def kill9(self) -> None:
        assert self.proc is not None
        assert self.proc.poll() is None, "the worker ended before it was killed:\n" + "".join(self.output)
        os.killpg(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(10)  # the pipe is at its end once the process is gone
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def worker(db_url: str, tmp_path: Path) -> Any:
    started: list[Worker] = []

    def start(mode: str, task_id: str, username: str) -> Worker:
        w = Worker(db_url, tmp_path).start(mode, task_id, username)
        started.append(w)
        return w

    try:
        yield start
    finally:
        for w in started:
            w.stop()


def _wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def _no_open_transactions_of_killed_clients(app: Any) -> bool:
    """The server has noticed the killed client and rolled its transaction back (no row lock is left)."""
    with _state(app).engine.connect() as conn:
        waiting = conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid() "
            "AND application_name = current_setting('application_name')")).scalar()
        return waiting == 0


def _blocked_on_a_lock(app: Any) -> bool:
    with _state(app).engine.connect() as conn:
        waiting = conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO ledger_entries%' "
            "AND application_name = current_setting('application_name')")).scalar()
        return bool(waiting)


def test_a_process_killed_between_release_and_commit_keeps_nothing_and_the_retry_releases_once(
        app, people, contract, new_milestone, worker):
    milestone, transaction_ids = _financial_with_transactions(people, contract, new_milestone)
    seat = _submit(people, milestone)
    outbox_before = _count(app, OutboxMessage)

    victim = worker("before-commit", seat, "bob")
    inside = victim.wait_for_marker("BEFORE_COMMIT")
    # In its own, open transaction the release was made: two entries, two instructions, the seat done.
    assert inside == {"releases": 2, "instructions": 2, "task_status": "completed"}, inside
    victim.kill9()
    _wait_until(lambda: _no_open_transactions_of_killed_clients(app), 30, "the killed transaction to end")

    # Nothing of it was kept.
    assert _entries(app, milestone["id"], "release") == []
    assert len(_entries(app, milestone["id"], "hold")) == 2
    assert _instructions(app, milestone["id"]) == []
    assert _count(app, OutboxMessage) == outbox_before
    assert _count(app, FundRelease) == 0
    assert _count(app, AuditEvent, AuditEvent.action == "funds.released") == 0
    assert _task_status(app, seat) == "open"
    assert _milestone_status(app, milestone["id"]) == "submitted"
    view = _ok(people["bob"].get(f"/milestones/{milestone['id']}"))
    assert [t["id"] for t in view["open_tasks"]] == [seat]

    # "Restart": the approval is made again (here by the API in this process) and releases once.
    completed = _ok(people["bob"].post(f"/tasks/{seat}/completion", {"decision": "approve"}))
    assert completed["status"] == "completed"
    assert _milestone_status(app, milestone["id"]) == "completed"
    assert_released_once(app, milestone["id"], transaction_ids)
    assert _count(app, AuditEvent, AuditEvent.action == "funds.released") == 1


def test_a_process_killed_after_its_commit_leaves_one_release_and_the_retry_is_a_conflict(
        app, people, contract, new_milestone, worker):
    milestone, transaction_ids = _financial_with_transactions(people, contract, new_milestone)
    seat = _submit(people, milestone)

    victim = worker("after-commit", seat, "bob")
    seen = victim.wait_for_marker("AFTER_COMMIT")
    assert seen == {"releases": 2, "instructions": 2, "task_status": "completed"}, seen
    victim.kill9()  # committed, but the caller never heard the answer

    assert _milestone_status(app, milestone["id"]) == "completed"
    releases = assert_released_once(app, milestone["id"], transaction_ids)

    # The caller retries the same completion: a conflict (already completed), and no money moves again.
    retry = people["bob"].post(f"/tasks/{seat}/completion", {"decision": "approve"})
    assert retry.status_code == 409, retry.get_json()
    assert retry.headers["Content-Type"] == "application/problem+json"
    assert "already completed" in retry.get_json()["detail"]
    again = assert_released_once(app, milestone["id"], transaction_ids)
    assert [e.id for e in again] == [e.id for e in releases]
    assert _count(app, AuditEvent, AuditEvent.action == "funds.released") == 1


# --------------------------------------------------------------------------- c. races
def _post(url: str, token: str, json: Any = None) -> Any:
    return lambda: requests.post(url, json=json, timeout=60, headers={"Authorization": f"Bearer {token}"})


def test_two_racing_final_approvals_pay_once(app, server, people, contract, new_milestone):
    for round_ in range(3):
        milestone, transaction_ids = _financial_with_transactions(people, contract, new_milestone)
        seat = _submit(people, milestone)
        results = race([_post(f"{server}/tasks/{seat}/completion", approver.token, {"decision": "approve"})
                        for approver in (people["bob"], people["carol"])])
        statuses = Counter(getattr(r, "status_code", None) for r in results)
        assert statuses == {200: 1, 409: 1}, (round_, [getattr(r, "text", r) for r in results])
        assert _milestone_status(app, milestone["id"]) == "completed"
        assert_released_once(app, milestone["id"], transaction_ids)
    assert _count(app, FundRelease) == 3
    assert _count(app, LedgerEntry, LedgerEntry.kind == "release") == 6
    assert _count(app, OutboxMessage, OutboxMessage.event == "payment.instruction") == 6
    assert _count(app, AuditEvent, AuditEvent.action == "funds.released") == 3


def test_two_release_steps_racing_in_open_transactions_move_the_money_once(app, people, contract, new_milestone):
    """Both read "nothing released yet"; the unique release key makes the second insert wait for the
    first transaction and then do nothing: it answers the first one's entries and writes no instruction."""
    milestone, transaction_ids = _financial_with_transactions(people, contract, new_milestone)
    _submit(people, milestone)
    state = _state(app)
    first_written = threading.Event()
    answers: dict[str, Any] = {}
    errors: list[BaseException] = []

    def step(name: str, wait_for: threading.Event | None) -> None:
        try:
            if wait_for is not None:
                assert wait_for.wait(30)
            with UnitOfWork(state.session_factory) as uow:
                row = uow.s.get(Milestone, milestone["id"])
                assert row is not None
                result = ledger.release_for_milestone(uow, row, step=f"race:{name}", instance_id=None, round=1)
                if wait_for is None:
                    first_written.set()
                    # the other one reads "nothing released" and blocks on the same release key
                    _wait_until(lambda: _blocked_on_a_lock(app), 30, "the second release to wait for the first")
                answers[name] = (result.repeated, sorted(e.id for e in result.released))
                uow.commit()
        except BaseException as exc:
            errors.append(exc)
            first_written.set()

    threads = [threading.Thread(target=step, args=("first", None)),
               threading.Thread(target=step, args=("second", first_written))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    releases = _entries(app, milestone["id"], "release")
    assert sorted(e.transaction_id for e in releases) == sorted(transaction_ids)
    ids = sorted(e.id for e in releases)
    assert answers["first"] == (False, ids)
    assert answers["second"] == (True, ids)
    assert {e.step for e in releases} == {"race:first"}
    instructions = _instructions(app, milestone["id"])
    assert sorted(m.payload["facts"]["payment_key"] for m in instructions) == \
        sorted(e.idempotency_key for e in releases)
    assert len(instructions) == 2
