"""Approval routing end to end through the HTTP API, on SQLite and PostgreSQL: levels decided by the
routing table, quorums, segregation of duties, claim/assign/delegate, comments, bulk, rounds, audit."""

from __future__ import annotations

from typing import Any

import pytest

from app.services import identity
from app.services.deployments import ANALYSTS
from app.uow import UnitOfWork
from tests.conftest import Api
from tests.routing_support import decide, deploy_routing, inbox, ok, problem, seat_of


@pytest.fixture
def analyst(make_user: Any) -> Api:
    return make_user("ana", ANALYSTS)


@pytest.fixture
def admin(app: Any) -> Api:
    with UnitOfWork(app.extensions["milestones"].session_factory) as uow:
        root = identity.create_user(uow, "root", [], is_admin=True)
        token = identity.issue_token(uow, root)
        uow.commit()
    return Api(app.test_client(), token, "root")


@pytest.fixture
def board(make_user: Any) -> dict[str, Api]:
    """Three members of `board`, two of `legal`; `frank` is in both."""
    return {"gina": make_user("gina", "board"), "hank": make_user("hank", "board"),
            "frank": make_user("frank", "board", "legal"), "ivy": make_user("ivy", "legal")}


def submit(api: Api, milestone_id: int) -> dict[str, Any]:
    return ok(api.post(f"/milestones/{milestone_id}/submission"), 201)


def milestone(api: Api, milestone_id: int) -> dict[str, Any]:
    return ok(api.get(f"/milestones/{milestone_id}"))


def test_two_levels_in_sequence_and_one_person_cannot_approve_both(people, new_milestone, analyst, board):
    deploy_routing(analyst, [{"level": 1, "group": "legal"}, {"level": 2, "group": "board", "quorum": 2}])
    alice = people["alice"]
    m = new_milestone(amount="5000.00")
    submission = submit(alice, m["id"])
    [seat] = submission["open_tasks"]
    assert (seat["level"], seat["seat"], seat["group"]) == (1, 1, "legal")
    assert seat["candidate_users"] == ["frank", "ivy"]
    assert seat["candidate_groups"] == []
    assert inbox(board["gina"], m["id"]) == []  # level 2 has not started

    ok(decide(board["frank"], seat["id"]))  # frank approves level 1 ...
    level2 = [seat_of(a, m["id"]) for a in (board["gina"], board["hank"])]
    assert {s["level"] for s in level2} == {2}
    assert inbox(board["frank"], m["id"]) == []  # ... and is no candidate of level 2
    assert level2[0]["candidate_users"] == ["gina", "hank"]

    ok(decide(board["gina"], level2[0]["id"]))
    assert milestone(alice, m["id"])["status"] == "submitted"  # 1 of 2
    second = seat_of(board["hank"], m["id"])
    assert second["id"] != level2[0]["id"]
    ok(decide(board["hank"], second["id"]))
    assert milestone(alice, m["id"])["status"] == "completed"

    rounds = ok(alice.get(f"/milestones/{m['id']}/rounds"))["items"]
    assert [(lv["level"], lv["group"], lv["status"], lv["approvals"]) for lv in rounds[0]["levels"]] == [
        (1, "legal", "approved", 1), (2, "board", "approved", 2)]
    assert rounds[0]["outcome"] == "approved"


def test_n_of_m_with_decline_when_impossible_needs_two_declines(app, people, new_milestone, analyst, board):
    deploy_routing(analyst, [{"level": 1, "group": "board", "quorum": 2, "on_decline": "impossible"}])
    m = new_milestone(amount="5000.00")
    seats = submit(people["alice"], m["id"])["open_tasks"]
    assert len(seats) == 3 and {s["seat"] for s in seats} == {1, 2, 3}  # every eligible member votes

    gina, hank, frank = board["gina"], board["hank"], board["frank"]
    ok(decide(gina, seat_of(gina, m["id"])["id"], "decline", "too early"))
    assert milestone(people["alice"], m["id"])["status"] == "submitted"  # 2 of 3 is still possible
    assert inbox(gina, m["id"]) == []  # one vote per person
    ok(decide(hank, seat_of(hank, m["id"])["id"], "approve"))
    last = seat_of(frank, m["id"])
    ok(decide(frank, last["id"], "decline", "no evidence"))  # 1 approval, 2 declines: 2 of 3 is impossible
    detail = milestone(people["alice"], m["id"])
    assert detail["status"] == "declined"
    [rework] = detail["open_tasks"]
    assert rework["bpmn_id"] == "rework_milestone"
    [level] = ok(people["alice"].get(f"/milestones/{m['id']}/rounds"))["items"][0]["levels"]
    assert (level["status"], level["approvals"], level["declines"], level["required"], level["seats"]) == (
        "declined", 1, 2, 2, 3)


