"""`workflows.migration`: moving a running instance to another deployment, dry run first."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from workflows import Deployment, Instance, ServiceCall
from workflows.migration import MigrationRefused, migrate, plan_migration

ROOT = Path(__file__).resolve().parents[2]
BPMN = "milestone_approval.bpmn"
DMN = "approval_routing.dmn"
POLICY = "reminder_policy.dmn"
PROCESS = "milestone_approval"
START = {"milestone_id": 1, "milestone_code": "M-1", "milestone_type": "financial", "amount": Decimal(5000),
         "currency": "EUR", "contract_id": 1, "contract_number": "C-1", "contract_value": Decimal(90000),
         "account_id": 1, "account_name": "Acme Ltd", "attributes": {}, "risk": None, "submitted_by": "alice",
         "rework_to": ["alice"], "round": 1, "days_to_due": 30, "retention_of": None}
LEVEL = {"level": 1, "group": "finance", "quorum": "any", "required": 1, "seats": 1, "eligible": 2, "on_decline": "first"}
APPROVE = {"decision": "approve", "comment": "fine", "level_outcome": "approved"}
DECLINE = {"decision": "decline", "comment": "missing invoice", "level_outcome": "declined"}


def files() -> dict[str, bytes]:
    return {BPMN: (ROOT / "bpmn" / BPMN).read_bytes(), DMN: (ROOT / "dmn" / DMN).read_bytes(),
            POLICY: (ROOT / "dmn" / POLICY).read_bytes()}


def version(*replacements: tuple[bytes, bytes]) -> Deployment:
    bundle = files()
    for old, new in replacements:
        assert old in bundle[BPMN], old
        bundle[BPMN] = bundle[BPMN].replace(old, new)
    return Deployment.from_files(bundle)


class Services:
    """Answers like the application: one single-seat level, closed with the seat's level_outcome."""

    def __init__(self) -> None:
        self.operations: list[str] = []

    def __call__(self, call: ServiceCall) -> Any:
        self.operations.append(call.operation)
        if call.operation == "open_approval_level":
            return LEVEL
        if call.operation == "close_approval_level":
            outcome = call.data["level_outcome"]
            return {"level": 1, "outcome": outcome, "approvals": int(outcome == "approved"),
                    "declines": int(outcome == "declined"), "next_level": None}
        return {"ok": True}


# v2 checks the rework in a script step between the rework and the request for the next round.
WITH_REWORK_CHECK = (
    (b'<bpmn:sequenceFlow id="flow_rework_to_next_round" sourceRef="rework_milestone" targetRef="request_next_round" />',
     (b'<bpmn:sequenceFlow id="flow_rework_to_next_round" sourceRef="rework_milestone" targetRef="check_rework" />'
      b'<bpmn:sequenceFlow id="flow_check" sourceRef="check_rework" targetRef="request_next_round" />')),
    (b'<bpmn:serviceTask id="request_next_round"',
     (b'<bpmn:scriptTask id="check_rework"><bpmn:script>rework_checked = True</bpmn:script></bpmn:scriptTask>'
      b'<bpmn:serviceTask id="request_next_round"')),
)
# v2' checks the review in a script step between the review's seats and close_level.
WITH_REVIEW_CHECK = (
    (b'<bpmn:sequenceFlow id="flow_review_to_close" sourceRef="review_milestone" targetRef="close_level" />',
     (b'<bpmn:sequenceFlow id="flow_review_to_close" sourceRef="review_milestone" targetRef="check_review" />'
      b'<bpmn:sequenceFlow id="flow_check" sourceRef="check_review" targetRef="close_level" />')),
    (b'<bpmn:serviceTask id="close_level"',
     (b'<bpmn:scriptTask id="check_review"><bpmn:script>review_checked = True</bpmn:script></bpmn:scriptTask>'
      b'<bpmn:serviceTask id="close_level"')),
)
# v3 has no review at all: open_level goes straight to close_level.
WITHOUT_REVIEW = (
    (b'<bpmn:sequenceFlow id="flow_open_to_review" sourceRef="open_level" targetRef="review_milestone" />',
     b'<bpmn:sequenceFlow id="flow_open_to_review" sourceRef="open_level" targetRef="close_level" />'),
    (b'<bpmn:sequenceFlow id="flow_review_to_close" sourceRef="review_milestone" targetRef="close_level" />', b""),
    (b'<bpmn:incoming>flow_review_to_close</bpmn:incoming>', b'<bpmn:incoming>flow_open_to_review</bpmn:incoming>'),
    (b'<bpmn:userTask id="review_milestone"', b'<bpmn:task id="review_milestone_gone"'),
    (b"</bpmn:userTask>\n\n    <!-- Non-interrupting", b"</bpmn:task>\n\n    <!-- Non-interrupting"),
    (b'attachedToRef="review_milestone"', b'attachedToRef="review_milestone_gone"'),
    (b"<bpmn:flowNodeRef>review_milestone</bpmn:flowNodeRef>", b""),
    (b'bpmnElement="review_milestone"', b'bpmnElement="review_milestone_gone"'),
    (b'bpmnElement="flow_review_to_close"', b'bpmnElement="flow_open_to_review"'),
)


