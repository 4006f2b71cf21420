"""Issue 3's acceptance path, through the API alone: build, activate, publish, be stopped by the
completeness gate, complete the evidence, submit, get approved, find it all in the overview and CSV."""

from __future__ import annotations

import csv
import io
from typing import Any

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64


def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.get_json()
    return response.get_json()


def test_contract_manager_builds_submits_and_finds_everything(people):
    alice, bob, dave = people["alice"], people["bob"], people["dave"]
    auth = {"Authorization": f"Bearer {alice.token}"}

    account = _ok(alice.post("/accounts", {"name": "Harbour Works", "external_ref": "CRM-9"}), 201)
    contact = _ok(alice.post(f"/accounts/{account['id']}/contacts",
                             {"name": "Robin Quay", "email": "robin@harbour.example"}), 201)
    contract = _ok(alice.post("/contracts", {"account_id": account["id"], "number": "HW-1", "title": "Quay wall",
                                             "currency": "EUR", "value": "200000.00",
                                             "start_date": "2026-01-01", "end_date": "2027-06-30"}), 201)
    piling = _ok(alice.post(f"/contracts/{contract['id']}/milestones", {
        "code": "PILES", "type": "financial", "amount": "80000.00", "due_date": "2027-01-15",
        "primary_contact_id": contact["id"], "external_refs": [{"system": "SAP", "reference": "PO-4711"}]}), 201)
    survey = _ok(alice.post(f"/contracts/{contract['id']}/milestones", {
        "code": "SURVEY", "type": "non_financial", "due_date": "2026-12-15"}), 201)

    objective = _ok(alice.post(f"/milestones/{piling['id']}/objectives",
                               {"title": "Piles driven", "required": True, "evidence_required": True}), 201)
    question = _ok(alice.post(f"/objectives/{objective['id']}/questions",
                              {"text": "How many piles?", "answer_type": "number", "required": True}), 201)
    invoice = _ok(alice.post(f"/contracts/{contract['id']}/transactions", {
        "kind": "invoice", "amount": "80000.00", "currency": "EUR", "occurred_on": "2026-11-20",
        "milestone_id": piling["id"], "objective_id": objective["id"]}), 201)
    assert invoice["objective_id"] == objective["id"]

    for milestone in (piling, survey):
        assert _ok(alice.post(f"/milestones/{milestone['id']}/activation"))["status"] == "active"
    assert _ok(alice.post(f"/milestones/{piling['id']}/publication"))["published"] is True

    gate = alice.post(f"/milestones/{piling['id']}/submission")
    assert gate.status_code == 409 and gate.content_type == "application/problem+json"
    [missing] = gate.get_json()["missing"]
    assert missing["objective_id"] == objective["id"] and missing["evidence_missing"] is True
    assert [q["question_id"] for q in missing["unanswered_questions"]] == [question["id"]]
    assert _ok(alice.get(f"/milestones/{piling['id']}"))["status"] == "active"

    response = alice.client.put(f"/api/v1/questions/{question['id']}/answer", json={"value": 42}, headers=auth)
    assert response.status_code == 200, response.get_json()
    upload = alice.client.post(f"/api/v1/objectives/{objective['id']}/evidence", headers=auth,
                               data={"file": (io.BytesIO(PNG), "piles.png")}, content_type="multipart/form-data")
    assert upload.status_code == 201, upload.get_json()

    # the invoice is tied to the objective: its money is released only once the objective is met
    assert _ok(alice.post(f"/objectives/{objective['id']}/met", {"met": True}))["met"] is True
    [review] = _ok(alice.post(f"/milestones/{piling['id']}/submission"), 201)["open_tasks"]
    [survey_review] = _ok(alice.post(f"/milestones/{survey['id']}/submission"), 201)["open_tasks"]
    # 80 000: one level of finance managers; non-financial: one of project managers
    assert (review["level"], review["group"], sorted(review["candidate_users"])) == (1, "finance-managers",
                                                                                     ["bob", "carol"])
    assert (survey_review["group"], survey_review["candidate_users"]) == ("project-managers", ["dave"])
    _ok(bob.post(f"/tasks/{review['id']}/completion", {"decision": "approve", "comment": "42 piles seen"}))

    detail = _ok(alice.get(f"/milestones/{piling['id']}"))
    assert detail["status"] == "completed" and detail["release"]["amount"] == "80000.00"
    assert (detail["money"]["released"], detail["money"]["held"]) == ("80000.00", "0.00")
    assert detail["published"] is True and detail["external_refs"] == [{"system": "SAP", "reference": "PO-4711"}]

    overview = _ok(alice.get("/milestones", query_string={"contract_id": contract["id"], "sort": "due_date"}))
    assert [(m["code"], m["status"]) for m in overview["items"]] == [("SURVEY", "submitted"), ("PILES", "completed")]
    summary = _ok(alice.get("/milestones/summary", query_string={"account_id": account["id"]}))
    assert summary["by_status"] == {"submitted": 1, "completed": 1}
    export = alice.get("/milestones/export.csv", query_string={"contract_id": contract["id"]})
    rows = list(csv.DictReader(io.StringIO(export.get_data(as_text=True))))
    export.close()
    assert [(r["code"], r["status"], r["published"], r["amount"]) for r in rows] == [
        ("SURVEY", "submitted", "false", ""), ("PILES", "completed", "true", "80000.00")]
    assert rows[1]["contract_number"] == "HW-1" and rows[1]["primary_contact_id"] == str(contact["id"])
    _ok(dave.post(f"/tasks/{survey_review['id']}/completion", {"decision": "approve"}))
