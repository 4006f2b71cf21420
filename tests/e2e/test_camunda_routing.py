"""Camunda Modeler routing attributes end to end, on SQLite and PostgreSQL: a user task with
`camunda:candidateGroups`, `camunda:candidateUsers`, `camunda:assignee` or `camunda:dueDate`
reaches the inboxes of exactly its candidates, and is claimed and completed exactly as a task
routed by its BPMN lane.

The diagram, camunda/works_acceptance.bpmn, is in Camunda Modeler's format (a pool with two lanes,
BPMNDI, `camunda:historyTimeToLive`). It is deployed with the repository's bundle through the API;
its instance is bound to a milestone, and everything after the start goes through HTTP.

    lane site-engineers   inspect_works      no camunda attributes: routed by the lane
    lane commercial       cost_review        candidateGroups="cost-control,legal"
                          regional_signoff   candidateGroups="${signoff_group}" dueDate="${signoff_due}"
                          countersign        candidateUsers="${signers}" dueDate="P2D"
                          director_approval  candidateGroups="directors" assignee="${director}"

A task's own candidates replace its lane (`commercial` is a group here and its member never sees
the Camunda-routed tasks), as in Camunda, where lanes do not route at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.models import HumanTaskRow, Milestone, WorkflowInstance
from app.services.deployments import ANALYSTS
from app.services.runtime import start_instance
from app.uow import UnitOfWork
from tests.conftest import Api
from tests.routing_support import inbox, ok, problem, repo_bundle, upload

DIAGRAM = Path(__file__).resolve().parent / "camunda" / "works_acceptance.bpmn"
PROCESS = "works_acceptance"
SIGNOFF_DUE = datetime(2031, 3, 14, 16, 0, tzinfo=UTC)
START_DATA = {
    "signoff_group": "procurement-north",
    "signoff_due": SIGNOFF_DUE.isoformat(),
    "signers": ["ivan", "judy"],
    "director": "grace",
}


@dataclass(frozen=True)
class Route:
    """What one task of the diagram must look like in the API, and who must see it."""

    bpmn_id: str
    lane: str
    groups: list[str]
    users: list[str]
    visible_to: set[str]


LANE_ROUTED = Route("inspect_works", "site-engineers", ["site-engineers"], [], {"sam", "sid"})
CAMUNDA_ROUTED = [
    Route("cost_review", "commercial", ["cost-control", "legal"], [], {"cora", "leo"}),
    Route("regional_signoff", "commercial", ["procurement-north"], [], {"paul", "pia"}),
    Route("countersign", "commercial", [], ["ivan", "judy"], {"ivan", "judy"}),
]
ASSIGNED = Route("director_approval", "commercial", ["directors"], [], {"heidi", "grace"})


@pytest.fixture
def crew(make_user: Any, people: dict[str, Api]) -> dict[str, Api]:
    """Everyone, by name: the people fixture (alice made the milestone, eve is in no group) and
    the members of the diagram's groups. quinn's group is the one `${signoff_group}` does not
    name; kim's is the lane the Camunda-routed tasks sit in; ivan, judy and grace are in no group."""
    crew = dict(people)
    for name, *groups in (
        ("sam", "site-engineers"), ("sid", "site-engineers"),
        ("cora", "cost-control"), ("leo", "legal"),
        ("paul", "procurement-north"), ("pia", "procurement-north"), ("quinn", "procurement-south"),
        ("ivan",), ("judy",),
        ("heidi", "directors"), ("grace",),
        ("kim", "commercial"),
    ):
        crew[name] = make_user(name, *groups)
    return crew


@pytest.fixture
def deployed(make_user: Any, crew: dict[str, Api]) -> dict[str, Any]:
    """The repository's bundle plus the Camunda diagram, deployed through the API (its literal
    candidate groups and its routing lane are checked against the groups made by `crew`)."""
    analyst = make_user("ana", ANALYSTS)
    body = ok(upload(analyst, "/deployments", {**repo_bundle(), DIAGRAM.name: DIAGRAM.read_bytes()}), 201)
    assert PROCESS in body["processes"], body
    assert DIAGRAM.name in [f["name"] for f in body["files"]], body
    return body


def start(app: Any, milestone_id: int, deployment_hash: str) -> int:
    """Start the diagram's process bound to the milestone (round 1); returns the instance id."""
    state = app.extensions["milestones"]
    with UnitOfWork(state.session_factory) as uow:
        milestone = uow.s.get(Milestone, milestone_id)
        loaded = start_instance(uow, state.deployments, milestone, dict(START_DATA), process_id=PROCESS, round=1)
        created = loaded.save()
        uow.commit()
        assert loaded.row.deployment_hash == deployment_hash
        assert [t.bpmn_id for t in created] == [LANE_ROUTED.bpmn_id]
        return loaded.row.id