@pytest.fixture(scope="module")
def v1() -> Deployment:
    return Deployment.from_files(files())


def started(v1: Deployment, services: Services | None = None) -> Instance:
    instance = Instance.start(v1, PROCESS, START, services or Services())
    assert [(t.bpmn_id, t.multi_instance) for t in instance.ready_human_tasks()] == [("review_milestone", True)]
    return instance


def declined(v1: Deployment, services: Services) -> Instance:
    instance = started(v1, services)
    instance.complete(instance.ready_human_tasks()[0].id, DECLINE)
    assert [t.bpmn_id for t in instance.ready_human_tasks()] == ["rework_milestone"]
    return instance


def test_a_new_step_after_the_waiting_task_moves_and_runs(v1: Deployment) -> None:
    v2 = version(*WITH_REWORK_CHECK)
    services = Services()
    instance = declined(v1, services)
    before = instance.dump()
    plan = plan_migration(instance, v2)
    assert plan.possible and plan.reasons == ()
    assert plan.added == ("check_rework",) and plan.removed == ()
    assert {t.bpmn_id: t.impact for t in plan.tasks}["rework_milestone"] in ("reset", "changed")
    assert instance.dump() == before and instance.deployment is v1  # the plan touched nothing

    moved, _ = migrate(instance, v2, services)
    assert moved.deployment is v2 and instance.deployment is v1
    rework = moved.ready_human_tasks()[0]
    assert rework.id == instance.ready_human_tasks()[0].id  # the open task keeps its id (and its inbox row)
    moved.complete(rework.id, {"comment": "invoice attached"})
    assert moved.is_completed and moved.data()["rework_checked"] is True
    assert services.operations[-1] == "start_next_round"


def test_open_review_seats_move_to_a_version_with_a_new_step_and_keep_their_ids(v1: Deployment) -> None:
    v2 = version(*WITH_REVIEW_CHECK)
    instance = started(v1)
    plan = plan_migration(instance, v2)
    assert plan.possible and plan.added == ("check_review",) and plan.removed == ()
    assert "review_milestone" in {t.bpmn_id for t in plan.tasks}

    moved, _ = migrate(instance, v2, Services())
    assert [(t.id, t.bpmn_id, t.multi_instance, t.candidate_groups) for t in moved.ready_human_tasks()] == [
        (t.id, t.bpmn_id, t.multi_instance, t.candidate_groups) for t in instance.ready_human_tasks()]


def test_a_review_seat_completed_after_the_move_runs_the_new_step(v1: Deployment) -> None:
    v2 = version(*WITH_REVIEW_CHECK)
    services = Services()
    moved, _ = migrate(started(v1, services), v2, services)

    moved.complete(moved.ready_human_tasks()[0].id, APPROVE)

    assert moved.data().get("review_checked") is True
    assert moved.is_completed and "close_approval_level" in services.operations


def test_removing_the_element_of_a_waiting_task_is_refused_with_the_reason(v1: Deployment) -> None:
    v3 = version(*WITHOUT_REVIEW)
    instance = started(v1)
    plan = plan_migration(instance, v3)
    assert not plan.possible
    assert any("review_milestone is READY but its element was removed" in r for r in plan.reasons), plan.reasons
    assert "review_milestone" in plan.removed
    with pytest.raises(MigrationRefused) as info:
        migrate(instance, v3)
    assert info.value.plan.reasons == plan.reasons


def test_removing_an_element_the_instance_already_passed_is_refused(v1: Deployment) -> None:
    # The state-only format names each task's element: a completed step must still exist.
    v4 = version((b'sourceRef="start" targetRef="mark_submitted"', b'sourceRef="start" targetRef="determine_approval_route"'),
                 ((b'<bpmn:sequenceFlow id="flow_mark_submitted_to_route" sourceRef="mark_submitted" '
                   b'targetRef="determine_approval_route" />'), b""),
                 (b'<bpmn:serviceTask id="mark_submitted"', b'<bpmn:serviceTask id="mark_submitted_gone"'),
                 (b"<bpmn:flowNodeRef>mark_submitted</bpmn:flowNodeRef>", b""),
                 (b'bpmnElement="mark_submitted"', b'bpmnElement="mark_submitted_gone"'))
    instance = started(v1)
    plan = plan_migration(instance, v4)
    assert not plan.possible and any("mark_submitted" in r for r in plan.reasons), plan.reasons


def test_a_target_without_the_process_is_refused(v1: Deployment) -> None:
    other = version((b'<bpmn:process id="milestone_approval"', b'<bpmn:process id="other_approval"'),
                    (b'processRef="milestone_approval"', b'processRef="other_approval"'))
    plan = plan_migration(started(v1), other)
    assert not plan.possible and plan.reasons == ("the target has no executable process 'milestone_approval'",)


def test_the_same_deployment_is_a_possible_move_that_changes_nothing(v1: Deployment) -> None:
    instance = started(v1)
    plan = plan_migration(instance, v1)
    assert plan.possible and plan.unchanged and plan.tasks == ()
