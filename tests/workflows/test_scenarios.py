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
    ends = {
        e
        for s in loaded
        if "process" in s
        for e in s.get("expect", {}).get("visited", [])
        if isinstance(e, str) and e.startswith("end_")
    }
    assert ends == {"end_completed", "end_resubmitted"}
    visited = {e for s in loaded if "process" in s for e in s.get("expect", {}).get("visited", [])}
    assert {"release_funds_task", "rework_milestone", "request_next_round"} <= visited
    assert any("error" in s.get("expect", {}) for s in loaded)
    [routing] = [s for s in loaded if s.get("decision") == "approval_routing"]
    amounts = {str(c["input"]["amount"]) for c in routing["cases"]}
    assert {"9999.99", "10000", "99999.99", "100000"} <= amounts
    groups = {c["output"]["approval_group"] for c in routing["cases"]}
    assert groups == {"project-managers", "finance", "finance-managers", "executive-board"}


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
    assert "first difference at position 8: 'is_financial' instead of 'release_funds_task'" in message


def test_a_wrong_service_parameter_and_wrong_data_fail(tmp_path: Path) -> None:
    def wrong_param(s: dict[str, Any]) -> None:
        s["expect"]["services"][2]["params"]["currency"] = "USD"

    assert 'service call 3 (release_funds) params.currency is "EUR", expected "USD"' in mismatch(
        tmp_path, "milestone_financial_approved_releases_funds.json", wrong_param
    )

    def wrong_data(s: dict[str, Any]) -> None:
        s["expect"]["data"]["approval_group"] = "executive-board"

    assert 'data.approval_group is "finance-managers", expected "executive-board"' in mismatch(
        tmp_path, "milestone_financial_approved_releases_funds.json", wrong_data
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
        s["services"] = {}

    assert "expected an error at 'release_funds_task', but none happened" in mismatch(
        tmp_path, "milestone_release_failure_is_an_error.json", service_works
    )


def test_an_edited_routing_table_fails_the_edge_case(tmp_path: Path) -> None:
    """An analyst moves the 10 000 boundary by one character: the scenario catches it."""
    (tmp_path / "dmn").mkdir()
    (tmp_path / "bpmn").mkdir()
    shutil.copy(ROOT / "bpmn" / "milestone_approval.bpmn", tmp_path / "bpmn")
    dmn = (ROOT / "dmn" / "approval_routing.dmn").read_text()
    assert dmn.count("10000 &lt;= ? &lt; 100000") == 1
    (tmp_path / "dmn" / "approval_routing.dmn").write_text(
        dmn.replace("10000 &lt;= ? &lt; 100000", "10000 &lt; ? &lt; 100000")
    )
    result = scenarios.run(SCENARIOS / "approval_routing_table.json", base=tmp_path)
    assert not result.passed
    assert result.message == (
        'financial, exactly 10 000: input {"amount": 10000, "milestone_type": "financial"} '
        'gave {"approval_group": "finance"}, expected {"approval_group": "finance-managers"}'
    )


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
