"""Through HTTP: the primary contact's to-dos in their task list, in-app notifications, preferences,
and the operators' view of deliveries (dead letters and retry). SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.channels import build_transports
from app.config import NotificationSettings
from app.models import AuditEvent, Delivery, OutboxMessage, WorkflowInstance
from app.services import identity
from app.services.delivery import pump
from app.uow import UnitOfWork
from tests.conftest import Api
from tests.notify_support import WebhookReceiver, outbox

PROBLEM = "application/problem+json"


def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.get_json()
    return response.get_json()


def _put(api: Api, path: str, body: Any) -> Any:
    return api.client.put("/api/v1" + path, json=body, headers={"Authorization": f"Bearer {api.token}"})


def _pump(app: Any, settings: NotificationSettings | None = None) -> Any:
    state = app.extensions["milestones"]
    settings = settings or state.settings.notifications
    return pump(state.session_factory, settings, build_transports(settings, state.settings.instance_dir))


@pytest.fixture
def cora(make_user: Any) -> Api:
    return make_user("cora")


@pytest.fixture
def contact(people: dict[str, Api], contract: dict[str, Any], cora: Api) -> dict[str, Any]:
    created = people["alice"].post(f"/accounts/{contract['account_id']}/contacts",
                                   {"name": "Cora Contact", "email": "Cora@Supplier.example", "username": "cora"})
    return _ok(created, 201)


def _milestone(people: dict[str, Api], contract: dict[str, Any], contact: dict[str, Any] | None, code: str = "C1",
               days: int | None = 20, activate: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"contract_id": contract["id"], "code": code, "type": "financial", "amount": "1000.00"}
    if contact is not None:
        body["primary_contact_id"] = contact["id"]
    if days is not None:
        body["due_date"] = (date.today() + timedelta(days=days)).isoformat()
    milestone = _ok(people["alice"].post("/milestones", body), 201)
    if activate:
        milestone = _ok(people["alice"].post(f"/milestones/{milestone['id']}/activation"))
    return milestone


# --------------------------------------------------------------------------- contacts and to-dos
def test_a_contact_is_linked_to_a_user_by_name(people, contract, contact):
    assert contact["user_id"] is not None and contact["email"] == "cora@supplier.example"
    unknown = people["alice"].post(f"/accounts/{contract['account_id']}/contacts",
                                   {"name": "Nobody", "email": "no@body.example", "username": "nobody"})
    assert unknown.status_code == 422 and unknown.content_type == PROBLEM
    assert unknown.get_json()["errors"] == {"username": ["no user 'nobody'"]}


def test_the_primary_contact_gets_todos_with_due_dates_and_submission_closes_them(app, people, contract, contact,
                                                                                   cora):
    milestone = _milestone(people, contract, contact, days=20)
    assert milestone["status"] == "active"
    todos = _ok(cora.get("/tasks"))["items"]
    assert sorted(t["bpmn_id"] for t in todos) == ["answer_questions", "upload_evidence"]
    due = (date.today() + timedelta(days=20)).isoformat()
    for task in todos:
        assert task["candidate_users"] == ["cora"] and task["milestone_id"] == milestone["id"]
        assert task["due_at"].startswith(due) and task["process_id"] == "milestone_contact_tasks"
    assert _ok(people["bob"].get("/tasks"))["items"] == []  # nobody else's inbox
    answer = next(t for t in todos if t["bpmn_id"] == "answer_questions")
    _ok(cora.post(f"/tasks/{answer['id']}/completion", {}))
    evidence = next(t for t in todos if t["bpmn_id"] == "upload_evidence")
    _ok(cora.post(f"/tasks/{evidence['id']}/completion", {"comment": "uploaded"}))
    [submit] = _ok(cora.get("/tasks"))["items"]
    assert submit["bpmn_id"] == "submit_milestone" and submit["name"] == "Submit the milestone for approval"

    # the lifecycle's transitions are unchanged; submitting closes the contact's remaining to-do
    submitted = _ok(people["alice"].post(f"/milestones/{milestone['id']}/submission"), 201)
    assert submitted["milestone"]["status"] == "submitted"
    assert _ok(cora.get("/tasks"))["items"] == []
    closed = {t["bpmn_id"]: t for t in _ok(cora.get("/tasks?state=any"))["items"]}
    assert closed["submit_milestone"]["status"] == "completed"
    assert closed["submit_milestone"]["comment"] == "closed: the milestone was submitted"
    with app.extensions["milestones"].session_factory() as s:
        row = s.scalar(select(WorkflowInstance).where(WorkflowInstance.process_id == "milestone_contact_tasks"))
        assert row is not None and row.status == "completed" and row.next_timer_at is None
        actions = set(s.scalars(select(AuditEvent.action)))
    assert {"contact_tasks.started", "contact_tasks.closed"} <= actions


def test_cancelling_an_active_milestone_cancels_the_todos_and_their_reminders(app, people, contract, contact, cora):
    milestone = _milestone(people, contract, contact)
    assert len(_ok(cora.get("/tasks"))["items"]) == 2
    _ok(people["alice"].post(f"/milestones/{milestone['id']}/cancellation"))
    assert _ok(cora.get("/tasks"))["items"] == []
    with app.extensions["milestones"].session_factory() as s:
        row = s.scalar(select(WorkflowInstance).where(WorkflowInstance.process_id == "milestone_contact_tasks"))
        assert row is not None and row.status == "cancelled"


def test_without_a_linked_user_the_milestone_creator_works_the_todos(people, contract):
    contact = _ok(people["alice"].post(f"/accounts/{contract['account_id']}/contacts",
                                       {"name": "Erin", "email": "erin@acme.example"}), 201)
    assert contact["user_id"] is None
    _milestone(people, contract, contact)
    assert sorted(t["bpmn_id"] for t in _ok(people["alice"].get("/tasks"))["items"]) == [
        "answer_questions", "upload_evidence"]


def test_a_milestone_without_primary_contact_has_no_todos(app, people, contract):
    _milestone(people, contract, None)
    with app.extensions["milestones"].session_factory() as s:
        assert s.scalar(select(WorkflowInstance).where(WorkflowInstance.process_id == "milestone_contact_tasks")) \
            is None


# --------------------------------------------------------------------------- in-app, preferences
def test_in_app_notifications_are_listed_and_marked_read(app, people, contract, contact, cora):
    _milestone(people, contract, contact, code="C1")
    _milestone(people, contract, contact, code="C2", days=3)  # assigned, and the first reminder is due at once
    assert [m.event for m in outbox(app)] == ["contact.tasks_assigned", "contact.tasks_assigned", "contact.reminder"]
    assert _ok(cora.get("/notifications"))["total"] == 0  # written by the outbox's delivery, not before
    _pump(app)
    listed = _ok(cora.get("/notifications"))
    assert listed["total"] == 3
    newest = listed["items"][0]
    assert newest["event"] == "contact.reminder" and newest["title"].startswith("Reminder: milestone C2 is due on")
    assert newest["read_at"] is None and "/api/v1/milestones/" in newest["body"]
    read = _ok(cora.post(f"/notifications/{newest['id']}/read"))
    assert read["read_at"] is not None
    assert _ok(cora.post(f"/notifications/{newest['id']}/read"))["read_at"] == read["read_at"]  # idempotent
    assert _ok(cora.get("/notifications?unread=true"))["total"] == 2
    assert _ok(cora.get("/notifications?unread=false"))["total"] == 1
    other = people["bob"].post(f"/notifications/{newest['id']}/read")
    assert other.status_code == 404 and other.content_type == PROBLEM
    assert _ok(people["bob"].get("/notifications"))["total"] == 0


def test_preferences_choose_the_channels_per_event(app, people, contract, contact, cora):
    defaults = _ok(cora.get("/me/notification-preferences"))
    assert defaults["events"]["contact.reminder"] == ["email", "in_app"] and defaults["email"] is None
    assert set(defaults["events"]) >= {"approval.reminder", "approval.escalated", "contact.tasks_assigned",
                                       "contact.reminder", "contact.overdue"}
    changed = _ok(_put(cora, "/me/notification-preferences",
                       {"events": {"contact.tasks_assigned": ["email"], "contact.reminder": []},
                        "email": "cora@home.example"}))
    assert changed["events"]["contact.tasks_assigned"] == ["email"] and changed["events"]["contact.reminder"] == []
    assert changed["events"]["contact.overdue"] == ["email", "in_app"] and changed["email"] == "cora@home.example"
    bad = _put(cora, "/me/notification-preferences", {"events": {"contact.reminder": ["pigeon"]}})
    assert bad.status_code == 422
    unknown = _put(cora, "/me/notification-preferences", {"events": {"weather.report": ["email"]}})
    assert unknown.status_code == 422 and "unknown event" in str(unknown.get_json()["errors"])

    _milestone(people, contract, contact, code="C2", days=3)
    _pump(app)
    with app.extensions["milestones"].session_factory() as s:
        sent = sorted((d.event, d.channel, d.recipient) for d in s.scalars(select(Delivery)))
    # assigned: e-mail only, to the address she set; the reminder: nothing for her at all
    assert sent == [("contact.tasks_assigned", "email", "cora@home.example")]
    assert _ok(cora.get("/notifications"))["total"] == 0


# --------------------------------------------------------------------------- operators
def _admin(app: Any) -> Api:
    with UnitOfWork(app.extensions["milestones"].session_factory) as uow:
        user = identity.create_user(uow, "root", [], is_admin=True)
        token = identity.issue_token(uow, user)
        uow.commit()
    return Api(app.test_client(), token, "root")


def test_dead_deliveries_are_listed_for_admins_and_an_operator_retries_them(app, people, contract, contact, cora):
    admin = _admin(app)
    receiver = WebhookReceiver(secret="s3cret", fail_first=1).start()  # down for the first request
    try:
        state = app.extensions["milestones"]
        broken = replace(state.settings.notifications, webhook_url=receiver.url, webhook_secret="s3cret",
                         max_attempts=1)
        _milestone(people, contract, contact)
        _pump(app, broken)
        dead = _ok(admin.get("/deliveries?status=dead"))
        assert dead["total"] == 1
        [item] = dead["items"]
        assert item["channel"] == "webhook" and item["attempts"] == 1 and item["last_error"]
        assert item["event"] == "contact.tasks_assigned" and item["idempotency_key"].startswith("dlv_")
        delivered = _ok(admin.get("/deliveries?status=delivered"))["items"]
        assert {d["channel"] for d in delivered} == {"email", "in_app"}

        refused = cora.get("/deliveries?status=dead")
        assert refused.status_code == 403 and refused.content_type == PROBLEM
        assert cora.post(f"/deliveries/{item['id']}/retry").status_code == 403
        not_dead = admin.post(f"/deliveries/{delivered[0]['id']}/retry")
        assert not_dead.status_code == 409

        assert "500" in item["last_error"]
        retried = _ok(admin.post(f"/deliveries/{item['id']}/retry"))  # the receiver is back
        assert retried["status"] == "pending" and retried["attempts"] == 0
        assert _pump(app, broken).outcomes == {item["id"]: "delivered"}
        assert _ok(admin.get(f"/deliveries/{item['id']}"))["status"] == "delivered"
        assert [r.key for r in receiver.requests] == [item["idempotency_key"]] * 2
        assert all(r.signature_ok for r in receiver.requests) and len(receiver.effects) == 1
        assert _ok(admin.get("/deliveries?status=dead"))["total"] == 0
        with state.session_factory() as s:
            assert s.scalar(select(AuditEvent).where(AuditEvent.action == "delivery.retried")) is not None
            assert s.scalar(select(OutboxMessage.status)) == "dispatched"
    finally:
        receiver.stop()