def test_n_of_m_completes_as_soon_as_n_approve_and_the_rest_disappear(people, new_milestone, analyst, board):
    deploy_routing(analyst, [{"level": 1, "group": "board", "quorum": 2, "on_decline": "impossible"}])
    m = new_milestone(amount="5000.00")
    submit(people["alice"], m["id"])
    gina, hank, frank = board["gina"], board["hank"], board["frank"]
    assert len(inbox(frank, m["id"])) == 1
    ok(decide(gina, seat_of(gina, m["id"])["id"]))
    ok(decide(hank, seat_of(hank, m["id"])["id"]))
    assert milestone(people["alice"], m["id"])["status"] == "completed"
    assert inbox(frank, m["id"]) == []  # the third seat was cancelled
    cancelled = ok(frank.get("/tasks", query_string={"state": "cancelled", "milestone_id": m["id"]}))["items"]
    assert len(cancelled) == 1 and cancelled[0]["status"] == "cancelled"


def test_decline_on_first_ends_the_round_at_once(people, new_milestone, analyst, board):
    deploy_routing(analyst, [{"level": 1, "group": "board", "quorum": "all", "on_decline": "first"},
                             {"level": 2, "group": "legal"}])
    m = new_milestone(amount="5000.00")
    seats = submit(people["alice"], m["id"])["open_tasks"]
    assert len(seats) == 3  # all three must approve
    ok(decide(board["hank"], seat_of(board["hank"], m["id"])["id"]))
    ok(decide(board["gina"], seat_of(board["gina"], m["id"])["id"], "decline", "wrong amount"))
    detail = milestone(people["alice"], m["id"])
    assert detail["status"] == "declined"
    assert [t["bpmn_id"] for t in detail["open_tasks"]] == ["rework_milestone"]
    assert inbox(board["frank"], m["id"]) == [] and inbox(board["ivy"], m["id"]) == []
    [round_] = ok(people["alice"].get(f"/milestones/{m['id']}/rounds"))["items"]
    assert [lv["status"] for lv in round_["levels"]] == ["declined", "cancelled"]
    assert round_["decline_reasons"] == [{"level": 1, "by": "gina", "reason": "wrong amount"}]


def test_no_matching_rule_refuses_the_submission_and_changes_nothing(app, people, new_milestone, analyst):
    deploy_routing(analyst, [{"level": 1, "group": "finance", "type": '"non_financial"'}])
    m = new_milestone(amount="5000.00")
    body = problem(people["alice"].post(f"/milestones/{m['id']}/submission"), 409)
    assert body["title"] == "No approval route"
    assert "no rule of the approval routing table matches" in body["detail"]
    assert body["inputs"]["milestone_type"] == "financial"
    after = milestone(people["alice"], m["id"])
    assert after["status"] == "active" and after["round"] == 0 and after["open_tasks"] == []


def test_a_level_nobody_can_work_refuses_the_submission(people, new_milestone, analyst, board):
    deploy_routing(analyst, [{"level": 1, "group": "legal", "quorum": 3}])  # legal has 2 members
    m = new_milestone(amount="5000.00")
    body = problem(people["alice"].post(f"/milestones/{m['id']}/submission"), 409)
    assert "needs 3 approver(s) but the group has 2 eligible member(s)" in body["detail"]
    deploy_routing(analyst, [{"level": 1, "group": "nobody-has-this-group"}])
    body = problem(people["alice"].post(f"/milestones/{m['id']}/submission"), 409)
    assert "there is no group 'nobody-has-this-group'" in body["detail"]
    assert milestone(people["alice"], m["id"])["status"] == "active"


