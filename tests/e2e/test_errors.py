"""Every error is application/problem+json, names what is wrong, and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from app.models import AuditEvent, Milestone, WorkflowInstance

PROBLEM = "application/problem+json"


def _snapshot(app: Any) -> tuple[int, int, int]:
    with app.extensions["milestones"].session_factory() as s:
        return (s.scalar(select(func.count()).select_from(Milestone)),
                s.scalar(select(func.count()).select_from(WorkflowInstance)),
                s.scalar(select(func.count()).select_from(AuditEvent)))


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    assert response.content_type == PROBLEM
    body = response.get_json()
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"].startswith("https://")
    return body


def test_unknown_field_is_named(app, people, contract):
    before = _snapshot(app)
    body = _problem(people["alice"].post("/milestones", {"contract_id": contract["id"], "code": "X",
                                                         "type": "financial", "amount": "10.00",
                                                         "status": "approved"}), 422)
    assert body["errors"] == {"status": ["Unknown field."]}
    assert _snapshot(app) == before


def test_wrong_types_are_named_per_field(app, people, contract):
    before = _snapshot(app)
    body = _problem(people["alice"].post("/milestones", {"contract_id": "one", "code": "X", "type": "gold",
                                                         "amount": "lots", "due_date": "tomorrow"}), 422)
    assert set(body["errors"]) == {"contract_id", "type", "amount", "due_date"}
    assert _snapshot(app) == before


def test_rule_violations_are_field_errors(app, people, contract):
    before = _snapshot(app)
    body = _problem(people["alice"].post("/milestones", {"contract_id": contract["id"], "code": "X",
                                                         "type": "financial"}), 422)
    assert "amount" in body["errors"]
    assert _snapshot(app) == before


def test_malformed_json_is_a_bad_request(app, people):
    response = people["alice"].client.post("/api/v1/accounts", data="{not json",
                                           headers={"Authorization": f"Bearer {people['alice'].token}",
                                                    "Content-Type": "application/json"})
    assert response.status_code in (400, 422)
    assert response.content_type == PROBLEM


@pytest.mark.parametrize("path", ["/milestones/999999", "/contracts/999999", "/accounts/999999",
                                  "/tasks/00000000-0000-0000-0000-000000000000", "/tasks/not-a-uuid"])
def test_unknown_ids_are_404(people, path):
    _problem(people["alice"].get(path), 404)


def test_unknown_milestone_submission_is_404_and_changes_nothing(app, people):
    before = _snapshot(app)
    _problem(people["alice"].post("/milestones/424242/submission"), 404)
    assert _snapshot(app) == before


def test_invalid_transition_names_current_state(app, people, new_milestone):
    milestone = new_milestone()
    assert people["alice"].post(f"/milestones/{milestone['id']}/submission").status_code == 201
    before = _snapshot(app)
    body = _problem(people["alice"].post(f"/milestones/{milestone['id']}/submission"), 409)
    assert body["title"] == "Invalid state transition"
    assert body["current_state"] == "submitted"
    assert body["allowed"] == ["cancel"]
    assert _snapshot(app) == before


def test_completed_milestone_cannot_be_submitted_again(people, new_milestone):
    milestone = new_milestone(type="non_financial", amount=None)
    [task] = people["alice"].post(f"/milestones/{milestone['id']}/submission").get_json()["open_tasks"]
    assert people["dave"].post(f"/tasks/{task['id']}/completion", {"decision": "approve"}).status_code == 200
    body = _problem(people["alice"].post(f"/milestones/{milestone['id']}/submission"), 409)
    assert body["current_state"] == "completed"


def test_duplicates_are_conflicts(app, people, contract):
    alice = people["alice"]
    _problem(alice.post("/contracts", {"account_id": contract["account_id"], "number": "C-1", "title": "Again",
                                       "currency": "EUR"}), 409)
    _problem(alice.post("/accounts", {"name": "Acme"}), 409)


def test_unauthenticated_requests_are_401(app, people):
    client = app.test_client()
    missing = client.get("/api/v1/milestones")
    body = _problem(missing, 401)
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Bearer" in body["detail"]
    _problem(client.get("/api/v1/tasks", headers={"Authorization": "Bearer cm_wrong"}), 401)
    _problem(client.get("/api/v1/tasks", headers={"Authorization": "Basic abc"}), 401)
    before = _snapshot(app)
    _problem(client.post("/api/v1/accounts", json={"name": "X"}), 401)
    assert _snapshot(app) == before


def test_forbidden_is_403_with_reason(people, new_milestone):
    milestone = new_milestone()
    alice = people["alice"]
    [task] = alice.post(f"/milestones/{milestone['id']}/submission").get_json()["open_tasks"]
    bob = people["bob"]
    assert bob.post(f"/tasks/{task['id']}/completion", {"decision": "decline", "comment": "no"}).status_code == 200
    body = _problem(bob.post(f"/milestones/{milestone['id']}/submission"), 403)
    assert "submitter" in body["detail"]


def test_tasks_of_others_are_invisible(people, new_milestone):
    milestone = new_milestone()
    [task] = people["alice"].post(f"/milestones/{milestone['id']}/submission").get_json()["open_tasks"]
    for verb in ("claim", "unclaim", "completion"):
        _problem(people["eve"].post(f"/tasks/{task['id']}/{verb}", {} if verb == "completion" else None), 404)
    _problem(people["eve"].get(f"/tasks/{task['id']}"), 404)


def test_decision_and_decline_reason_are_required(app, people, new_milestone):
    milestone = new_milestone()
    [task] = people["alice"].post(f"/milestones/{milestone['id']}/submission").get_json()["open_tasks"]
    bob = people["bob"]
    assert "decision" in _problem(bob.post(f"/tasks/{task['id']}/completion", {}), 422)["errors"]
    assert "comment" in _problem(bob.post(f"/tasks/{task['id']}/completion", {"decision": "decline"}),
                                 422)["errors"]
    assert "decision" in _problem(bob.post(f"/tasks/{task['id']}/completion", {"decision": "maybe"}), 422)["errors"]
    # a completion cannot smuggle in routing data: extra fields are refused, form data is namespaced
    for smuggled in ("approval_group", "level_outcome"):
        assert smuggled in _problem(bob.post(f"/tasks/{task['id']}/completion",
                                             {"decision": "approve", smuggled: "x"}), 422)["errors"]
    assert bob.get(f"/tasks/{task['id']}").get_json()["status"] == "open"
    # form data cannot outvote the application's count of the level either: the approval counts
    done = bob.post(f"/tasks/{task['id']}/completion",
                    {"decision": "approve", "data": {"level_outcome": "declined", "decision": "decline"}})
    assert done.status_code == 200, done.get_json()
    assert people["alice"].get(f"/milestones/{milestone['id']}").get_json()["status"] == "completed"


def test_bad_query_parameters_are_named(people):
    body = _problem(people["alice"].get("/tasks", query_string={"page_size": 1000, "state": "weird"}), 422)
    assert {"page_size", "state"} <= set(body["errors"])
