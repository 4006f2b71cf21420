"""Races with real threads against a real server: exactly one winner, the rest get 409, nothing doubles."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from sqlalchemy import func, select
from werkzeug.serving import make_server

from app.models import AuditEvent, FundRelease, HumanTaskRow, WorkflowInstance
from app.services import approvals
from app.uow import UnitOfWork
from workflows import Instance


@pytest.fixture
def server(app: Any) -> Iterator[str]:
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/api/v1"
    finally:
        httpd.shutdown()
        thread.join(5)


def _race(calls: list[Any]) -> list[requests.Response]:
    """Run the calls at the same moment, each in its own thread."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # surfaced by the assertions below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


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
        results = _race([_post(f"{server}/tasks/{task['id']}/completion", a.token, {"decision": "approve"})
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
    results = _race([_post(f"{server}/milestones/{milestone['id']}/submission", alice.token) for _ in range(4)])
    assert Counter(r.status_code for r in results) == {201: 1, 409: 3}, [r.text for r in results]
    assert _count(app, WorkflowInstance, WorkflowInstance.process_id == "milestone_approval") == 1
    assert _count(app, HumanTaskRow, HumanTaskRow.status == "open") == 1


def test_concurrent_claims_have_one_winner(app, server, people, new_milestone):
    milestone = new_milestone()
    [task] = people["alice"].post(f"/milestones/{milestone['id']}/submission").get_json()["open_tasks"]
    results = _race([_post(f"{server}/tasks/{task['id']}/claim", a.token) for a in (people["bob"], people["carol"])])
    assert sorted(r.status_code for r in results) == [200, 409]
    winner = next(r for r in results if r.status_code == 200).json()["assignee"]
    assert people["bob"].get(f"/tasks/{task['id']}").get_json()["assignee"] == winner


def test_concurrent_replays_of_one_idempotency_key_apply_once(app, server, people, new_milestone):
    milestone = new_milestone()
    alice = people["alice"]
    results = _race([_post(f"{server}/milestones/{milestone['id']}/submission", alice.token,
                           **{"Idempotency-Key": "same-key"}) for _ in range(3)])
    assert [r.status_code for r in results] == [201, 201, 201], [r.text for r in results]
    assert len({r.json()["instance_id"] for r in results}) == 1
    assert _count(app, WorkflowInstance, WorkflowInstance.process_id == "milestone_approval") == 1


# SQLite serializes writers with BEGIN IMMEDIATE, so this interleaving cannot happen there.
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_stale_instance_write_is_a_conflict_not_an_overwrite(app, people, new_milestone, monkeypatch):
    """Force the interleaving: both completions load version n before either saves."""
    milestone = new_milestone()
    [task] = people["alice"].post(f"/milestones/{milestone['id']}/submission").get_json()["open_tasks"]
    state = app.extensions["milestones"]
    loaded = threading.Barrier(2)
    original = Instance.complete

    def complete_after_both_loaded(self: Instance, task_id: str, data: Any = None) -> Any:
        loaded.wait(10)
        return original(self, task_id, data)

    monkeypatch.setattr(Instance, "complete", complete_after_both_loaded)
    outcomes: list[Any] = []

    def complete(username: str) -> None:
        with UnitOfWork(state.session_factory) as uow:
            from app.services.identity import get_user

            user = get_user(uow, username)
            try:
                approvals.complete_task(uow, state.deployments, user, task["id"], decision="approve")
                outcomes.append("ok")
            except Exception as exc:
                outcomes.append(exc)

    threads = [threading.Thread(target=complete, args=(name,)) for name in ("bob", "carol")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert outcomes.count("ok") == 1, outcomes
    [lost] = [o for o in outcomes if o != "ok"]
    assert type(lost).__name__ == "Conflict"
    assert _count(app, FundRelease) == 1
    assert _count(app, AuditEvent, AuditEvent.action == "task.completed") == 1