def test_swapping_the_routing_table_changes_routing_without_code(people, new_milestone, analyst, board):
    alice = people["alice"]
    before = new_milestone(amount="5000.00")
    [seat] = submit(alice, before["id"])["open_tasks"]
    assert seat["group"] == "finance"  # the shipped table
    deploy_routing(analyst, [{"level": 1, "group": "legal", "amount": "< 10000"},
                             {"level": 2, "group": "board", "amount": "< 10000"}])
    after = new_milestone(amount="5000.00")
    [seat] = submit(alice, after["id"])["open_tasks"]
    assert (seat["group"], seat["level"]) == ("legal", 1)
    # the running round keeps its version: still finance
    assert [t["group"] for t in milestone(alice, before["id"])["open_tasks"]] == ["finance"]


def test_one_person_never_approves_two_levels_and_is_told_why(people, new_milestone, analyst, board):
    deploy_routing(analyst, [{"level": 1, "group": "board"}, {"level": 2, "group": "legal"}])
    m = new_milestone(amount="5000.00")
    submit(people["alice"], m["id"])
    frank, ivy = board["frank"], board["ivy"]
    ok(decide(frank, seat_of(frank, m["id"])["id"]))  # frank approves level 1 for the board
    level2 = seat_of(ivy, m["id"])
    assert level2["candidate_users"] == ["ivy"]  # frank is in legal but left out
    for attempt in (decide(frank, level2["id"]), frank.post(f"/tasks/{level2['id']}/claim")):
        refused = problem(attempt, 403)
        assert refused["rule"] == "one_level_per_person" and "segregation of duties" in refused["detail"]
    ok(decide(ivy, level2["id"]))
    assert milestone(people["alice"], m["id"])["status"] == "completed"


def test_claim_assign_delegate_and_the_audit_names_both(app, people, new_milestone, analyst, board, admin):
    deploy_routing(analyst, [{"level": 1, "group": "board"}])
    group_id = ok(admin.get("/groups", query_string={"member": "gina"}))["items"][0]["id"]
    assert ok(admin.patch(f"/groups/{group_id}", {"lead": "gina"}))["lead"] == "gina"
    m = new_milestone(amount="5000.00")
    [seat] = submit(people["alice"], m["id"])["open_tasks"]
    gina, hank, frank, eve = board["gina"], board["hank"], board["frank"], people["eve"]
    url = f"/tasks/{seat['id']}"

    assert ok(hank.post(url + "/claim"))["assignee"] == "hank"
    assert problem(frank.post(url + "/claim"), 409)["assignee"] == "hank"
    assert problem(frank.post(url + "/unclaim"), 409)
    # the lead reassigns it; someone who is not the lead cannot
    problem(frank.post(url + "/assignment", {"assignee": "frank"}), 403)
    assert ok(gina.post(url + "/assignment", {"assignee": "frank", "comment": "hank is busy"}))["assignee"] == "frank"
    problem(gina.post(url + "/assignment", {"assignee": "eve"}), 422)  # not a candidate
    problem(gina.post(url + "/assignment", {"assignee": "alice"}), 422)  # the submitter is no candidate either
    # frank delegates to eve (not in the board): eve completes on frank's behalf; frank keeps seeing it
    delegated = ok(frank.post(url + "/delegation", {"to": "eve", "comment": "please check the invoice"}))
    assert (delegated["assignee"], delegated["delegated_by"]) == ("eve", "frank")
    assert [t["id"] for t in inbox(frank, m["id"])] == [seat["id"]]
    assert problem(frank.post(url + "/completion", {"decision": "approve"}), 409)["assignee"] == "eve"
    problem(frank.post(url + "/delegation", {"to": "alice"}), 409)  # no longer his to hand on
    done = ok(eve.post(url + "/completion", {"decision": "approve"}))
    assert (done["completed_by"], done["on_behalf_of"]) == ("eve", "frank")

    trail = ok(people["alice"].get(f"/milestones/{m['id']}/audit-events"))["items"]
    by_action = {e["action"]: e for e in trail if e["task_id"] == seat["id"]}
    assert {"task.claimed", "task.reassigned", "task.delegated", "task.completed"} <= set(by_action)
    assert by_action["task.delegated"]["after"]["owner"] == "frank"
    assert by_action["task.delegated"]["after"]["delegate"] == "eve"
    assert by_action["task.completed"]["after"]["on_behalf_of"] == "frank"
    assert by_action["task.completed"]["actor"] == "eve"
    assert all(e["round"] == 1 and e["milestone_id"] == m["id"] for e in by_action.values())
    [vote] = ok(people["alice"].get(f"/milestones/{m['id']}/rounds"))["items"][0]["levels"][0]["votes"]
    assert (vote["decided_by"], vote["on_behalf_of"], vote["decision"]) == ("eve", "frank", "approve")


