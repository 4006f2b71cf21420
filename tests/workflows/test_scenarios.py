"""Analysts' scenario files: every file under scenarios/ passes, and a wrong diagram or a wrong
expectation fails with the first mismatch (pytest and `milestones test-diagrams` alike)."""

from __future__ import annotations

import json
import re
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from workflows import scenarios

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "tests" / "workflows" / "scenarios"
SCENARIO_FILES = sorted(SCENARIOS.glob("*.json"))


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=[p.stem for p in SCENARIO_FILES])
def test_scenario(path: Path) -> None:
    result = scenarios.run(path, base=ROOT)
    assert result.passed, result.line()


def test_every_path_of_the_approval_diagram_and_every_routing_rule_is_covered() -> None:
    loaded = [scenarios.load(p) for p in SCENARIO_FILES]
    approval = [s for s in loaded if s.get("process") == "milestone_approval"]
    paths = [s.get("expect", {}).get("visited", []) for s in approval]
    paths = [p if isinstance(p, list) else p.get("any_order", []) for p in paths]
    ends = {e for path in paths for e in path if isinstance(e, str) and e.startswith("end_")}
    assert ends == {"end_completed", "end_resubmitted"}
    visited = {e for path in paths for e in path}
    assert {"plan_approval", "open_level", "close_level", "release_funds_task", "rework_milestone",
            "request_next_round", "send_reminder", "escalate_review"} <= visited
    # the level loop: a path through two levels that is approved, and one that is declined at level 2
    looped = [path for path in paths if path.count("level_merge") >= 2]
    assert any("end_completed" in path for path in looped) and any("rework_milestone" in path for path in looped)
    # a seat that leaves its level open, and errors both at the plan and at the release of funds
    seat_outcomes = {step.get("data", {}).get("level_outcome") for s in approval for step in s.get("steps", [])}
    assert {"pending", "approved", "declined"} <= seat_outcomes
    assert {s["expect"]["error"]["element"] for s in approval if "error" in s.get("expect", {})} == {
        "plan_approval", "release_funds_task"}

    [routing] = [s for s in loaded if s.get("decision") == "approval_routing"]
    cases = routing["cases"]
    amounts = {str(c["input"]["amount"]) for c in cases if c["input"].get("milestone_type") == "financial"}
    assert {"9999.99", "10000", "99999.99", "100000"} <= amounts
    groups = {g for c in cases for g in c["output"].get("approval_group", [])}
    assert groups == {"project-managers", "finance", "finance-managers", "executive-board", "contract-managers"}
    chains = {tuple(c["output"].get("level", [])) for c in cases}
    assert {(), (1,), (1, 2), (1, 3), (1, 2, 3), (3,)} <= chains  # () is "no rule matched"
    assert {c["input"]["risk"] for c in cases if 3 in c["output"].get("level", [])} == {"high"}
    assert all(set(c["input"]) == {"milestone_type", "amount", "currency", "risk"} for c in cases)
    for case in cases:  # COLLECT: every output is a list with one item per level, or there is no output at all
        output = case["output"]
        assert output == {} or (set(output) == {"level", "approval_group", "quorum", "on_decline"}
                                and len({len(v) for v in output.values()}) == 1), case["name"]


# --------------------------------------------------------------------------- scenarios can fail
def copy_scenario(tmp_path: Path, name: str, change: Any = None) -> Path:
    scenario = json.loads((SCENARIOS / name).read_text(), parse_float=Decimal)
    if change is not None:
        change(scenario)
    target = tmp_path / name
    # decimals are written back as the exact JSON numbers they were read from
    text = json.dumps(scenario, default=lambda d: f"@decimal:{d}@")
    target.write_text(re.sub(r'"@decimal:([^@]+)@"', r"\1", text))
    return target


def mismatch(tmp_path: Path, name: str, change: Any) -> str:
    result = scenarios.run(copy_scenario(tmp_path, name, change), base=ROOT)
    assert not result.passed
    return result.message


def test_a_wrong_candidate_group_fails_at_that_step(tmp_path: Path) -> None:
    def change(s: dict[str, Any]) -> None:
        s["steps"][0]["candidate_groups"] = ["finance"]

    message = mismatch(tmp_path, "milestone_financial_approved_releases_funds.json", change)
    assert message == (
        "step 1: task 'review_milestone' has candidate_groups ['finance-managers'], expected ['finance']"
    )


