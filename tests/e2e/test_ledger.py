"""The funds ledger through the HTTP API, on SQLite and PostgreSQL: held until approval, released by the
workflow only, objective-tied funds only when met, partial release and retainage, reversal, reports."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from app.models import OutboxMessage
from app.models.ledger import LedgerEntry
from tests.conftest import Api
from tests.routing_support import ok, problem


def invoice(api: Api, milestone: dict[str, Any], amount: str, **extra: Any) -> dict[str, Any]:
    return ok(api.post(f"/contracts/{milestone['contract_id']}/transactions",
                       {"kind": "invoice", "amount": amount, "currency": "EUR", "occurred_on": "2026-11-30",
                        "milestone_id": milestone["id"], **extra}), 201)


def approve(people: dict[str, Api], milestone: dict[str, Any]) -> dict[str, Any]:
    [seat] = ok(people["alice"].post(f"/milestones/{milestone['id']}/submission"), 201)["open_tasks"]
    ok(people["bob"].post(f"/tasks/{seat['id']}/completion", {"decision": "approve"}))
    return ok(people["alice"].get(f"/milestones/{milestone['id']}"))


def money(api: Api, milestone_id: int) -> dict[str, str]:
    return ok(api.get(f"/milestones/{milestone_id}"))["money"]


def kinds(api: Api, milestone_id: int) -> list[tuple[str, str, int]]:
    return [(e["kind"], e["amount"], e["transaction_id"])
            for e in ok(api.get(f"/milestones/{milestone_id}/ledger"))["entries"]]


@pytest.fixture
def treasurer(make_user: Any) -> Api:
    return make_user("tess", "treasury")


def test_linked_money_is_held_until_the_workflow_releases_it(app, people, new_milestone):
    alice = people["alice"]
    m = new_milestone(amount="50000.00")
    first = invoice(alice, m, "30000.00")
    second = invoice(alice, m, "20000.00")
    assert money(alice, m["id"]) == {"currency": "EUR", "linked": "50000.00", "held": "50000.00",
                                     "released": "0.00", "retained": "0.00", "reversed": "0.00",
                                     "cancelled": "0.00"}
    # nothing in the API releases money: only the approval diagram's release step
    assert alice.post(f"/milestones/{m['id']}/ledger", {}).status_code == 405
    detail = approve(people, m)
    assert detail["status"] == "completed"
    assert (detail["money"]["held"], detail["money"]["released"]) == ("0.00", "50000.00")
    assert kinds(alice, m["id"]) == [("hold", "30000.00", first["id"]), ("hold", "20000.00", second["id"]),
                                     ("release", "30000.00", first["id"]), ("release", "20000.00", second["id"])]
    entries = ok(alice.get(f"/milestones/{m['id']}/ledger"))["entries"]
    release = entries[2]
    assert release["step"].startswith("release_funds_task:") and release["instance_id"] and release["round"] == 1
    assert release["idempotency_key"] == f"pay_release_{first['id']}_{m['id']}"
    with app.extensions["milestones"].session_factory() as s:
        instructions = s.scalars(select(OutboxMessage).where(OutboxMessage.event == "payment.instruction")
                                 .order_by(OutboxMessage.id)).all()
        assert [(i.payload["facts"]["transaction_id"], i.payload["facts"]["amount"], i.payload["facts"]["action"])
                for i in instructions] == [(first["id"], "30000.00", "pay"), (second["id"], "20000.00", "pay")]
        assert instructions[0].payload["facts"]["payment_key"] == release["idempotency_key"]


def test_objective_funds_wait_for_the_objective_and_the_rest_stays_held_with_the_reason(app, people,
                                                                                      new_milestone):
    alice = people["alice"]
    m = new_milestone(amount="50000.00")
    objective = ok(alice.post(f"/milestones/{m['id']}/objectives", {"title": "Piles driven"}), 201)
    plain = invoice(alice, m, "10000.00")
    tied = invoice(alice, m, "40000.00", objective_id=objective["id"])
    detail = approve(people, m)
    assert detail["status"] == "completed"
    assert (detail["money"]["released"], detail["money"]["held"]) == ("10000.00", "40000.00")
    assert ("release", "40000.00", tied["id"]) not in kinds(alice, m["id"])
    assert detail["release"]["amount"] == "10000.00"
    trail = [h for h in detail["history"] if h["action"] == "funds.released"]
    assert trail[0]["after"]["withheld"] == [{"transaction_id": tied["id"], "amount": "40000.00",
                                              "reason": "objective 'Piles driven' is not met"}]
    assert ok(alice.get(f"/milestones/{m['id']}/ledger"))["transactions"][1]["id"] == tied["id"]
    assert plain["id"] != tied["id"]

    # a follow-up approval does not release it either: the objective is still not met (and objectives
    # are frozen once the milestone is approved)
    follow_up = new_milestone(type="non_financial", amount=None, retention_of_id=m["id"])
    [seat] = ok(alice.post(f"/milestones/{follow_up['id']}/submission"), 201)["open_tasks"]
    ok(people["dave"].post(f"/tasks/{seat['id']}/completion", {"decision": "approve"}))
    assert (money(alice, m["id"])["held"], money(alice, m["id"])["released"]) == ("40000.00", "10000.00")


def test_a_follow_up_never_releases_money_of_a_milestone_that_was_not_approved(people, new_milestone):
    alice = people["alice"]
    m = new_milestone(amount="50000.00")
    invoice(alice, m, "50000.00")
    follow_up = new_milestone(type="non_financial", amount=None, retention_of_id=m["id"])
    [seat] = ok(alice.post(f"/milestones/{follow_up['id']}/submission"), 201)["open_tasks"]
    ok(people["dave"].post(f"/tasks/{seat['id']}/completion", {"decision": "approve"}))
    assert (money(alice, m["id"])["held"], money(alice, m["id"])["released"]) == ("50000.00", "0.00")


def test_partial_release_and_retainage_released_later_by_a_warranty_milestone(app, people, new_milestone):
    alice = people["alice"]
    works = new_milestone(amount="40000.00", release_percentage="50", retainage_percentage="10")
    t = invoice(alice, works, "40000.00")
    detail = approve(people, works)
    # 50 % of 40 000 is due now: 18 000 paid, 10 % of it (2 000) retained; the other 20 000 stays held
    assert {k: detail["money"][k] for k in ("linked", "held", "released", "retained")} == {
        "linked": "40000.00", "held": "20000.00", "released": "18000.00", "retained": "2000.00"}
    assert kinds(alice, works["id"])[1:] == [("release", "18000.00", t["id"]), ("retain", "2000.00", t["id"])]

    problem(alice.post("/milestones", {"contract_id": works["contract_id"], "code": "W0", "type": "non_financial",
                                       "retention_of_id": 999999}), 422)
    warranty = new_milestone(type="non_financial", amount=None, retention_of_id=works["id"])
    [seat] = ok(alice.post(f"/milestones/{warranty['id']}/submission"), 201)["open_tasks"]
    ok(people["dave"].post(f"/tasks/{seat['id']}/completion", {"decision": "approve"}))  # project-managers
    assert ok(alice.get(f"/milestones/{warranty['id']}"))["status"] == "completed"
    # its approval releases the retention and the 20 000 the first release step withheld
    after = money(alice, works["id"])
    assert (after["released"], after["retained"], after["held"]) == ("40000.00", "0.00", "0.00")
    assert kinds(alice, works["id"])[-2:] == [("retention_release", "2000.00", t["id"]),
                                              ("release", "20000.00", t["id"])]
    assert ok(alice.get(f"/milestones/{warranty['id']}"))["release"]["amount"] == "22000.00"


def test_linking_more_than_the_milestone_amount_is_refused_with_the_numbers(people, new_milestone):
    alice = people["alice"]
    m = new_milestone(amount="50000.00")
    invoice(alice, m, "45000.00")
    refused = problem(alice.post(f"/contracts/{m['contract_id']}/transactions",
                                 {"kind": "invoice", "amount": "6000.00", "currency": "EUR",
                                  "occurred_on": "2026-11-30", "milestone_id": m["id"]}), 409)
    assert (refused["linked"], refused["amount"], refused["requested"], refused["excess"]) == (
        "45000.00", "50000.00", "6000.00", "1000.00")
    mixed = problem(alice.post(f"/contracts/{m['contract_id']}/transactions",
                               {"kind": "invoice", "amount": "1.00", "currency": "USD", "occurred_on": "2026-11-30",
                                "milestone_id": m["id"]}), 422)
    assert "currency" in mixed["errors"]
    assert money(alice, m["id"])["linked"] == "45000.00"


def test_unlinking_cancels_the_hold_and_released_money_cannot_be_unlinked(people, new_milestone):
    alice = people["alice"]
    m = new_milestone(amount="50000.00")
    t = invoice(alice, m, "50000.00")
    ok(alice.delete(f"/transactions/{t['id']}/link"))
    assert {k: money(alice, m["id"])[k] for k in ("linked", "held", "cancelled")} == {
        "linked": "0.00", "held": "0.00", "cancelled": "50000.00"}
    ok(alice.post(f"/transactions/{t['id']}/link", {"milestone_id": m["id"]}))
    approve(people, m)
    assert problem(alice.delete(f"/transactions/{t['id']}/link"), 409)["current_state"] == "completed"
    assert [k for k, _, _ in kinds(alice, m["id"])] == ["hold", "cancel", "hold", "release"]


def test_only_treasury_reverses_with_a_reason_once_and_balances_follow(app, people, new_milestone, treasurer):
    alice = people["alice"]
    m = new_milestone(amount="50000.00")
    invoice(alice, m, "50000.00")
    approve(people, m)
    release = ok(alice.get(f"/milestones/{m['id']}/ledger"))["entries"][-1]
    url = f"/ledger-entries/{release['id']}/reversal"
    problem(people["bob"].post(url, {"reason": "paid twice"}), 403)
    problem(treasurer.post(url, {"reason": ""}), 422)
    hold = ok(alice.get(f"/milestones/{m['id']}/ledger"))["entries"][0]
    problem(treasurer.post(f"/ledger-entries/{hold['id']}/reversal", {"reason": "x"}), 409)
    reversal = ok(treasurer.post(url, {"reason": "the bank rejected the transfer"}), 201)
    assert (reversal["kind"], reversal["amount"], reversal["reverses_id"], reversal["actor"]) == (
        "reversal", "50000.00", release["id"], "tess")
    assert problem(treasurer.post(url, {"reason": "again"}), 409)["reversal_id"] == reversal["id"]
    after = money(alice, m["id"])
    assert (after["released"], after["reversed"], after["linked"]) == ("0.00", "50000.00", "50000.00")
    trail = ok(alice.get(f"/milestones/{m['id']}/audit-events", query_string={"action": "ledger.reversed"}))
    assert trail["items"][0]["after"]["reason"] == "the bank rejected the transfer"
    with app.extensions["milestones"].session_factory() as s:
        facts = s.scalars(select(OutboxMessage.payload).where(OutboxMessage.event == "payment.instruction")
                          .order_by(OutboxMessage.id)).all()
        assert [f["facts"]["action"] for f in facts] == ["pay", "reverse"]


def test_entries_are_never_updated(app, people, new_milestone):
    m = new_milestone(amount="50000.00")
    invoice(people["alice"], m, "50000.00")
    engine = app.extensions["milestones"].engine
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text("UPDATE ledger_entries SET amount = 1"))
    if engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text("DELETE FROM ledger_entries"))
    with app.extensions["milestones"].session_factory() as s:
        assert s.scalar(select(func.sum(LedgerEntry.amount))) == Decimal("50000.00")


def test_a_reviewer_reconciles_the_contract_ledger_by_hand(people, new_milestone, treasurer):
    alice = people["alice"]
    a = new_milestone(amount="40000.00", retainage_percentage="5")
    b = new_milestone(amount="10000.00")
    invoice(alice, a, "40000.00")
    tb = invoice(alice, b, "10000.00")
    approve(people, a)
    ok(alice.delete(f"/transactions/{tb['id']}/link"))
    contract_id = a["contract_id"]
    ledger = ok(alice.get(f"/contracts/{contract_id}/ledger"))
    assert {k: ledger["balance"][k] for k in ("linked", "held", "released", "retained", "cancelled")} == {
        "linked": "40000.00", "held": "0.00", "released": "38000.00", "retained": "2000.00",
        "cancelled": "10000.00"}
    response = alice.get(f"/contracts/{contract_id}/ledger.csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    header, body = rows[0], rows[1:]
    entries = [dict(zip(header, r, strict=True)) for r in body if r and r[0].isdigit()]
    # by hand: per milestone, held = holds - cancels - releases - retains (+0 retention released here)
    for milestone_id in {e["milestone_id"] for e in entries}:
        mine = [e for e in entries if e["milestone_id"] == milestone_id]

        def total(kind: str, mine: list[dict[str, str]] = mine) -> Decimal:
            return sum((Decimal(e["amount"]) for e in mine if e["kind"] == kind), Decimal("0"))

        held = total("hold") - total("cancel") - total("release") - total("retain")
        line = next(r for r in body if r[:2] == ["milestone", milestone_id])
        assert Decimal(line[5]) == held and Decimal(line[6]) == total("release")
    assert next(r for r in body if r and r[0] == "contract")[6] == "38000.00"
    problem(alice.get("/contracts/999999/ledger"), 404)
    problem(alice.get("/milestones/999999/ledger"), 404)
