"""Timers in the database: the reminder and escalation of a review, the primary contact's reminders,
a policy table changed by deployment, and schedulers racing (threads and processes) that fire
every timer once. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from datetime import date, timedelta
from typing import Any

from sqlalchemy import select

from app.models import HumanTaskRow, OutboxMessage, TaskCandidate, WorkflowInstance, utcnow
from app.services.timers import fire_due_timers
from tests.notify_support import ROOT, deploy, outbox, policy_bundle, wait_for


def _state(app: Any) -> Any:
    return app.extensions["milestones"]


def _fire(app: Any) -> Any:
    return fire_due_timers(_state(app).session_factory, _state(app).deployments)


def _approval(app: Any, milestone_id: int) -> WorkflowInstance:
    with _state(app).session_factory() as s:
        row = s.scalar(select(WorkflowInstance).where(WorkflowInstance.milestone_id == milestone_id,
                                                      WorkflowInstance.process_id == "milestone_approval"))
        assert row is not None
        s.expunge(row)
        return row


def _submit(people: dict[str, Any], milestone: dict[str, Any]) -> dict[str, Any]:
    submitted = people["alice"].post(f"/milestones/{milestone['id']}/submission")
    assert submitted.status_code == 201, submitted.get_json()
    return submitted.get_json()


def test_the_default_policy_schedules_the_reminder_in_the_database(app, people, new_milestone):
    before = utcnow()
    milestone = new_milestone(amount="5000.00")
    [task] = _submit(people, milestone)["open_tasks"]
    row = _approval(app, milestone["id"])
    # P3D after the review opened (remind), the review itself due after P5D
    assert row.next_timer_at is not None
    assert timedelta(days=3) <= row.next_timer_at - before < timedelta(days=3, minutes=1)
    assert task["due_at"] is not None
    assert _fire(app).fired == []  # nothing is due yet
    decided = people["bob"].post(f"/tasks/{task['id']}/completion", {"decision": "approve"})
    assert decided.status_code == 200
    assert _approval(app, milestone["id"]).next_timer_at is None  # the boundary timers left with the review


def test_a_review_is_reminded_then_escalated_to_the_next_level(app, people, new_milestone):
    deploy(app, policy_bundle(remind_after="PT0.2S", escalate_after="PT1.2S", remind_to="approvers, submitter"))
    milestone = new_milestone(amount="5000.00")
    [task] = _submit(people, milestone)["open_tasks"]
    assert task["group"] == "finance" and task["candidate_users"] == ["bob"] and task["candidate_groups"] == []
    assert people["carol"].get(f"/tasks/{task['id']}").status_code == 404  # finance-managers: not yet

    instance_id = _approval(app, milestone["id"]).id
    wait_for(lambda: _approval_due(app, instance_id), 5, "the reminder")
    assert _fire(app).fired == [instance_id]
    [reminder] = outbox(app, "approval.reminder")
    # "approvers" are the level's electorate (users: bob of finance), "submitter" is alice
    assert reminder.recipients == {"users": ["alice", "bob"]}
    assert reminder.milestone_id == milestone["id"]
    assert task["id"] in reminder.payload["body"] and "awaits your review" in reminder.payload["title"]
    assert outbox(app, "approval.escalated") == []

    wait_for(lambda: _approval_due(app, instance_id), 5, "the escalation")
    assert _fire(app).fired == [instance_id]
    [escalation] = outbox(app, "approval.escalated")
    assert escalation.recipients == {"groups": ["finance-managers"]}
    with _state(app).session_factory() as s:
        candidates = {(kind, name) for kind, name in s.execute(
            select(TaskCandidate.kind, TaskCandidate.name).where(TaskCandidate.task_id == task["id"]))}
    # the electorate stays; the escalation adds the next level's group
    assert candidates == {("user", "bob"), ("group", "finance-managers")}
    # the next level sees the review in its inbox now and may decide it; the review was never closed
    assert [t["id"] for t in people["carol"].get("/tasks").get_json()["items"]] == [task["id"]]
    decided = people["carol"].post(f"/tasks/{task['id']}/completion", {"decision": "approve"})
    assert decided.status_code == 200, decided.get_json()
    assert people["alice"].get(f"/milestones/{milestone['id']}").get_json()["status"] == "completed"
    assert _fire(app).fired == [] and len(outbox(app)) == 2


def test_an_analyst_changes_the_policy_table_and_new_rounds_follow_it(app, people, new_milestone, make_user):
    """No code change: a deployed table with other values changes when reminders are due and who gets them."""
    from tests.integration.test_deployments import upload

    analyst = make_user("ana", "analysts")
    first = new_milestone(amount="5000.00")
    _submit(people, first)
    opened = utcnow()
    default_due = _approval(app, first["id"]).next_timer_at
    assert default_due is not None and default_due - opened > timedelta(days=2)

    changed = policy_bundle(remind_after="PT1H", remind_to="approvers, contract-managers")
    response = upload(analyst, "/deployments", changed)
    assert response.status_code == 201, response.get_json()
    second = new_milestone(amount="5000.00")
    _submit(people, second)
    changed_due = _approval(app, second["id"]).next_timer_at
    assert changed_due is not None and timedelta(minutes=59) < changed_due - utcnow() <= timedelta(hours=1)
    assert _approval(app, first["id"]).next_timer_at == default_due  # a running round keeps its version

    # both rounds' reminders, sent now: the first round still follows the old table
    for milestone in (first, second):
        _send_now(app, _approval(app, milestone["id"]).id, "remind")
    by_milestone = {m.milestone_id: m.recipients for m in outbox(app, "approval.reminder")}
    # "approvers" are the users of the level (bob of finance); a group named in the table stays a group
    assert by_milestone == {first["id"]: {"users": ["bob"]},
                            second["id"]: {"users": ["bob"], "groups": ["contract-managers"]}}


def _send_now(app: Any, instance_id: int, timer: str) -> None:
    """"Send the reminder now": fire one waiting timer of an instance (SPIFFWORKFLOW.md §1.8)."""
    from app.services.runtime import load_instance
    from app.uow import UnitOfWork

    state = _state(app)
    with UnitOfWork(state.session_factory) as uow:
        loaded = load_instance(uow, state.deployments, instance_id)
        loaded.instance.fire_timer(timer)
        loaded.save()
        uow.commit()


def test_the_primary_contacts_reminders_fire_before_the_due_date(app, people, contract, make_user):
    cora = make_user("cora")
    alice = people["alice"]
    contact = alice.post(f"/accounts/{contract['account_id']}/contacts",
                         {"name": "Cora Contact", "email": "cora@supplier.example", "username": "cora"}).get_json()
    due = date.today() + timedelta(days=3)  # the first reminder (7 days before) is already due
    created = alice.post("/milestones", {"contract_id": contract["id"], "code": "C1", "type": "financial",
                                         "amount": "1000.00", "due_date": due.isoformat(),
                                         "primary_contact_id": contact["id"]}).get_json()
    assert alice.post(f"/milestones/{created['id']}/activation").status_code == 200
    assert [e.event for e in outbox(app)] == ["contact.tasks_assigned", "contact.reminder"]
    with _state(app).session_factory() as s:
        row = s.scalar(select(WorkflowInstance).where(WorkflowInstance.process_id == "milestone_contact_tasks"))
        assert row is not None
        # the last reminder: 1 day before the due date, 09:00 UTC
        assert row.next_timer_at is not None and row.next_timer_at.date() == due - timedelta(days=1)
        assert row.next_timer_at.hour == 9
    assert _fire(app).fired == []
    [reminder] = outbox(app, "contact.reminder")
    assert reminder.recipients == {"contacts": [contact["id"]]}
    assert f"due on {due.isoformat()}" in reminder.payload["title"]
    items = cora.get("/tasks").get_json()["items"]
    assert sorted(t["bpmn_id"] for t in items) == ["answer_questions", "upload_evidence"]


# --------------------------------------------------------------------------- races
def _due_reviews(app: Any, people: dict[str, Any], new_milestone: Any, n: int) -> list[int]:
    deploy(app, policy_bundle(remind_after="PT0.1S"))
    ids = []
    for _ in range(n):
        milestone = new_milestone(amount="5000.00")
        _submit(people, milestone)
        ids.append(_approval(app, milestone["id"]).id)
    wait_for(lambda: all(_approval_due(app, i) for i in ids), 5, "the reminders to be due")
    return ids


def _approval_due(app: Any, instance_id: int) -> bool:
    with _state(app).session_factory() as s:
        row = s.get(WorkflowInstance, instance_id)
        return row is not None and row.next_timer_at is not None and row.next_timer_at <= utcnow()


def _reminders_per_instance(app: Any) -> dict[int, int]:
    counts: dict[int, int] = {}
    for message in outbox(app, "approval.reminder"):
        assert message.instance_id is not None
        counts[message.instance_id] = counts.get(message.instance_id, 0) + 1
    return counts


def test_concurrent_schedulers_in_threads_fire_each_timer_once(app, people, new_milestone):
    ids = _due_reviews(app, people, new_milestone, 6)
    barrier = threading.Barrier(4)
    runs: list[Any] = []
    errors: list[BaseException] = []

    def scheduler() -> None:
        try:
            barrier.wait()
            runs.append(_fire(app))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=scheduler) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    fired = [i for run in runs for i in run.fired]
    assert sorted(fired) == sorted(ids)  # each timer fired by exactly one scheduler
    assert [c for run in runs for c in run.conflicts] == []
    assert _reminders_per_instance(app) == {i: 1 for i in ids}


BEAT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from app import build_state
    from app.config import Settings
    from app.services.timers import fire_due_timers

    state = build_state(Settings.from_env(database_url=sys.argv[1], instance_dir=Path(sys.argv[2])))
    print("ready", flush=True)
    sys.stdin.readline()  # both processes start together
    fired, until = [], time.monotonic() + 1.0
    while time.monotonic() < until:
        fired += fire_due_timers(state.session_factory, state.deployments).fired
    state.engine.dispose()
    print(json.dumps(fired), flush=True)
""")


def test_two_beat_processes_fire_each_timer_once(app, people, new_milestone, db_url, tmp_path):
    ids = _due_reviews(app, people, new_milestone, 6)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    beats = [subprocess.Popen([sys.executable, "-c", BEAT, db_url, str(tmp_path)], cwd=ROOT, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = []
    try:
        for beat in beats:
            assert beat.stdout is not None and beat.stdout.readline().strip() == "ready"
        for beat in beats:
            assert beat.stdin is not None
            beat.stdin.write("go\n")
            beat.stdin.flush()
        for beat in beats:
            out, err = beat.communicate(timeout=60)
            assert beat.returncode == 0, err
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for beat in beats:
            if beat.poll() is None:
                beat.kill()
                beat.communicate()
    assert sorted(outputs[0] + outputs[1]) == sorted(ids), outputs
    assert _reminders_per_instance(app) == {i: 1 for i in ids}
    with _state(app).session_factory() as s:
        assert s.scalar(select(HumanTaskRow.id).where(HumanTaskRow.status != "open")) is None
        assert len(list(s.scalars(select(OutboxMessage.id)))) == len(ids)