def test_a_wrong_path_names_the_first_difference(tmp_path: Path) -> None:
    def change(s: dict[str, Any]) -> None:
        s["expect"]["visited"].remove("is_financial")

    message = mismatch(tmp_path, "milestone_financial_approved_releases_funds.json", change)
    assert "first difference at position 12: 'is_financial' instead of 'release_funds_task'" in message


def test_a_level_missing_from_the_path_fails(tmp_path: Path) -> None:
    def change(s: dict[str, Any]) -> None:  # expect one level where the table collects two
        path = s["expect"]["visited"]
        second = path.index("level_merge", path.index("level_merge") + 1)
        del path[second:second + 5]

    message = mismatch(tmp_path, "milestone_two_levels_approved_releases_funds.json", change)
    assert "first difference at position 11: 'level_merge' instead of 'mark_approved'" in message


def test_a_wrong_service_parameter_and_wrong_data_fail(tmp_path: Path) -> None:
    def wrong_param(s: dict[str, Any]) -> None:
        [release] = [e for e in s["expect"]["services"] if e["operation"] == "release_funds"]
        release["params"]["currency"] = "USD"

    assert 'service call 6 (release_funds) params.currency is "EUR", expected "USD"' in mismatch(
        tmp_path, "milestone_financial_approved_releases_funds.json", wrong_param
    )

    def wrong_data(s: dict[str, Any]) -> None:
        s["expect"]["data"]["approval_group"] = ["executive-board"]

    assert 'data.approval_group[0] is "finance-managers", expected "executive-board"' in mismatch(
        tmp_path, "milestone_financial_approved_releases_funds.json", wrong_data
    )

    def one_level_too_many(s: dict[str, Any]) -> None:
        s["expect"]["data"]["approval_group"] = ["finance-managers", "executive-board"]

    assert 'data.approval_group is ["finance-managers"], expected ["finance-managers", "executive-board"]' in mismatch(
        tmp_path, "milestone_financial_approved_releases_funds.json", one_level_too_many
    )


def test_a_step_for_a_task_that_is_not_ready_fails(tmp_path: Path) -> None:
    def change(s: dict[str, Any]) -> None:
        s["steps"].append({"task": "rework_milestone", "data": {}})

    message = mismatch(tmp_path, "milestone_financial_approved_releases_funds.json", change)
    assert message == "step 2: task 'rework_milestone' is not ready; ready: none (the instance completed)"


def test_an_unexpected_error_and_a_missing_error_fail(tmp_path: Path) -> None:
    def no_error_expected(s: dict[str, Any]) -> None:
        del s["expect"]["error"]

    assert "unexpected error at release_funds_task" in mismatch(
        tmp_path, "milestone_release_failure_is_an_error.json", no_error_expected
    )

    def service_works(s: dict[str, Any]) -> None:
        del s["services"]["release_funds"]

    assert "expected an error at 'release_funds_task', but none happened" in mismatch(
        tmp_path, "milestone_release_failure_is_an_error.json", service_works
    )


def test_a_seat_outcome_the_level_does_not_expect_fails(tmp_path: Path) -> None:
    def approved_at_once(s: dict[str, Any]) -> None:  # the first seat completes the level
        s["steps"][0]["data"]["level_outcome"] = "approved"

    assert mismatch(tmp_path, "milestone_quorum_level_pending_then_approved.json", approved_at_once) == (
        "step 2: task 'review_milestone' is not ready; ready: none (the instance completed)"
    )

    def still_pending(s: dict[str, Any]) -> None:  # two pending seats: the third one still waits
        s["steps"][1]["data"]["level_outcome"] = "pending"
        del s["expect"]["visited"]  # (the path is checked first; this is about what is left waiting)

    assert mismatch(tmp_path, "milestone_quorum_level_pending_then_approved.json", still_pending).startswith(
        "completed is False, expected True (waiting for ['review_milestone']; "
    )


