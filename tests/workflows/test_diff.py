"""`workflows.diff`: element-level differences between two bundles, from their XML only."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflows import DeploymentError
from workflows.diff import diff_bundles

ROOT = Path(__file__).resolve().parents[2]
BPMN = "milestone_approval.bpmn"
DMN = "approval_routing.dmn"


@pytest.fixture(scope="module")
def v1() -> dict[str, bytes]:
    return {BPMN: (ROOT / "bpmn" / BPMN).read_bytes(), DMN: (ROOT / "dmn" / DMN).read_bytes()}


def edit(files: dict[str, bytes], name: str, *replacements: tuple[bytes, bytes]) -> dict[str, bytes]:
    content = files[name]
    for old, new in replacements:
        assert content.count(old) >= 1, old
        content = content.replace(old, new)
    return {**files, name: content}


def test_identical_bundles_and_diagram_layout_changes_are_no_difference(v1: dict[str, bytes]) -> None:
    assert diff_bundles(v1, v1).empty
    moved = edit(v1, BPMN, (b'<dc:Bounds x="430" y="360"', b'<dc:Bounds x="431" y="361"'),
             (b"hand-written BPMN", b"hand-written BPMN, re-laid out"))
    diff = diff_bundles(v1, moved)
    assert [(c.category, c.change, c.element_id) for c in diff.changes] == [("file", "changed", BPMN)]


def test_changed_task_attributes_are_listed_with_old_and_new_values(v1: dict[str, bytes]) -> None:
    v2 = edit(v1, BPMN, (b'name="Review milestone"', b'name="Review the milestone"'),
              (b'camunda:dueDate="${review_due}"', b'camunda:dueDate="P3D"'))
    diff = diff_bundles(v1, v2)
    (task,) = [c for c in diff.changes if c.category == "task"]
    assert (task.change, task.element_id, task.type, task.container) == (
        "changed", "review_milestone", "userTask", "milestone_approval")
    assert task.fields == {"camunda:dueDate": ("${review_due}", "P3D"), "name": ("Review milestone", "Review the milestone")}
    listed = diff.as_dict()["tasks"]["changed"][0]
    assert listed["changes"]["name"] == {"old": "Review milestone", "new": "Review the milestone"}


def test_added_and_removed_tasks_flows_gateways_and_lanes(v1: dict[str, bytes]) -> None:
    v2 = edit(
        v1, BPMN,
        (b'<bpmn:sequenceFlow id="flow_review_to_is_approved" sourceRef="review_milestone" targetRef="is_approved" />',
         (b'<bpmn:sequenceFlow id="flow_review_to_check" sourceRef="review_milestone" targetRef="check_review" />'
          b'<bpmn:sequenceFlow id="flow_check_to_is_approved" sourceRef="check_review" targetRef="is_approved" />')),
        (b'<bpmn:exclusiveGateway id="is_approved"',
         (b'<bpmn:scriptTask id="check_review"><bpmn:script>checked = True</bpmn:script></bpmn:scriptTask>'
          b'<bpmn:exclusiveGateway id="is_approved"')),
        (b'default="flow_no_funds"', b'default="flow_financial"'),
        (b'<bpmn:lane id="lane_approvers" name="Approvers">', b'<bpmn:lane id="lane_approvers" name="Reviewers">'),
    )
    diff = diff_bundles(v1, v2)
    assert diff.of("task", "added") == ["check_review"]
    assert diff.of("flow", "added") == ["flow_check_to_is_approved", "flow_review_to_check"]
    assert diff.of("flow", "removed") == ["flow_review_to_is_approved"]
    gateways = {c.element_id: c.fields for c in diff.changes if c.category == "gateway"}
    assert gateways["is_financial"] == {"default": ("flow_no_funds", "flow_financial"),
                                        "lane": ("Approvers", "Reviewers")}
    assert gateways["funds_merge"] == {"lane": ("Approvers", "Reviewers")}
    (lane,) = [c for c in diff.changes if c.category == "lane"]
    assert lane.element_id == "lane_approvers" and lane.fields["name"] == ("Approvers", "Reviewers")
    # every task of the lane changes its `lane` field too: routing by lane name depends on it
    assert "review_milestone" in diff.of("task", "changed")
    listed = {g["id"]: g for g in diff.as_dict()["gateways"]["changed"]}
    assert listed["is_financial"]["changes"]["default"] == {"old": "flow_no_funds", "new": "flow_financial"}


def test_flow_conditions_are_compared(v1: dict[str, bytes]) -> None:
    v2 = edit(v1, BPMN, (b'decision == "approve"', b'decision in ("approve", "accept")'))
    (flow,) = [c for c in diff_bundles(v1, v2).changes if c.category == "flow"]
    assert flow.element_id == "flow_approve"
    assert flow.fields == {"condition": ('decision == "approve"', 'decision in ("approve", "accept")')}


def test_decision_rules_added_removed_and_changed(v1: dict[str, bytes]) -> None:
    v2 = edit(
        v1, DMN,
        (b"&lt; 10000</text></inputEntry>", b"&lt; 20000</text></inputEntry>"),
        (b'<rule id="rule_financial_large">', b'<rule id="rule_financial_huge">'),
        (b'hitPolicy="FIRST"', b'hitPolicy="UNIQUE"'),
    )
    diff = diff_bundles(v1, v2)
    assert diff.of("rule", "added") == ["rule_financial_huge"]
    assert diff.of("rule", "removed") == ["rule_financial_large"]
    changed = {c.element_id: c.fields for c in diff.changes if c.category == "rule" and c.change == "changed"}
    assert changed == {"rule_financial_small": {"inputs": (['"financial"', "< 10000"], ['"financial"', "< 20000"])}}
    (decision,) = [c for c in diff.changes if c.category == "decision"]
    assert decision.fields == {"hitPolicy": ("FIRST", "UNIQUE")}


def test_files_added_and_removed(v1: dict[str, bytes]) -> None:
    extra = {**v1, "other.dmn": v1[DMN].replace(b'id="approval_routing"', b'id="other_routing"')}
    diff = diff_bundles(v1, extra)
    assert diff.of("file", "added") == ["other.dmn"]
    assert "other_routing" in diff.of("decision", "added")
    back = diff_bundles(extra, v1)
    assert back.of("file", "removed") == ["other.dmn"] and "other_routing" in back.of("decision", "removed")


def test_a_hostile_file_is_refused_not_parsed(v1: dict[str, bytes]) -> None:
    evil = {**v1, "evil.bpmn": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'}
    with pytest.raises(DeploymentError):
        diff_bundles(v1, evil)
