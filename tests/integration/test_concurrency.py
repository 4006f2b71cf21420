"""Races with real threads against a real server: exactly one winner, the rest get 409, nothing doubles."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from app.models import AuditEvent, FundRelease, HumanTaskRow, WorkflowInstance
from tests.conftest import race
from workflows import Instance


def _post(url: str, token: str, json: Any = None, **headers: str) -> Any:
    return lambda: requests.post(url, json=json, timeout=60,
                                 headers={"Authorization": f"Bearer {token}", **headers})


def _count(app: Any, model: Any, *where: Any) -> int:
    with app.extensions["milestones"].session_factory() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def test_concurrent_completions_of_one_task_give_one_success_and_409s(app, server, people, new_milestone):
    approvers = [people["bob"], people["carol"], people["bob"], people["carol"]]
    for round_ in range(4):
        milestone = new_milestone()
        [task] = people["alice"].post(f"/milestones/{milestone['id']}/submission").get_json()["open_tasks"]
        results = race([_post(f"{server}/tasks/{task['id']}/completion", a.token, {"decision": "approve"})
                         for a in approvers])
        statuses = Counter(r.status_code for r in results)
        assert statuses == {200: 1, 409: len(approvers) - 1}, (round_, [getattr(r, "text", r) for r in results])
        for r in results:
            if r.status_code == 409:
                assert r.headers["Content-Type"] == "application/problem+json"
    assert _count(app, FundRelease) == 4
    assert _count(app, AuditEvent, AuditEvent.action == "task.completed") == 4
    assert _count(app, AuditEvent, AuditEvent.action == "funds.released") == 4


def test_concurrent_submissions_start_one_workflow(app, server, people, new_milestone):
    milestone = new_milestone()
    alice = people["alice"]
    results = race([_post(f"{server}/milestones/{milestone['id']}/submission", alice.token) for _ in range(4)])
    assert Counter(r.status_code for r in results) == {201: 1, 409: 3}, [r.text for r in results]
    assert _count(app, WorkflowInstance, WorkflowInstance.process_id == "milestone_approval") == 1
    assert _count(app, HumanTaskRow, HumanTaskRow.status == "open") == 1


def test_concurrent_claims_have_one_winner(app, server, people, new_milestone):
    milestone = new_milestone()
    [task] = people["alice"].post(f"/milestones/{milestone['id']}/submission").get_json()["open_tasks"]
    results = race([_post(f"{server}/tasks/{task['id']}/claim", a.token) for a in (people["bob"], people["carol"])])
    assert sorted(r.status_code for r in results) == [200, 409]
    winner = next(r for r in results if r.status_code == 200).json()["assignee"]
    assert people["bob"].get(f"/tasks/{task['id']}").get_json()["assignee"] == winner


def test_concurrent_replays_of_one_idempotency_key_apply_once(app, server, people, new_milestone):
    milestone = new_milestone()
    alice = people["alice"]
    results = race([_post(f"{server}/milestones/{milestone['id']}/submission", alice.token,
                           **{"Idempotency-Key": "same-key"}) for _ in range(3)])
    assert [r.status_code for r in results] == [201, 201, 201], [r.text for r in results]
    assert len({r.json()["instance_id"] for r in results}) == 1
    assert _count(app, WorkflowInstance, WorkflowInstance.process_id == "milestone_approval") == 1


# SQLite serializes writers with BEGIN IMMEDIATE, so this interleaving cannot happen there. The votes
# of an approval level are serialized by the application itself (a lock on the instance row before
# it is loaded), so the stale write is forced on the rework task, which advances the instance without
# that lock: only the versioned save stands between two completions there.
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_stale_instance_write_is_a_conflict_not_an_overwrite(app, server, people, new_milestone, monkeypatch):
    """Force the interleaving: both completions load version n before either saves."""
    milestone = new_milestone()
    alice = people["alice"]
    [seat] = alice.post(f"/milestones/{milestone['id']}/submission").get_json()["open_tasks"]
    declined = people["bob"].post(f"/tasks/{seat['id']}/completion", {"decision": "decline", "comment": "no PO"})
    assert declined.status_code == 200, declined.get_json()
    [task] = alice.get(f"/milestones/{milestone['id']}").get_json()["open_tasks"]
    assert task["bpmn_id"] == "rework_milestone" and task["candidate_users"] == ["alice"]
    loaded = threading.Barrier(2)
    original = Instance.complete

    def complete_after_both_loaded(self: Instance, task_id: str, data: Any = None) -> Any:
        loaded.wait(10)
        return original(self, task_id, data)

    # the server runs in this process: both requests go through the patched engine
    monkeypatch.setattr(Instance, "complete", complete_after_both_loaded)
    results = race([_post(f"{server}/tasks/{task['id']}/completion", alice.token, {}) for _ in range(2)])
    assert sorted(getattr(r, "status_code", 0) for r in results) == [200, 409], \
        [getattr(r, "text", r) for r in results]
    [lost] = [r for r in results if r.status_code == 409]
    assert lost.headers["Content-Type"] == "application/problem+json"
    assert lost.json()["title"] == "Conflict"
    # the winner's completion stands alone: one rework completed, one next round started
    assert _count(app, AuditEvent, AuditEvent.action == "task.completed",
                  AuditEvent.entity_id == task["id"]) == 1
    assert _count(app, WorkflowInstance, WorkflowInstance.process_id == "milestone_approval") == 2
    assert _count(app, HumanTaskRow, HumanTaskRow.milestone_id == milestone["id"], HumanTaskRow.status == "open",
                  HumanTaskRow.bpmn_id == "review_milestone") == 1
    assert alice.get(f"/milestones/{milestone['id']}").get_json()["round"] == 2