ROUTING_EDITS = [
    pytest.param(
        "10000 &lt;= ? &lt; 100000", "10000 &lt; ? &lt; 100000", 1,
        'financial, exactly 10 000: input {"amount": 10000, "currency": "EUR", "milestone_type": "financial", '
        '"risk": null} gave {}, expected {"approval_group": ["finance-managers"], "level": [1], '
        '"on_decline": ["first"], "quorum": ["any"]}',
        id="10000-boundary",
    ),
    pytest.param(
        "&gt;= 100000", "&gt; 100000", 2,
        'financial, exactly 100 000: finance managers, then the board: input {"amount": 100000, "currency": "EUR", '
        '"milestone_type": "financial", "risk": null} gave {}, expected {"approval_group": ["finance-managers", '
        '"executive-board"], "level": [1, 2], "on_decline": ["first", "first"], "quorum": ["any", "any"]}',
        id="100000-boundary",
    ),
    pytest.param(
        '<text>"all"</text>', "<text>2</text>", 1,
        'high risk, small: every contract manager signs off as level 3: input {"amount": 5000, "currency": "EUR", '
        '"milestone_type": "financial", "risk": "high"} gave {"approval_group": ["finance", "contract-managers"], '
        '"level": [1, 3], "on_decline": ["first", "first"], "quorum": ["any", 2]}, expected {"approval_group": '
        '["finance", "contract-managers"], "level": [1, 3], "on_decline": ["first", "first"], "quorum": ["any", "all"]}',
        id="level-3-quorum",
    ),
]


@pytest.mark.parametrize(("old", "new", "count", "expected"), ROUTING_EDITS)
def test_an_edited_routing_table_fails_the_edge_case(tmp_path: Path, old: str, new: str, count: int,
                                                      expected: str) -> None:
    """An analyst moves a boundary or a quorum by a character or two: the scenario catches it."""
    (tmp_path / "dmn").mkdir()
    (tmp_path / "bpmn").mkdir()
    shutil.copy(ROOT / "bpmn" / "milestone_approval.bpmn", tmp_path / "bpmn")
    dmn = (ROOT / "dmn" / "approval_routing.dmn").read_text()
    assert dmn.count(old) == count
    (tmp_path / "dmn" / "approval_routing.dmn").write_text(dmn.replace(old, new))
    result = scenarios.run(SCENARIOS / "approval_routing_table.json", base=tmp_path)
    assert not result.passed
    assert result.message == expected


def test_scenario_file_errors_are_reported_not_raised(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"process": "milestone_approval", "deployment": ["bpmn/nope.bpmn"], "expect": {}}')
    assert "deployment file 'bpmn/nope.bpmn' not found" in scenarios.run(bad, base=ROOT).message
    bad.write_text('{"process": "milestone_approval", "deployment": [], "expectations": {}}')
    assert "unknown keys ['expectations']" in scenarios.run(bad, base=ROOT).message
    bad.write_text("{not json")
    assert scenarios.run(bad, base=ROOT).message.startswith("scenario error: cannot read")


# --------------------------------------------------------------------------- the CLI
def test_cli_prints_one_line_per_scenario_and_exits_0_when_all_pass() -> None:
    from app.cli import main

    result = CliRunner().invoke(main, ["test-diagrams", str(SCENARIOS), "--base", str(ROOT)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(lines) == len(SCENARIO_FILES)
    assert all(line.startswith("PASS  ") for line in lines)


def test_cli_exits_1_and_shows_the_first_mismatch(tmp_path: Path) -> None:
    from app.cli import main

    def change(s: dict[str, Any]) -> None:
        s["expect"]["completed"] = False

    failing = copy_scenario(tmp_path, "milestone_non_financial_approved_without_funds.json", change)
    passing = copy_scenario(tmp_path, "approval_routing_table.json")
    result = CliRunner().invoke(main, ["test-diagrams", str(failing), str(passing), "--base", str(ROOT)])
    assert result.exit_code == 1
    out = result.output.splitlines()
    fail_at = next(i for i, line in enumerate(out) if line.startswith("FAIL  "))
    assert "non-financial milestone is approved" in out[fail_at]
    assert out[fail_at + 1].strip().startswith("completed is True, expected False")
    assert any(line.startswith("PASS  approval routing") for line in out)
