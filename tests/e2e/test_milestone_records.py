"""Milestones in full: contacts, records, the lifecycle workflow, transactions, overview and CSV."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from typing import Any

from sqlalchemy import func, select

from app.models import AuditEvent, ContractTransaction, Milestone, WorkflowInstance

PROBLEM = "application/problem+json"


def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.get_json()
    return response.get_json()


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    assert response.content_type == PROBLEM
    return response.get_json()


def _count(app: Any, model: Any, *where: Any) -> int:
    with app.extensions["milestones"].session_factory() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def test_contacts_contracts_and_every_milestone_field(people, contract):
    alice = people["alice"]
    contact = _ok(alice.post(f"/accounts/{contract['account_id']}/contacts",
                             {"name": "Pat Site", "email": "Pat@Example.com", "role": "site manager"}), 201)
    assert contact["email"] == "pat@example.com"
    _problem(alice.post(f"/accounts/{contract['account_id']}/contacts", {"name": "Again", "email": "pat@example.com"}),
             409)
    assert _ok(alice.get(f"/accounts/{contract['account_id']}/contacts"))["total"] == 1

    dated = _ok(alice.post("/contracts", {"account_id": contract["account_id"], "number": "C-2", "title": "Annex",
                                          "currency": "EUR", "value": "1000.00", "start_date": "2026-01-01",
                                          "end_date": "2026-12-31"}), 201)
    assert (dated["start_date"], dated["end_date"]) == ("2026-01-01", "2026-12-31")
    assert "end_date" in _problem(alice.post("/contracts", {
        "account_id": contract["account_id"], "number": "C-3", "title": "Backwards", "currency": "EUR",
        "start_date": "2026-02-01", "end_date": "2026-01-01"}), 422)["errors"]

    milestone = _ok(alice.post(f"/contracts/{contract['id']}/milestones", {
        "code": "FND", "type": "financial", "percentage": "10", "description": "Foundations",
        "due_date": "2030-01-31", "primary_contact_id": contact["id"],
        "external_refs": [{"system": "SAP", "reference": "PO-77"}, {"system": "Jira", "reference": "OPS-1"}],
    }), 201)
    assert milestone["contract_id"] == contract["id"] and milestone["account_id"] == contract["account_id"]
    assert milestone["amount"] == "500000.00"  # 10 % of 5 000 000
    assert milestone["currency"] == "EUR" and milestone["status"] == "draft" and milestone["published"] is False
    assert milestone["external_refs"][0] == {"system": "SAP", "reference": "PO-77"}
    assert milestone["primary_contact_id"] == contact["id"]


def test_milestone_rules_are_field_errors_or_conflicts(app, people, contract, make_user):
    alice = people["alice"]
    url = f"/contracts/{contract['id']}/milestones"
    before = _count(app, Milestone)
    cases = [
        ({"code": "A", "type": "financial"}, "amount"),
        ({"code": "A", "type": "financial", "amount": "-5"}, "amount"),
        ({"code": "A", "type": "financial", "amount": "5", "currency": "USD"}, "currency"),
        ({"code": "A", "type": "financial", "amount": "5", "percentage": "5"}, "percentage"),
        ({"code": "A", "type": "non_financial", "amount": "5"}, "amount"),
        ({"code": "A", "type": "financial", "amount": "5", "primary_contact_id": 999}, "primary_contact_id"),
        ({"code": "A", "type": "financial", "amount": "5", "external_refs": [{"system": "SAP"}]}, "external_refs"),
        ({"code": "A", "type": "financial", "amount": "5", "status": "approved"}, "status"),
    ]
    for body, field in cases:
        assert field in _problem(alice.post(url, body), 422)["errors"], body
    assert _count(app, Milestone) == before
    _ok(alice.post(url, {"code": "A", "type": "financial", "amount": "4000000.00"}), 201)
    _problem(alice.post(url, {"code": "A", "type": "non_financial"}), 409)  # duplicate code
    over = _problem(alice.post(url, {"code": "B", "type": "financial", "amount": "1500000.00"}), 409)
    assert over["excess"] == "500000.00" and "500000.00 EUR more than the contract value" in over["detail"]
    _problem(alice.post("/contracts/9999/milestones", {"code": "Z", "type": "non_financial"}), 404)
    assert _count(app, Milestone) == before + 1


def test_lifecycle_transitions_are_executed_by_the_workflow(app, people, new_milestone):
    alice = people["alice"]
    draft = new_milestone(activate=False)
    detail = _ok(alice.get(f"/milestones/{draft['id']}"))
    assert detail["status"] == "draft" and detail["allowed_actions"] == ["activate", "cancel"]

    for action, path in (("submit", "submission"), ("publish", "publication")):
        refused = _problem(alice.post(f"/milestones/{draft['id']}/{path}"), 409)
        assert refused["current_state"] == "draft" and refused["allowed"] == ["activate", "cancel"], action

    active = _ok(alice.post(f"/milestones/{draft['id']}/activation"))
    assert active["status"] == "active"
    published = _ok(alice.post(f"/milestones/{draft['id']}/publication"))
    assert published["published"] is True and published["published_at"]
    assert _problem(alice.post(f"/milestones/{draft['id']}/publication"), 409)["allowed"] == [
        "unpublish", "submit", "cancel"]
    assert _ok(alice.client.delete(f"/api/v1/milestones/{draft['id']}/publication",
                                   headers={"Authorization": f"Bearer {alice.token}"}))["published"] is False
    _problem(alice.post(f"/milestones/{draft['id']}/activation"), 409)

    history = [h["action"] for h in _ok(alice.get(f"/milestones/{draft['id']}"))["history"]]
    assert "milestone.published" in history and "milestone.unpublished" in history
    with app.extensions["milestones"].session_factory() as s:
        steps = [e.after.get("by_step") for e in s.scalars(select(AuditEvent).where(
            AuditEvent.entity_id == str(draft["id"]), AuditEvent.action == "milestone.status_changed"))]
        assert steps == ["mark_draft", "mark_active"]  # status written by the lifecycle diagram's steps


def test_cancel_from_every_open_state(app, people, new_milestone):
    alice, bob = people["alice"], people["bob"]
    draft = new_milestone(activate=False)
    assert _ok(alice.post(f"/milestones/{draft['id']}/cancellation"))["status"] == "cancelled"
    active = new_milestone()
    assert _ok(alice.post(f"/milestones/{active['id']}/cancellation"))["status"] == "cancelled"

    in_review = new_milestone()
    [task] = _ok(alice.post(f"/milestones/{in_review['id']}/submission"), 201)["open_tasks"]
    assert [t["id"] for t in _ok(bob.get("/tasks"))["items"]] == [task["id"]]
    assert _ok(alice.post(f"/milestones/{in_review['id']}/cancellation"))["status"] == "cancelled"
    assert _ok(bob.get("/tasks"))["items"] == []  # the review left every inbox
    _problem(bob.post(f"/tasks/{task['id']}/completion", {"decision": "approve"}), 409)

    declined = new_milestone()
    [task] = _ok(alice.post(f"/milestones/{declined['id']}/submission"), 201)["open_tasks"]
    _ok(bob.post(f"/tasks/{task['id']}/completion", {"decision": "decline", "comment": "no"}))
    assert _ok(alice.get(f"/milestones/{declined['id']}"))["allowed_actions"] == ["submit", "cancel"]
    # the rework goes back to the submitter (the milestone has no primary contact)
    assert [(t["bpmn_id"], t["candidate_users"]) for t in _ok(alice.get("/tasks"))["items"]] == [
        ("rework_milestone", ["alice"])]
    assert _ok(alice.post(f"/milestones/{declined['id']}/cancellation"))["status"] == "cancelled"
    assert _ok(alice.get("/tasks"))["items"] == []  # the rework task is gone too

    for milestone in (draft, active, in_review, declined):
        refused = _problem(alice.post(f"/milestones/{milestone['id']}/activation"), 409)
        assert refused["current_state"] == "cancelled" and refused["allowed"] == []
    with app.extensions["milestones"].session_factory() as s:
        assert s.scalar(select(func.count()).select_from(WorkflowInstance)
                        .where(WorkflowInstance.status == "running")) == 0


def test_completed_milestone_ends_its_lifecycle(app, people, new_milestone):
    milestone = new_milestone(type="non_financial", amount=None)
    [task] = _ok(people["alice"].post(f"/milestones/{milestone['id']}/submission"), 201)["open_tasks"]
    _ok(people["dave"].post(f"/tasks/{task['id']}/completion", {"decision": "approve"}))
    detail = _ok(people["alice"].get(f"/milestones/{milestone['id']}"))
    assert detail["status"] == "completed" and detail["allowed_actions"] == []
    _problem(people["alice"].post(f"/milestones/{milestone['id']}/cancellation"), 409)
    with app.extensions["milestones"].session_factory() as s:
        statuses = dict(s.execute(select(WorkflowInstance.process_id, WorkflowInstance.status)).all())
        assert statuses == {"milestone_lifecycle": "completed", "milestone_approval": "completed"}


def test_transactions_link_only_to_financial_milestones_of_the_contract(app, people, contract, new_milestone):
    alice = people["alice"]
    financial = new_milestone()
    other = new_milestone(type="non_financial", amount=None)
    url = f"/contracts/{contract['id']}/transactions"
    base = {"kind": "invoice", "amount": "1200.00", "currency": "EUR", "occurred_on": "2026-11-01"}

    linked = _ok(alice.post(url, {**base, "milestone_id": financial["id"], "external_ref": "INV-1"}), 201)
    assert linked["milestone_id"] == financial["id"]
    plain = _ok(alice.post(url, {**base, "kind": "payment"}), 201)
    assert plain["milestone_id"] is None

    before = _count(app, ContractTransaction)
    refused = _problem(alice.post(f"/transactions/{plain['id']}/link", {"milestone_id": other["id"]}), 422)
    assert "non-financial" in refused["detail"]
    assert "currency" in _problem(alice.post(url, {**base, "currency": "USD"}), 422)["errors"]
    assert "amount" in _problem(alice.post(url, {**base, "amount": "-1"}), 422)["errors"]
    assert "kind" in _problem(alice.post(url, {**base, "kind": "gift"}), 422)["errors"]
    assert "objective_id" in _problem(alice.post(f"/transactions/{plain['id']}/link",
                                                 {"milestone_id": financial["id"], "objective_id": 999}),
                                      422)["errors"]
    _problem(alice.post("/contracts/9999/transactions", base), 404)
    _problem(alice.post("/transactions/9999/link", {"milestone_id": financial["id"]}), 404)
    assert _count(app, ContractTransaction) == before

    moved = _ok(alice.post(f"/transactions/{plain['id']}/link", {"milestone_id": financial["id"]}))
    assert moved["milestone_id"] == financial["id"]
    listed = _ok(alice.get(url, query_string={"milestone_id": financial["id"]}))
    assert {t["id"] for t in listed["items"]} == {linked["id"], plain["id"]}
    unlinked = _ok(alice.client.delete(f"/api/v1/transactions/{plain['id']}/link",
                                       headers={"Authorization": f"Bearer {alice.token}"}))
    assert unlinked["milestone_id"] is None


def test_overview_filters_sorts_counts_and_exports(app, people, contract, new_milestone):
    alice = people["alice"]
    today = date.today()
    contact = _ok(alice.post(f"/accounts/{contract['account_id']}/contacts", {"name": "Kim", "email": "k@x.io"}), 201)
    late = new_milestone(amount="300.00", due_date=(today - timedelta(days=3)).isoformat(),
                         primary_contact_id=contact["id"])
    soon = new_milestone(amount="100.00", due_date=today.isoformat())
    later = new_milestone(type="non_financial", amount=None, due_date=(today + timedelta(days=40)).isoformat())
    draft = new_milestone(amount="200.00", activate=False, description="=HYPERLINK(\"http://x\")")
    _ok(alice.post(f"/milestones/{soon['id']}/publication"))

    def ids(**query: Any) -> list[int]:
        return [m["id"] for m in _ok(alice.get("/milestones", query_string=query))["items"]]

    assert ids() == [late["id"], soon["id"], later["id"], draft["id"]]  # due date, no date last
    assert ids(sort="-amount") == [late["id"], draft["id"], soon["id"], later["id"]]
    assert ids(overdue="true") == [late["id"]]
    assert ids(published="true") == [soon["id"]]
    assert ids(status="draft") == [draft["id"]]
    assert ids(type="non_financial") == [later["id"]]
    assert ids(primary_contact_id=contact["id"]) == [late["id"]]
    assert ids(due_after=today.isoformat()) == [later["id"]]
    assert ids(due_before=today.isoformat(), account_id=contract["account_id"]) == [late["id"]]
    assert ids(contract_id=contract["id"], page_size=1, page=2) == [soon["id"]]

    summary = _ok(alice.get("/milestones/summary"))
    assert summary["by_status"] == {"active": 3, "draft": 1}
    assert summary["by_due"] == {"overdue": 1, "this_week": 1, "later": 1, "no_due_date": 1}
    assert _ok(alice.get("/milestones/summary", query_string={"type": "financial"}))["total"] == 3

    export = alice.get("/milestones/export.csv", query_string={"status": "active", "sort": "amount"})
    assert export.status_code == 200 and export.mimetype == "text/csv"
    assert export.headers["Content-Disposition"].startswith("attachment")
    rows = list(csv.DictReader(io.StringIO(export.get_data(as_text=True))))
    export.close()
    assert [int(r["id"]) for r in rows] == [soon["id"], late["id"], later["id"]]
    assert rows[0]["amount"] == "100.00" and rows[0]["published"] == "true"
    everything = alice.get("/milestones/export.csv")
    full = list(csv.DictReader(io.StringIO(everything.get_data(as_text=True))))
    everything.close()
    assert [r["description"] for r in full if int(r["id"]) == draft["id"]] == ["'=HYPERLINK(\"http://x\")"]

    for bad in ({"sort": "owner"}, {"overdue": "perhaps"}, {"due_before": "soon"}, {"status": "lost"}):
        assert _problem(alice.get("/milestones", query_string=bad), 422)["errors"]
