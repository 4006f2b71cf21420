"""The approval path through HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from app.models import AuditEvent, FundRelease, HumanTaskRow, WorkflowInstance


def _inbox(api: Any, **params: Any) -> list[dict[str, Any]]:
    response = api.get("/tasks", query_string=params)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["items"]


def _submit(api: Any, milestone_id: int) -> dict[str, Any]:
    response = api.post(f"/milestones/{milestone_id}/submission")
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_financial_milestone_is_routed_approved_and_funds_released_once(app, people, new_milestone):
    alice, bob, carol, dave = people["alice"], people["bob"], people["carol"], people["dave"]
    milestone = new_milestone(amount="50000.00")
    assert milestone["status"] == "active"
    invoice = alice.post(f"/contracts/{milestone['contract_id']}/transactions",
                         {"kind": "invoice", "amount": "50000.00", "currency": "EUR", "occurred_on": "2026-11-30",
                          "milestone_id": milestone["id"]})
    assert invoice.status_code == 201, invoice.get_json()
    money = alice.get(f"/milestones/{milestone['id']}").get_json()["money"]
    assert (money["linked"], money["held"], money["released"]) == ("50000.00", "50000.00", "0.00")

    submission = _submit(alice, milestone["id"])
    assert submission["milestone"]["status"] == "submitted"
    assert submission["round"] == 1
    [task] = submission["open_tasks"]
    assert task["bpmn_id"] == "review_milestone"
    # DMN: financial, 10k <= amount < 100k -> one level, one of the finance managers
    assert (task["group"], task["level"], task["seat"]) == ("finance-managers", 1, 1)
    assert task["candidate_users"] == ["bob", "carol"] and task["candidate_groups"] == []
    due = datetime.fromisoformat(task["due_at"]) - datetime.fromisoformat(task["created_at"])
    assert due == timedelta(days=5)

    # both finance managers see it; the project manager does not
    assert [t["id"] for t in _inbox(bob)] == [task["id"]]
    assert [t["id"] for t in _inbox(carol, group="finance-managers")] == [task["id"]]
    assert _inbox(carol, group="executive-board") == []
    assert _inbox(dave) == []
    assert dave.get(f"/tasks/{task['id']}").status_code == 404

    done = bob.post(f"/tasks/{task['id']}/completion", {"decision": "approve", "comment": "looks right"})
    assert done.status_code == 200, done.get_json()
    assert done.get_json()["status"] == "completed"
    assert done.get_json()["assignee"] == "bob"

    detail = alice.get(f"/milestones/{milestone['id']}").get_json()
    assert detail["status"] == "completed"
    assert detail["open_tasks"] == []
    assert detail["release"]["amount"] == "50000.00" and detail["release"]["currency"] == "EUR"
    assert (detail["money"]["held"], detail["money"]["released"]) == ("0.00", "50000.00")
    assert [d["decision"] for d in detail["decisions"]] == ["approve"]
    statuses = [h["after"]["status"] for h in detail["history"] if h["action"] == "milestone.status_changed"]
    assert statuses == ["draft", "active", "submitted", "approved", "completed"]
    assert _inbox(bob) == []
    assert [t["id"] for t in _inbox(bob, state="completed")] == [task["id"]]

    with app.extensions["milestones"].session_factory() as s:
        assert s.scalar(select(func.count()).select_from(FundRelease)) == 1
        instance = s.scalar(select(WorkflowInstance).where(WorkflowInstance.process_id == "milestone_approval"))
        assert instance.status == "completed"
        assert len(instance.state) < 2048  # state only, gzipped: the spec is stored once per deployment


def test_routing_follows_the_decision_table(people, new_milestone):
    alice = people["alice"]
    cases = [("financial", "5000.00", "finance"), ("financial", "150000.00", "finance-managers"),
             ("non_financial", None, "project-managers")]
    for type_, amount, group in cases:
        milestone = new_milestone(type=type_, amount=amount)
        [task] = _submit(alice, milestone["id"])["open_tasks"]
        assert (task["group"], task["level"]) == (group, 1), (type_, amount)


def test_non_financial_approval_releases_no_funds(app, people, new_milestone):
    milestone = new_milestone(type="non_financial", amount=None)
    [task] = _submit(people["alice"], milestone["id"])["open_tasks"]
    assert people["dave"].post(f"/tasks/{task['id']}/completion", {"decision": "approve"}).status_code == 200
    detail = people["alice"].get(f"/milestones/{milestone['id']}").get_json()
    assert detail["status"] == "completed"
    assert detail["release"] is None


def test_decline_goes_back_to_the_submitter_and_resubmission_starts_a_new_round(app, people, new_milestone):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    milestone = new_milestone()
    [review] = _submit(alice, milestone["id"])["open_tasks"]

    declined = bob.post(f"/tasks/{review['id']}/completion", {"decision": "decline", "comment": "no evidence"})
    assert declined.status_code == 200, declined.get_json()
    detail = alice.get(f"/milestones/{milestone['id']}").get_json()
    assert detail["status"] == "declined"
    [rework] = detail["open_tasks"]
    assert rework["bpmn_id"] == "rework_milestone"
    assert rework["candidate_users"] == ["alice"]
    assert [t["id"] for t in _inbox(alice)] == [rework["id"]]
    assert _inbox(bob) == []

    # only the submitter may resubmit
    assert bob.post(f"/milestones/{milestone['id']}/submission").status_code == 403
    resumed = alice.post(f"/milestones/{milestone['id']}/submission")
    assert resumed.status_code == 201, resumed.get_json()
    body = resumed.get_json()
    assert body["resumed"] is True and body["round"] == 2
    assert body["milestone"]["status"] == "submitted"
    [review2] = body["open_tasks"]
    assert review2["bpmn_id"] == "review_milestone" and review2["id"] != review["id"]

    assert carol.post(f"/tasks/{review2['id']}/completion", {"decision": "approve"}).status_code == 200
    detail = alice.get(f"/milestones/{milestone['id']}").get_json()
    assert detail["status"] == "completed" and detail["round"] == 2
    assert [(d["bpmn_id"], d["decision"]) for d in detail["decisions"]] == [
        ("review_milestone", "decline"), ("rework_milestone", None), ("review_milestone", "approve")]
    with app.extensions["milestones"].session_factory() as s:
        rounds = s.scalars(select(WorkflowInstance.round).where(WorkflowInstance.process_id == "milestone_approval")
                           .order_by(WorkflowInstance.round)).all()
        assert rounds == [1, 2]  # one bounded instance per round
        assert s.scalar(select(func.count()).select_from(FundRelease)) == 1


def test_submitter_can_never_approve_their_own_milestone(app, people, make_user, new_milestone):
    # frank manages contracts *and* sits in finance-managers
    frank = make_user("frank", "finance-managers")
    milestone = new_milestone()
    [task] = _submit(frank, milestone["id"])["open_tasks"]
    assert task["candidate_users"] == ["bob", "carol"]  # the submitter is left out of the electorate ...
    assert _inbox(frank) == []

    for attempt in (frank.post(f"/tasks/{task['id']}/completion", {"decision": "approve"}),
                    frank.post(f"/tasks/{task['id']}/claim")):
        assert attempt.status_code == 403
        assert attempt.content_type == "application/problem+json"
        assert "segregation of duties" in attempt.get_json()["detail"]  # ... and told why when he tries
        assert attempt.get_json()["rule"] == "submitter"
    # nothing changed
    with app.extensions["milestones"].session_factory() as s:
        assert s.get(HumanTaskRow, task["id"]).status == "open"
        assert s.get(HumanTaskRow, task["id"]).assignee_id is None
    assert people["bob"].post(f"/tasks/{task['id']}/completion", {"decision": "approve"}).status_code == 200


def test_claim_and_unclaim(people, new_milestone):
    bob, carol = people["bob"], people["carol"]
    milestone = new_milestone()
    [task] = _submit(people["alice"], milestone["id"])["open_tasks"]
    url = f"/tasks/{task['id']}"

    claimed = bob.post(url + "/claim")
    assert claimed.status_code == 200 and claimed.get_json()["assignee"] == "bob"
    assert bob.post(url + "/claim").status_code == 200  # idempotent for the holder
    other = carol.post(url + "/claim")
    assert other.status_code == 409 and other.get_json()["assignee"] == "bob"
    assert carol.post(url + "/unclaim").status_code == 409
    blocked = carol.post(url + "/completion", {"decision": "approve"})
    assert blocked.status_code == 409 and "claimed by bob" in blocked.get_json()["detail"]

    released = bob.post(url + "/unclaim")
    assert released.status_code == 200 and released.get_json()["assignee"] is None
    assert carol.post(url + "/claim").status_code == 200
    assert carol.post(url + "/completion", {"decision": "approve"}).status_code == 200
    assert carol.post(url + "/claim").status_code == 409  # closed tasks cannot be claimed


def test_idempotency_key_replays_the_first_answer_and_changes_nothing(app, people, new_milestone):
    alice = people["alice"]
    milestone = new_milestone()
    key = {"Idempotency-Key": "submit-1"}
    first = alice.post(f"/milestones/{milestone['id']}/submission", headers=key)
    assert first.status_code == 201
    replay = alice.post(f"/milestones/{milestone['id']}/submission", headers=key)
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json() == first.get_json()
    # without the key the same call is a real second submission, and it is refused
    assert alice.post(f"/milestones/{milestone['id']}/submission").status_code == 409

    [task] = first.get_json()["open_tasks"]
    bob = people["bob"]
    done = bob.post(f"/tasks/{task['id']}/completion", {"decision": "approve"}, headers={"Idempotency-Key": "k"})
    again = bob.post(f"/tasks/{task['id']}/completion", {"decision": "approve"}, headers={"Idempotency-Key": "k"})
    assert done.status_code == again.status_code == 200
    assert again.get_json() == done.get_json()
    # the same key with a different request is refused, not silently replayed
    other = bob.post(f"/tasks/{task['id']}/completion", {"decision": "decline", "comment": "x"},
                     headers={"Idempotency-Key": "k"})
    assert other.status_code == 422 and other.content_type == "application/problem+json"

    with app.extensions["milestones"].session_factory() as s:
        assert s.scalar(select(func.count()).select_from(WorkflowInstance)
                        .where(WorkflowInstance.process_id == "milestone_approval")) == 1
        assert s.scalar(select(func.count()).select_from(FundRelease)) == 1
        completions = s.scalar(select(func.count()).select_from(AuditEvent)
                               .where(AuditEvent.action == "task.completed"))
        assert completions == 1


def test_idempotency_keys_are_per_user(people, new_milestone):
    a = people["alice"].post("/accounts", {"name": "One"}, headers={"Idempotency-Key": "same"})
    b = people["bob"].post("/accounts", {"name": "Two"}, headers={"Idempotency-Key": "same"})
    assert a.status_code == b.status_code == 201
    assert a.get_json()["id"] != b.get_json()["id"]


def test_lists_filter_and_paginate(people, contract, new_milestone):
    alice = people["alice"]
    for _ in range(3):
        new_milestone()
    new_milestone(type="non_financial", amount=None)
    page = alice.get("/milestones", query_string={"page_size": 2}).get_json()
    assert page["total"] == 4 and len(page["items"]) == 2
    assert alice.get("/milestones", query_string={"type": "non_financial"}).get_json()["total"] == 1
    assert alice.get("/milestones", query_string={"status": "active", "contract_id": contract["id"]}
                     ).get_json()["total"] == 4
    assert alice.get("/milestones", query_string={"status": "completed"}).get_json()["total"] == 0
    assert alice.get("/accounts").get_json()["total"] == 1
    assert alice.get(f"/contracts/{contract['id']}").get_json()["number"] == "C-1"


def test_openapi_and_docs_are_served(app):
    client = app.test_client()
    spec = client.get("/api/v1/openapi.json")
    assert spec.status_code == 200
    paths = spec.get_json()["paths"]
    for path in ("/api/v1/milestones/{milestone_id}/submission", "/api/v1/tasks/{task_id}/completion",
                 "/api/v1/tasks/{task_id}/claim", "/api/v1/tasks/{task_id}/unclaim"):
        assert "post" in paths[path]
    docs = client.get("/api/v1/docs")
    assert docs.status_code == 200 and b"swagger-ui" in docs.data
    asset = client.get("/api/v1/docs/assets/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.data) > 100_000
    asset.close()