def when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def the_open_task(api: Api, instance_id: int) -> dict[str, Any]:
    """The instance's one open task, as it is in this candidate's inbox."""
    items = [t for t in inbox(api) if t["instance_id"] == instance_id]
    assert len(items) == 1, (api.username, items)
    return items[0]


def assert_routed(crew: dict[str, Api], task_id: str, route: Route) -> None:
    """In exactly the inboxes of the route's candidates; readable by them, a 404 for everyone else."""
    listed = {name for name, api in crew.items() if task_id in {t["id"] for t in inbox(api)}}
    assert listed == route.visible_to, (route.bpmn_id, "inboxes")
    statuses = {name: api.get(f"/tasks/{task_id}").status_code for name, api in crew.items()}
    assert statuses == {name: 200 if name in route.visible_to else 404 for name in crew}, route.bpmn_id
    outsider = next(name for name in crew if name not in route.visible_to)
    problem(crew[outsider].get(f"/tasks/{task_id}"), 404)  # a problem document, learning nothing


def assert_shape(task: dict[str, Any], route: Route, milestone_id: int, assignee: str | None = None) -> None:
    assert (task["bpmn_id"], task["process_id"], task["milestone_id"]) == (route.bpmn_id, PROCESS, milestone_id)
    assert (task["lane"], task["status"]) == (route.lane, "open")
    assert task["candidate_groups"] == route.groups, route.bpmn_id
    assert task["candidate_users"] == route.users, route.bpmn_id
    assert task["assignee"] == assignee, route.bpmn_id


def claim_then_complete(crew: dict[str, Api], task: dict[str, Any], route: Route) -> dict[str, Any]:
    """The one protocol every task of the walk goes through, the lane-routed one included: a
    candidate claims it, a second candidate can neither claim nor complete it (409 naming the
    holder) while still seeing it, a group task needs a decision, and the claimer completes it."""
    first, second = sorted(route.visible_to)
    claimer, rival = crew[first], crew[second]
    path = f"/tasks/{task['id']}"
    assert ok(claimer.post(path + "/claim"))["assignee"] == first
    assert ok(claimer.post(path + "/claim"))["assignee"] == first  # claiming again is a no-op
    assert problem(rival.post(path + "/claim"), 409)["assignee"] == first
    assert problem(rival.post(path + "/completion", {"decision": "approve"}), 409)["assignee"] == first
    assert_routed(crew, task["id"], route)  # the claim moved it into no inbox and out of none
    assert ok(rival.get(path))["assignee"] == first
    if route.groups:  # a group task is a decision: as for lanes, "approve" or "decline" is required
        assert "decision" in problem(claimer.post(path + "/completion", {}), 422)["errors"]
        body = {"decision": "approve", "comment": f"{route.bpmn_id} done", "data": {"checked": True}}
    else:
        body = {"comment": f"{route.bpmn_id} done", "data": {"checked": True}}
    done = ok(claimer.post(path + "/completion", body))
    assert (done["status"], done["assignee"], done["completed_by"]) == ("completed", first, first)
    assert done["decision"] == body.get("decision")
    problem(claimer.post(path + "/completion", body), 409)  # once only
    left = {name for name, api in crew.items() if task["id"] in {t["id"] for t in inbox(api)}}
    assert left == set(), (route.bpmn_id, "still in the inboxes of", left)
    return done