def test_comments_are_for_candidates_and_the_milestones_owners(people, new_milestone, analyst, board):
    deploy_routing(analyst, [{"level": 1, "group": "board"}])
    m = new_milestone(amount="5000.00")
    [seat] = submit(people["alice"], m["id"])["open_tasks"]
    url = f"/tasks/{seat['id']}/comments"
    ok(board["gina"].post(url, {"body": "Is the invoice attached?"}), 201)
    ok(people["alice"].post(url, {"body": "Yes, page 3."}), 201)  # the submitter owns the milestone
    assert [c["author"] for c in ok(board["hank"].get(url))["items"]] == ["gina", "alice"]
    problem(people["eve"].get(url), 404)
    problem(people["eve"].post(url, {"body": "hi"}), 404)
    problem(board["gina"].post(url, {"body": "   "}), 422)
    trail = ok(people["alice"].get(f"/milestones/{m['id']}/audit-events", query_string={"action": "task.commented"}))
    assert [e["after"]["body"] for e in trail["items"]] == ["Is the invoice attached?", "Yes, page 3."]


def test_bulk_approve_reports_each_item_and_one_failure_undoes_nothing(people, new_milestone, analyst, board):
    deploy_routing(analyst, [{"level": 1, "group": "board"}])
    hank = board["hank"]
    seats = []
    for _ in range(3):
        m = new_milestone(amount="5000.00")
        seats.append(submit(people["alice"], m["id"])["open_tasks"][0])
    ok(board["gina"].post(f"/tasks/{seats[1]['id']}/claim"))  # someone else holds the second
    body = ok(hank.post("/tasks/bulk-completion", {"items": [
        {"task_id": s["id"]} for s in seats] + [{"task_id": "no-such-task"}]}))
    assert [r["status"] for r in body["results"]] == [200, 409, 200, 404]
    assert (body["succeeded"], body["failed"]) == (2, 2)
    assert body["results"][1]["problem"]["assignee"] == "gina"
    assert body["results"][0]["task"]["status"] == "completed"
    statuses = [milestone(people["alice"], s["milestone_id"])["status"] for s in seats]
    assert statuses == ["completed", "submitted", "completed"]
    problem(hank.post("/tasks/bulk-completion", {"items": []}), 422)


def test_decline_returns_to_the_primary_contact_who_resubmits_a_new_round(app, people, make_user, contract,
                                                                         new_milestone):
    from sqlalchemy import select

    from app.models import OutboxMessage

    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    carl = make_user("carl")
    contact = ok(alice.post(f"/accounts/{contract['account_id']}/contacts",
                            {"name": "Carl", "email": "carl@example.com", "username": "carl"}), 201)
    m = new_milestone(amount="50000.00", primary_contact_id=contact["id"])
    [seat] = submit(alice, m["id"])["open_tasks"]
    ok(decide(bob, seat["id"], "decline", "the invoice is missing"))

    detail = milestone(alice, m["id"])
    [rework] = detail["open_tasks"]
    assert rework["bpmn_id"] == "rework_milestone" and rework["candidate_users"] == ["alice", "carl"]
    assert [t["id"] for t in inbox(carl)] == [rework["id"]]
    with app.extensions["milestones"].session_factory() as s:
        [message] = s.scalars(select(OutboxMessage).where(OutboxMessage.event == "approval.declined")).all()
        assert message.recipients == {"users": ["alice"], "contacts": [contact["id"]]}
        assert "bob (level 1): the invoice is missing" in message.payload["body"]

    resumed = ok(carl.post(f"/milestones/{m['id']}/submission"), 201)
    assert resumed["round"] == 2 and resumed["resumed"] is True
    [seat2] = resumed["open_tasks"]
    assert seat2["candidate_users"] == ["bob", "carol"]  # carl resubmitted: he is this round's submitter
    ok(decide(carol, seat2["id"]))
    rounds = ok(alice.get(f"/milestones/{m['id']}/rounds"))["items"]
    assert [(r["round"], r["outcome"]) for r in rounds] == [(1, "declined"), (2, "approved")]
    assert rounds[0]["decline_reasons"] == [{"level": 1, "by": "bob", "reason": "the invoice is missing"}]
    assert rounds[0]["levels"][0]["votes"][0]["decided_by"] == "bob"
    assert [t["bpmn_id"] for t in rounds[0]["other_tasks"]] == ["rework_milestone"]
    assert rounds[0]["other_tasks"][0]["decided_by"] == "carl"
    trail = ok(alice.get(f"/milestones/{m['id']}/audit-events", query_string={"round": 2}))["items"]
    assert {"approval.routed", "approval.level_opened", "task.completed", "approval.level_closed"} <= {
        e["action"] for e in trail}


