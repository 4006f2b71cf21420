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
START = {"milestone_id": 1, "milestone_type": "financial", "amount": Decimal(5000), "currency": "EUR",
         "submitted_by": "alice", "round": 1, "days_to_due": 30}


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
    def __init__(self) -> None:
        self.operations: list[str] = []

    def __call__(self, call: ServiceCall) -> Any:
        self.operations.append(call.operation)
        return {"ok": True}


# v2 checks the review in a script step between the review and the "Approved?" gateway.
WITH_CHECK = (
    (b'<bpmn:sequenceFlow id="flow_review_to_is_approved" sourceRef="review_milestone" targetRef="is_approved" />',
     (b'<bpmn:sequenceFlow id="flow_review_to_is_approved" sourceRef="review_milestone" targetRef="check_review" />'
      b'<bpmn:sequenceFlow id="flow_check" sourceRef="check_review" targetRef="is_approved" />')),
    (b'<bpmn:exclusiveGateway id="is_approved"',
     (b'<bpmn:scriptTask id="check_review"><bpmn:script>review_checked = True</bpmn:script></bpmn:scriptTask>'
      b'<bpmn:exclusiveGateway id="is_approved"')),
)
# v3 has no review at all: the route goes straight to the gateway.
WITHOUT_REVIEW = (
    (b'<bpmn:sequenceFlow id="flow_route_to_review" sourceRef="determine_reminder_policy" targetRef="review_milestone" />',
     b'<bpmn:sequenceFlow id="flow_route_to_review" sourceRef="determine_reminder_policy" targetRef="is_approved" />'),
    (b'<bpmn:sequenceFlow id="flow_review_to_is_approved" sourceRef="review_milestone" targetRef="is_approved" />', b""),
    (b'<bpmn:userTask id="review_milestone"', b'<bpmn:task id="review_milestone_gone"'),
    (b"</bpmn:userTask>\n\n    <!-- Non-interrupting", b"</bpmn:task>\n\n    <!-- Non-interrupting"),
    (b'attachedToRef="review_milestone"', b'attachedToRef="review_milestone_gone"'),
    (b"<bpmn:flowNodeRef>review_milestone</bpmn:flowNodeRef>", b""),
    (b'bpmnElement="review_milestone"', b'bpmnElement="review_milestone_gone"'),
    (b'bpmnElement="flow_review_to_is_approved"', b'bpmnElement="flow_route_to_review"'),
)


@pytest.fixture(scope="module")
def v1() -> Deployment:
    return Deployment.from_files(files())


def started(v1: Deployment, services: Services | None = None) -> Instance:
    instance = Instance.start(v1, PROCESS, START, services or Services())
    assert [t.bpmn_id for t in instance.ready_human_tasks()] == ["review_milestone"]
    return instance


def test_a_new_step_after_the_waiting_task_moves_and_runs(v1: Deployment) -> None:
    v2 = version(*WITH_CHECK)
    services = Services()
    instance = started(v1, services)
    before = instance.dump()
    plan = plan_migration(instance, v2)
    assert plan.possible and plan.reasons == ()
    assert plan.added == ("check_review",) and plan.removed == ()
    assert {t.bpmn_id: t.impact for t in plan.tasks}["review_milestone"] in ("reset", "changed")
    assert instance.dump() == before and instance.deployment is v1  # the plan touched nothing

    moved, _ = migrate(instance, v2, services)
    assert moved.deployment is v2 and instance.deployment is v1
    review = moved.ready_human_tasks()[0]
    assert review.id == instance.ready_human_tasks()[0].id  # the open task keeps its id (and its inbox row)
    moved.complete(review.id, {"decision": "approve"})
    assert moved.is_completed and moved.data()["review_checked"] is True
    assert services.operations[-1] == "set_milestone_status"


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