def test_camunda_attributes_route_exactly_as_lanes(app, crew, deployed, new_milestone):
    milestone_id = new_milestone(amount="12000.00")["id"]
    instance_id = start(app, milestone_id, deployed["hash"])

    # the lane-routed task: the lane's group members, nobody else
    task = the_open_task(crew["sam"], instance_id)
    assert_shape(task, LANE_ROUTED, milestone_id)
    assert task["due_at"] is None
    assert_routed(crew, task["id"], LANE_ROUTED)
    done = claim_then_complete(crew, task, LANE_ROUTED)

    # each Camunda-routed task in turn: the same inboxes-of-its-candidates rule, the same protocol,
    # and completing the previous task is what opened it
    for route in CAMUNDA_ROUTED:
        candidate = crew[min(route.visible_to)]
        task = the_open_task(candidate, instance_id)
        assert_shape(task, route, milestone_id)
        assert when(task["created_at"]) >= when(done["completed_at"])
        assert_routed(crew, task["id"], route)
        if route.bpmn_id == "regional_signoff":  # camunda:dueDate="${signoff_due}"
            assert when(task["due_at"]) == SIGNOFF_DUE
        elif route.bpmn_id == "countersign":  # camunda:dueDate="P2D", from the moment it opened
            assert when(task["due_at"]) - when(task["created_at"]) == timedelta(days=2)
        else:
            assert task["due_at"] is None
        done = claim_then_complete(crew, task, route)

    # camunda:assignee="${director}": opened already held by grace, exactly as a lane task a
    # candidate has claimed: the group's members see it but cannot claim or complete it
    task = the_open_task(crew["grace"], instance_id)
    assert_shape(task, ASSIGNED, milestone_id, assignee="grace")
    assert task["due_at"] is None
    assert_routed(crew, task["id"], ASSIGNED)
    path = f"/tasks/{task['id']}"
    assert ok(crew["heidi"].get(path))["assignee"] == "grace"
    assert problem(crew["heidi"].post(path + "/claim"), 409)["assignee"] == "grace"
    assert problem(crew["heidi"].post(path + "/completion", {"decision": "approve"}), 409)["assignee"] == "grace"
    assert ok(crew["grace"].post(path + "/claim"))["assignee"] == "grace"
    assert "decision" in problem(crew["grace"].post(path + "/completion", {}), 422)["errors"]
    done = ok(crew["grace"].post(path + "/completion", {"decision": "approve", "comment": "accepted"}))
    assert (done["status"], done["assignee"], done["completed_by"]) == ("completed", "grace", "grace")

    # the last completion ended the instance: no open task is left in anyone's inbox
    for name, api in crew.items():
        assert [t for t in inbox(api) if t["instance_id"] == instance_id] == [], name
    with UnitOfWork(app.extensions["milestones"].session_factory) as uow:
        assert uow.s.get(WorkflowInstance, instance_id).status == "completed"
        rows = uow.s.execute(select(HumanTaskRow.bpmn_id, HumanTaskRow.status)
                             .where(HumanTaskRow.instance_id == instance_id).order_by(HumanTaskRow.created_at))
        assert [tuple(r) for r in rows] == [(r.bpmn_id, "completed") for r in
                                            (LANE_ROUTED, *CAMUNDA_ROUTED, ASSIGNED)]


def test_expressions_are_resolved_per_instance(app, crew, deployed, new_milestone):
    """`${signoff_group}` and `${director}` come from this instance's data: another instance of the
    same deployment routes the same tasks to other candidates."""
    milestone_id = new_milestone(amount="12000.00")["id"]
    state = app.extensions["milestones"]
    with UnitOfWork(state.session_factory) as uow:
        milestone = uow.s.get(Milestone, milestone_id)
        data = {**START_DATA, "signoff_group": "procurement-south", "signers": "judy", "director": "heidi"}
        loaded = start_instance(uow, state.deployments, milestone, data, process_id=PROCESS, round=1)
        loaded.save()
        uow.commit()
        instance_id = loaded.row.id

    def finish(api: Api, body: dict[str, Any]) -> None:
        ok(api.post(f"/tasks/{the_open_task(api, instance_id)['id']}/completion", body))

    finish(crew["sid"], {"decision": "approve"})
    finish(crew["leo"], {"decision": "approve"})
    signoff = the_open_task(crew["quinn"], instance_id)
    assert signoff["candidate_groups"] == ["procurement-south"]
    assert_routed(crew, signoff["id"], Route("regional_signoff", "commercial", ["procurement-south"], [], {"quinn"}))
    finish(crew["quinn"], {"decision": "approve"})
    countersign = the_open_task(crew["judy"], instance_id)
    assert countersign["candidate_users"] == ["judy"]  # a single name, not a list, is one candidate
    assert_routed(crew, countersign["id"], Route("countersign", "commercial", [], ["judy"], {"judy"}))
    finish(crew["judy"], {})
    approval = the_open_task(crew["heidi"], instance_id)
    assert approval["assignee"] == "heidi"
    # heidi is the assignee and a director; grace, the other instance's director, is nobody here
    assert_routed(crew, approval["id"], Route("director_approval", "commercial", ["directors"], [], {"heidi"}))
    finish(crew["heidi"], {"decision": "approve"})
    with UnitOfWork(state.session_factory) as uow:
        assert uow.s.get(WorkflowInstance, instance_id).status == "completed"