def test_membership_changes_reproject_open_seats_at_once(people, new_milestone, analyst, board, admin, make_user):
    deploy_routing(analyst, [{"level": 1, "group": "legal"}])
    m = new_milestone(amount="5000.00")
    [seat] = submit(people["alice"], m["id"])["open_tasks"]
    legal = ok(admin.get("/groups", query_string={"member": "ivy"}))["items"][0]
    ok(board["ivy"].post(f"/tasks/{seat['id']}/claim"))

    joe = make_user("joe")
    changed = ok(admin.post(f"/groups/{legal['id']}/members", {"username": "joe"}))
    assert changed["changed_tasks"] == [seat["id"]] and "joe" in changed["group"]["members"]
    assert [t["id"] for t in inbox(joe)] == []  # ivy holds the seat ...
    removed = ok(admin.delete(f"/groups/{legal['id']}/members/ivy"))
    assert removed["changed_tasks"] == [seat["id"]]
    assert inbox(board["ivy"], m["id"]) == []  # ... removed: she loses it at once, and the seat is free again
    assert [t["id"] for t in inbox(joe)] == [seat["id"]]
    assert ok(joe.get(f"/tasks/{seat['id']}"))["assignee"] is None
    problem(board["ivy"].post(f"/tasks/{seat['id']}/completion", {"decision": "approve"}), 404)
    problem(board["frank"].post(f"/groups/{legal['id']}/members", {"username": "eve"}), 403)  # not the lead
    ok(decide(joe, seat["id"]))
    trail = ok(people["alice"].get(f"/milestones/{m['id']}/audit-events",
                                   query_string={"action": "task.candidates_changed"}))["items"]
    assert [(e["after"]["added"], e["after"]["removed"], e["after"]["released"]) for e in trail] == [
        (["joe"], [], None), ([], ["ivy"], "ivy")]


def test_groups_are_data_renamed_groups_keep_routing(people, new_milestone, analyst, board, admin, make_user):
    created = ok(admin.post("/groups", {"name": "auditors", "members": ["gina", "hank"], "lead": "hank"}), 201)
    assert created["members"] == ["gina", "hank"] and created["lead"] == "hank"
    problem(admin.post("/groups", {"name": "auditors"}), 409)
    problem(admin.post("/groups", {"name": "x", "members": ["nobody"]}), 422)
    problem(admin.post("/groups", {"name": "y", "members": ["gina"], "lead": "ivy"}), 422)  # lead not a member
    problem(board["gina"].post("/groups", {"name": "z"}), 403)
    deploy_routing(analyst, [{"level": 1, "group": "auditors"}])

    renamed = ok(admin.patch(f"/groups/{created['id']}", {"name": "internal-audit"}))
    assert renamed["name"] == "internal-audit" and renamed["former_names"] == ["auditors"]
    problem(admin.post("/groups", {"name": "auditors"}), 409)  # a former name stays reserved
    m = new_milestone(amount="5000.00")
    [seat] = submit(people["alice"], m["id"])["open_tasks"]  # the table still says "auditors"
    assert seat["group"] == "internal-audit" and seat["candidate_users"] == ["gina", "hank"]
    assert [t["id"] for t in inbox(board["gina"])] == [seat["id"]]
    assert ok(admin.patch(f"/groups/{created['id']}", {"lead": None}))["lead"] is None
    listed = ok(admin.get("/groups"))["items"]
    assert {g["name"]: g["member_count"] for g in listed}["internal-audit"] == 2


