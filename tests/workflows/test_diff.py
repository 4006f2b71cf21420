"""`workflows.diff`: element-level differences between two bundles, from their XML only."""

from __future__ import annotations

import warnings
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
    moved = edit(v1, BPMN, (b'<dc:Bounds x="930" y="380"', b'<dc:Bounds x="931" y="381"'),
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


def test_a_changed_multi_instance_loop_is_listed(v1: dict[str, bytes]) -> None:
    v2 = edit(v1, BPMN, (b'level_outcome != "pending"</bpmn:completionCondition>',
                         b'level_outcome not in ("pending", "abstained")</bpmn:completionCondition>'))
    (task,) = [c for c in diff_bundles(v1, v2).changes if c.category == "task"]
    assert task.element_id == "review_milestone" and set(task.fields) == {"loop"}
    old, new = task.fields["loop"]
    assert 'level_outcome != "pending"' in old and "abstained" in new and 'level_plan["seats"]' in new


def test_added_and_removed_tasks_flows_gateways_and_lanes(v1: dict[str, bytes]) -> None:
    v2 = edit(
        v1, BPMN,
        (b'<bpmn:sequenceFlow id="flow_review_to_close" sourceRef="review_milestone" targetRef="close_level" />',
         (b'<bpmn:sequenceFlow id="flow_review_to_check" sourceRef="review_milestone" targetRef="check_review" />'
          b'<bpmn:sequenceFlow id="flow_check_to_close" sourceRef="check_review" targetRef="close_level" />')),
        (b'<bpmn:serviceTask id="close_level"',
         (b'<bpmn:scriptTask id="check_review"><bpmn:script>checked = True</bpmn:script></bpmn:scriptTask>'
          b'<bpmn:serviceTask id="close_level"')),
        (b'default="flow_no_funds"', b'default="flow_financial"'),
        (b'<bpmn:lane id="lane_approvers" name="Approvers">', b'<bpmn:lane id="lane_approvers" name="Reviewers">'),
    )
    diff = diff_bundles(v1, v2)
    assert diff.of("task", "added") == ["check_review"]
    assert diff.of("flow", "added") == ["flow_check_to_close", "flow_review_to_check"]
    assert diff.of("flow", "removed") == ["flow_review_to_close"]
    gateways = {c.element_id: c.fields for c in diff.changes if c.category == "gateway"}
    assert gateways["is_financial"] == {"default": ("flow_no_funds", "flow_financial"),
                                        "lane": ("Approvers", "Reviewers")}
    for gateway in ("funds_merge", "level_merge", "level_outcome"):
        assert gateways[gateway] == {"lane": ("Approvers", "Reviewers")}
    (lane,) = [c for c in diff.changes if c.category == "lane"]
    assert lane.element_id == "lane_approvers" and lane.fields["name"] == ("Approvers", "Reviewers")
    # every task of the lane changes its `lane` field too: routing by lane name depends on it
    assert {"review_milestone", "open_level", "close_level"} <= set(diff.of("task", "changed"))
    assert "plan_approval" not in diff.of("task", "changed")  # a Submitter task
    listed = {g["id"]: g for g in diff.as_dict()["gateways"]["changed"]}
    assert listed["is_financial"]["changes"]["default"] == {"old": "flow_no_funds", "new": "flow_financial"}


def test_flow_conditions_are_compared(v1: dict[str, bytes]) -> None:
    last_level = b'level_result["outcome"] == "approved" and level_result["next_level"] is None'
    v2 = edit(v1, BPMN, (last_level, b'level_result["outcome"] in ("approved", "accepted") and '
                                     b'level_result["next_level"] is None'))
    (flow,) = [c for c in diff_bundles(v1, v2).changes if c.category == "flow"]
    assert flow.element_id == "flow_all_levels_approved"
    assert flow.fields == {"condition": (last_level.decode(), 'level_result["outcome"] in ("approved", "accepted") '
                                                              'and level_result["next_level"] is None')}


def test_decision_rules_added_removed_and_changed(v1: dict[str, bytes]) -> None:
    v2 = edit(
        v1, DMN,
        (b"&lt; 10000</text></inputEntry>", b"&lt; 20000</text></inputEntry>"),
        (b'<rule id="rule_financial_large_board">', b'<rule id="rule_financial_huge_board">'),
        (b'<outputEntry id="rule_high_risk_quorum"><text>"all"</text>',
         b'<outputEntry id="rule_high_risk_quorum"><text>2</text>'),
        (b'hitPolicy="COLLECT"', b'hitPolicy="RULE ORDER"'),
    )
    diff = diff_bundles(v1, v2)
    assert diff.of("rule", "added") == ["rule_financial_huge_board"]
    assert diff.of("rule", "removed") == ["rule_financial_large_board"]
    changed = {c.element_id: c.fields for c in diff.changes if c.category == "rule" and c.change == "changed"}
    assert changed == {
        "rule_financial_small": {"inputs": (['"financial"', "< 10000", "-", "-"], ['"financial"', "< 20000", "-", "-"])},
        "rule_high_risk": {"outputs": (["3", '"contract-managers"', '"all"', '"first"'],
                                       ["3", '"contract-managers"', "2", '"first"'])},
    }
    (decision,) = [c for c in diff.changes if c.category == "decision"]
    assert decision.fields == {"hitPolicy": ("COLLECT", "RULE ORDER")}


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


# --------------------------------------------------------------------------- loop markers (lxml elements are falsy)
def test_diffing_a_bundle_with_a_multi_instance_task_raises_no_warning(v1: dict[str, bytes]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        diff_bundles(v1, v1)


def test_making_a_task_multi_instance_with_a_bare_marker_is_listed(v1: dict[str, bytes]) -> None:
    v2 = edit(v1, BPMN, (b"<bpmn:outgoing>flow_rework_to_next_round</bpmn:outgoing>\n    </bpmn:userTask>",
                         b"<bpmn:outgoing>flow_rework_to_next_round</bpmn:outgoing>\n"
                         b'      <bpmn:multiInstanceLoopCharacteristics isSequential="true" />\n    </bpmn:userTask>'))
    assert "rework_milestone" in diff_bundles(v1, v2).of("task", "changed")