def _away(api: Api, substitute: str, *, starts_in: float = 0, hours: float = 24) -> Any:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    body = {"substitute": substitute, "ends_at": (now + timedelta(hours=hours)).isoformat(), "reason": "holiday"}
    if starts_in:
        body["starts_at"] = (now + timedelta(seconds=starts_in)).isoformat()
    return api.post("/me/out-of-office", body)


def test_out_of_office_sends_new_tasks_to_the_substitute_and_moves_open_ones(app, people, new_milestone, analyst,
                                                                           board, make_user):
    import time

    from app.services.timers import fire_due_timers

    deploy_routing(analyst, [{"level": 1, "group": "legal", "quorum": "all"}])
    gina, ivy, frank = board["gina"], board["ivy"], board["frank"]
    state = app.extensions["milestones"]

    # ivy holds a seat; then she is away from now on: the seat moves to gina, who acts for her
    first = new_milestone(amount="5000.00")
    submit(people["alice"], first["id"])
    held = seat_of(ivy, first["id"])
    ok(ivy.post(f"/tasks/{held['id']}/claim"))
    period = ok(_away(ivy, "gina"), 201)
    assert period["started_at"] is not None
    moved = ok(gina.get(f"/tasks/{held['id']}"))
    assert (moved["assignee"], moved["substitute_for"]) == ("gina", "ivy")
    assert inbox(ivy, first["id"]) == []
    # the other (free) seat of that level is frank's; ivy's place in the pool went to gina
    free = seat_of(frank, first["id"])
    assert free["candidate_users"] == ["frank", "gina"] and free["substitutes"] == {"gina": "ivy"}

    # a task created during the period goes to the substitute
    second = new_milestone(amount="5000.00")
    seats = submit(people["alice"], second["id"])["open_tasks"]
    assert all(s["candidate_users"] == ["frank", "gina"] for s in seats)
    done = ok(decide(gina, held["id"]))
    assert (done["completed_by"], done["on_behalf_of"]) == ("gina", "ivy")
    trail = ok(people["alice"].get(f"/milestones/{first['id']}/audit-events",
                                   query_string={"action": "task.substituted"}))["items"]
    assert [(e["after"]["original"], e["after"]["substitute"]) for e in trail] == [("ivy", "gina")]

    # back in office: she is in the pools again (the seat gina holds stays with gina)
    ok(ivy.delete(f"/me/out-of-office/{period['id']}"))
    assert set(seat_of(ivy, second["id"])["candidate_users"]) == {"frank", "ivy"}
    assert ok(ivy.get("/me/out-of-office"))["items"] == []

    # a period that starts later moves the open work when the scheduler reaches its start
    third = new_milestone(amount="5000.00")
    submit(people["alice"], third["id"])
    later = ok(_away(frank, "hank", starts_in=1.0), 201)
    assert later["started_at"] is None
    assert "frank" in seat_of(frank, third["id"])["candidate_users"]
    time.sleep(1.2)
    run = fire_due_timers(state.session_factory, state.deployments)
    assert later["id"] in run.periods
    assert inbox(frank, third["id"]) == []
    assert "hank" in seat_of(board["hank"], third["id"])["candidate_users"]


def test_substitute_chains_resolve_and_loops_are_refused(people, new_milestone, analyst, board):
    deploy_routing(analyst, [{"level": 1, "group": "legal", "quorum": "any"}])
    ivy, gina, hank, frank = board["ivy"], board["gina"], board["hank"], board["frank"]
    ok(_away(gina, "hank"), 201)  # gina -> hank
    ok(_away(ivy, "gina"), 201)  # ivy -> gina -> hank
    ok(_away(frank, "ivy"), 201)  # frank -> ivy -> gina -> hank
    m = new_milestone(amount="5000.00")
    [seat] = submit(people["alice"], m["id"])["open_tasks"]
    assert seat["candidate_users"] == ["hank"] and seat["substitutes"] == {"hank": "frank"}

    loop = problem(_away(hank, "frank"), 409)  # hank -> frank -> ivy -> gina -> hank
    assert loop["chain"] == ["hank", "frank", "ivy", "gina", "hank"]
    problem(_away(gina, "ivy"), 409)  # gina already has a period
    problem(_away(hank, "hank"), 422)
    problem(_away(hank, "nobody"), 422)
    problem(hank.post("/me/out-of-office", {"substitute": "gina", "ends_at": "2020-01-01T00:00:00+00:00"}), 422)
    ok(decide(hank, seat["id"]))
