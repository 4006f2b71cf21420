"""`workflows.validation`: every problem of a bundle at once, located by file, element id and line.

Pure: no Flask, no database. Diagrams are small inline documents (valid against the BPMN XSD unless
a test says otherwise) plus the repository's own bundle, which must stay valid.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from workflows import Deployment, Problem
from workflows.deployment import MAX_FILE_BYTES
from workflows.validation import check_bundle, describe, validate_bundle

ROOT = Path(__file__).resolve().parents[2]

BPMN_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
                  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
                  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core"
                  xmlns:camunda="http://camunda.org/schema/1.0/bpmn"
                  id="defs" targetNamespace="http://bpmn.io/schema/bpmn">
"""
DMN_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="https://www.omg.org/spec/DMN/20191111/MODEL/" id="defs" name="d" namespace="http://x">
"""


def bpmn(body: str, process_id: str = "p", prolog: str = "") -> bytes:
    head = BPMN_HEAD
    if prolog:
        first, rest = head.split("\n", 1)
        head = f"{first}\n{prolog}\n{rest}"
    return f'{head}<bpmn:process id="{process_id}" isExecutable="true">\n{body}\n</bpmn:process>\n' \
           "</bpmn:definitions>\n".encode()


def flows(*pairs: tuple[str, str, str]) -> str:
    return "\n".join(f'<bpmn:sequenceFlow id="{f}" sourceRef="{s}" targetRef="{t}" />' for f, s, t in pairs)


def dmn(rules: list[tuple[str, ...]], hit_policy: str = "UNIQUE", inputs: tuple[str, ...] = ("amount", "kind"),
        decision_id: str = "routing") -> bytes:
    """A decision table; each rule is (rule id, input entry per input..., output entry)."""
    ins = "".join(f'<input id="in_{i}"><inputExpression id="ie_{i}"><text>{expr}</text></inputExpression></input>'
                  for i, expr in enumerate(inputs))
    body = []
    for rule in rules:
        rid, *entries, out = rule
        cells = "".join(f'<inputEntry id="{rid}_{i}"><text>{e}</text></inputEntry>' for i, e in enumerate(entries))
        body.append(f'<rule id="{rid}">{cells}<outputEntry id="{rid}_out"><text>{out}</text></outputEntry></rule>')
    rules_xml = "\n".join(body)
    return (f'{DMN_HEAD}<decision id="{decision_id}" name="Routing">\n'
            f'<decisionTable id="{decision_id}_table" hitPolicy="{hit_policy}">{ins}'
            f'<output id="out" name="group" />\n{rules_xml}\n</decisionTable></decision></definitions>\n').encode()


def simple_process(middle: str = '<bpmn:userTask id="review" camunda:candidateGroups="finance" />',
                   middle_id: str = "review") -> bytes:
    return bpmn(f'<bpmn:startEvent id="start" />{middle}<bpmn:endEvent id="end" />'
                + flows(("f1", "start", middle_id), ("f2", middle_id, "end")))


def repo_files() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for d in ("bpmn", "dmn") for p in sorted((ROOT / d).glob("*"))
            if p.suffix in (".bpmn", ".dmn")}


def where(problems: list[Problem]) -> set[tuple[str | None, str | None]]:
    return {(p.file, p.element_id) for p in problems}


def find(problems: list[Problem], element_id: str, text: str) -> Problem:
    matches = [p for p in problems if p.element_id == element_id and text in p.message]
    assert matches, f"no problem on {element_id} mentioning {text!r} in:\n" + "\n".join(map(describe, problems))
    return matches[0]


# --------------------------------------------------------------------------- the good cases
def test_the_repository_bundle_is_valid_with_and_without_group_checks() -> None:
    files = repo_files()
    assert validate_bundle(files) == []
    checked = check_bundle(files, known_groups=set())  # its tasks route by ${...}, never by literal groups
    assert checked.valid and isinstance(checked.deployment, Deployment)
    assert checked.deployment.hash == Deployment.from_files(files).hash


def test_a_minimal_valid_bundle_has_no_problems() -> None:
    assert validate_bundle({"p.bpmn": simple_process()}, known_groups={"finance"}) == []


# --------------------------------------------------------------------------- everything at once
def test_every_problem_of_the_bundle_is_reported_at_once_with_file_element_and_line() -> None:
    body = """
    <bpmn:laneSet id="lanes"><bpmn:lane id="lane_ghosts" name="ghosts"><bpmn:flowNodeRef>review</bpmn:flowNodeRef></bpmn:lane></bpmn:laneSet>
    <bpmn:startEvent id="start" />
    <bpmn:scriptTask id="calc"><bpmn:script>x = (1 +</bpmn:script></bpmn:scriptTask>
    <bpmn:userTask id="review" />
    <bpmn:userTask id="approve" camunda:candidateGroups="finance, nobody" />
    <bpmn:businessRuleTask id="route"><bpmn:extensionElements><spiffworkflow:calledDecisionId>missing</spiffworkflow:calledDecisionId></bpmn:extensionElements></bpmn:businessRuleTask>
    <bpmn:callActivity id="sub" calledElement="nowhere" />
    <bpmn:exclusiveGateway id="gw" default="f_missing" />
    <bpmn:endEvent id="end" />
    """ + flows(("f1", "start", "calc"), ("f2", "calc", "review"), ("f3", "review", "approve"),
                ("f4", "approve", "gw"), ("f6", "gw", "route"), ("f7", "route", "sub"), ("f8", "sub", "ghost")) + """
    <bpmn:sequenceFlow id="f5" sourceRef="gw" targetRef="review"><bpmn:conditionExpression>decision = 'x'</bpmn:conditionExpression></bpmn:sequenceFlow>
    """
    table = dmn([("r1", "&lt; 100", '"a"', '"x"'), ("r2", "[50..200]", '"a"', '"y" +')])
    problems = validate_bundle({"flow.bpmn": bpmn(body), "rules.dmn": table}, known_groups={"finance"})

    find(problems, "lane_ghosts", "lane 'ghosts' routes human tasks but is not a known group")
    find(problems, "calc", "script does not compile")
    find(problems, "review", "loop re-enters this task without a gateway")
    find(problems, "approve", "candidate group 'nobody' is not a known group")
    find(problems, "route", "decision 'missing' is in no .dmn file")
    find(problems, "sub", "calls process 'nowhere'")
    find(problems, "gw", "default flow 'f_missing' does not exist")
    find(problems, "f5", "conditionExpression does not compile")
    find(problems, "f8", "targetRef 'ghost'")
    find(problems, "routing", "no catch-all rule")
    find(problems, "r2", "rules 'r1' and 'r2' both match")
    find(problems, "r2_out", "DMN output entry does not compile")
    assert all(p.file in ("flow.bpmn", "rules.dmn") and p.line for p in problems), problems
    script = find(problems, "calc", "script")
    script_line = next(n for n, text in enumerate(bpmn(body).splitlines(), 1) if b"<bpmn:script>" in text)
    assert script.file == "flow.bpmn" and script.line == script_line
    assert problems == sorted(problems, key=lambda p: (p.file or "", p.line or 0, p.element_id or "", p.message))
    assert check_bundle({"flow.bpmn": bpmn(body), "rules.dmn": table}).deployment is None


# --------------------------------------------------------------------------- the upload itself
def test_malformed_xml_names_file_and_line() -> None:
    (problem,) = validate_bundle({"broken.bpmn": b'<?xml version="1.0"?>\n<definitions>\n<process id="p">\n'
                                                 b"</definitions>"})
    assert problem.file == "broken.bpmn" and problem.line == 4
    assert "not well-formed" in problem.message


def test_xsd_errors_are_reported_with_their_line() -> None:
    body = '<bpmn:startEvent id="start" />\n<bpmn:bogus id="b" />\n<bpmn:endEvent id="end" />' + flows(
        ("f1", "start", "end"))
    problems = validate_bundle({"x.bpmn": bpmn(body)})
    xsd = [p for p in problems if p.message.startswith("XSD:")]
    assert xsd and xsd[0].line == 9 and xsd[0].element_id == "b" and "bogus" in xsd[0].message


@pytest.mark.parametrize(("name", "content", "expected"), [
    pytest.param("notes.txt", b"hello", "ending in .bpmn or .dmn", id="extension"),
    pytest.param("../x.bpmn", simple_process(), "plain name", id="path"),
    pytest.param("d.bpmn", dmn([("r", "-", "-", '"x"')]), "not a BPMN 2.0 <definitions>", id="dmn-as-bpmn"),
    pytest.param("b.dmn", simple_process(), "not a DMN", id="bpmn-as-dmn"),
])
def test_files_that_are_no_diagrams_are_refused(name: str, content: bytes, expected: str) -> None:
    problems = validate_bundle({name: content})
    assert any(p.file == name and expected in p.message for p in problems), problems


def test_an_empty_bundle_is_a_problem() -> None:
    assert [p.message for p in validate_bundle({})] == ["the bundle is empty: upload .bpmn and .dmn files"]


HOSTILE = [
    pytest.param('<!DOCTYPE bpmn:definitions [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>', id="xxe"),
    pytest.param('<!DOCTYPE bpmn:definitions [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
                 '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>', id="billion-laughs"),
    pytest.param('<!DOCTYPE bpmn:definitions SYSTEM "http://127.0.0.1:9/evil.dtd">', id="external-dtd"),
    pytest.param('<!DOCTYPE bpmn:definitions [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd"> %p;]>',
                 id="parameter-entity"),
]


@pytest.mark.parametrize("prolog", HOSTILE)
def test_hostile_xml_is_refused_before_any_parser_or_spiffworkflow_sees_it(
        prolog: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*_args: object) -> None:
        raise AssertionError("SpiffWorkflow's parser saw a hostile file")

    monkeypatch.setattr(Deployment, "from_files", must_not_run)
    (problem,) = validate_bundle({"evil.bpmn": bpmn('<bpmn:startEvent id="start" />', prolog=prolog),
                                  "fine.bpmn": simple_process()})
    assert problem.file == "evil.bpmn" and problem.line == 2
    assert "DOCTYPE and ENTITY declarations are not allowed" in problem.message


def test_a_doctype_the_byte_scan_cannot_see_is_refused_by_the_parser() -> None:
    text = bpmn('<bpmn:startEvent id="start" />', prolog="<!DOCTYPE bpmn:definitions>").decode()
    utf16 = text.replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16")
    (problem,) = validate_bundle({"utf16.bpmn": utf16})
    assert problem.file == "utf16.bpmn" and "DOCTYPE is not allowed" in problem.message


def test_an_oversize_file_is_refused_unparsed() -> None:
    big = simple_process().replace(b"<bpmn:startEvent", b"<!--" + b"x" * MAX_FILE_BYTES + b"--><bpmn:startEvent")
    (problem,) = validate_bundle({"big.bpmn": big})
    assert problem.file == "big.bpmn" and f"larger than {MAX_FILE_BYTES} bytes" in problem.message


# --------------------------------------------------------------------------- references and groups
def test_business_rule_tasks_resolve_spiff_and_camunda_decision_references() -> None:
    task = ('<bpmn:businessRuleTask id="route" camunda:decisionRef="routing"><bpmn:extensionElements>'
            '<spiffworkflow:calledDecisionId>routing</spiffworkflow:calledDecisionId></bpmn:extensionElements>'
            '</bpmn:businessRuleTask>')
    table = dmn([("r1", "-", "-", '"x"')])
    assert validate_bundle({"p.bpmn": simple_process(task, "route"), "r.dmn": table}) == []
    wrong = task.replace('camunda:decisionRef="routing"', 'camunda:decisionRef="routing_v2"')
    problems = validate_bundle({"p.bpmn": simple_process(wrong, "route"), "r.dmn": table})
    find(problems, "route", "decision 'routing_v2' is in no .dmn file")
    bare = '<bpmn:businessRuleTask id="route" />'
    find(validate_bundle({"p.bpmn": simple_process(bare, "route")}), "route", "without a decision reference")


def test_call_activities_may_call_processes_of_other_files() -> None:
    caller = simple_process('<bpmn:callActivity id="call" calledElement="child" />', "call")
    child = bpmn('<bpmn:startEvent id="c_start" /><bpmn:endEvent id="c_end" />' + flows(("c1", "c_start", "c_end")),
                 process_id="child")
    assert validate_bundle({"a.bpmn": caller, "b.bpmn": child}) == []


def test_group_checks_skip_expressions_and_lanes_that_route_nobody() -> None:
    tasks = ('<bpmn:laneSet id="ls"><bpmn:lane id="lane_a" name="Approvers"><bpmn:flowNodeRef>a</bpmn:flowNodeRef>'
             '<bpmn:flowNodeRef>b</bpmn:flowNodeRef></bpmn:lane></bpmn:laneSet>'
             '<bpmn:startEvent id="start" /><bpmn:userTask id="a" camunda:candidateGroups="${approval_group}" />'
             '<bpmn:userTask id="b" camunda:candidateUsers="${submitted_by}" /><bpmn:endEvent id="end" />'
             + flows(("f1", "start", "a"), ("f2", "a", "b"), ("f3", "b", "end")))
    assert validate_bundle({"p.bpmn": bpmn(tasks)}, known_groups=set()) == []
    routed = tasks.replace(' camunda:candidateUsers="${submitted_by}"', "")
    find(validate_bundle({"p.bpmn": bpmn(routed)}, known_groups=set()), "lane_a", "'Approvers' routes human tasks")
    assert validate_bundle({"p.bpmn": bpmn(routed)}, known_groups={"Approvers"}) == []
    assert validate_bundle({"p.bpmn": bpmn(routed)}) == []  # no groups given: not checked


# --------------------------------------------------------------------------- code that must compile
@pytest.mark.parametrize(("timer", "ok"), [
    pytest.param('"P2D"', True, id="python-string"),
    pytest.param("PT2M", True, id="bare-iso-duration"),
    pytest.param("R3/P1D", True, id="bare-iso-cycle"),
    pytest.param("2030-01-01T09:00:00Z", True, id="bare-iso-date"),
    pytest.param("timedelta(days=due_in", False, id="broken-python"),
])
def test_timer_expressions_compile_or_are_iso_8601(timer: str, ok: bool) -> None:
    body = (f'<bpmn:startEvent id="start" /><bpmn:intermediateCatchEvent id="wait"><bpmn:timerEventDefinition '
            f'id="wait_def"><bpmn:timeDuration xsi:type="bpmn:tFormalExpression">{timer}</bpmn:timeDuration>'
            '</bpmn:timerEventDefinition></bpmn:intermediateCatchEvent><bpmn:endEvent id="end" />'
            + flows(("f1", "start", "wait"), ("f2", "wait", "end")))
    problems = [p for p in validate_bundle({"t.bpmn": bpmn(body)}) if "timer" in p.message]
    assert (problems == []) is ok, problems
    if not ok:
        assert problems[0].element_id == "wait_def"


def test_service_parameters_and_camunda_expressions_must_compile() -> None:
    task = ('<bpmn:serviceTask id="svc"><bpmn:extensionElements><spiffworkflow:serviceTaskOperator id="op">'
            '<spiffworkflow:parameters><spiffworkflow:parameter id="amount" type="str" value="str(amount"/>'
            '</spiffworkflow:parameters></spiffworkflow:serviceTaskOperator></bpmn:extensionElements>'
            '</bpmn:serviceTask><bpmn:userTask id="u" camunda:candidateGroups="${groups[}" />')
    body = ('<bpmn:startEvent id="start" />' + task + '<bpmn:endEvent id="end" />'
            + flows(("f1", "start", "svc"), ("f2", "svc", "u"), ("f3", "u", "end")))
    problems = validate_bundle({"s.bpmn": bpmn(body)})
    find(problems, "amount", "service parameter 'amount' does not compile")
    find(problems, "u", "camunda:candidateGroups: cannot translate expression 'groups['")


def test_the_camunda_modeler_diagrams_the_engine_runs_are_valid() -> None:
    folder = ROOT / "tests" / "workflows" / "camunda"
    files = {p.name: p.read_bytes() for p in sorted(folder.glob("*")) if p.suffix in (".bpmn", ".dmn")}
    if not files:
        pytest.skip("no Camunda Modeler diagrams in tests/workflows/camunda")
    assert validate_bundle(files) == []


def test_camunda_style_conditions_compile_after_translation() -> None:
    body = ('<bpmn:startEvent id="start" /><bpmn:exclusiveGateway id="gw" default="f_no" />'
            '<bpmn:endEvent id="yes" /><bpmn:endEvent id="no" />' + flows(("f1", "start", "gw"), ("f_no", "gw", "no"))
            + '<bpmn:sequenceFlow id="f_yes" sourceRef="gw" targetRef="yes"><bpmn:conditionExpression>'
              '${amount &gt; 10 &amp;&amp; !(kind == "x") || approved == true}</bpmn:conditionExpression>'
              '</bpmn:sequenceFlow>')
    assert [p for p in validate_bundle({"c.bpmn": bpmn(body)}) if "compile" in p.message] == []


@pytest.mark.parametrize(("entry", "ok"), [
    pytest.param("-", True, id="any"),
    pytest.param("&lt; 10000", True, id="operator"),
    pytest.param("10000 &lt;= ? &lt; 100000", True, id="question-mark"),
    pytest.param('"a", "b"', True, id="literal-list"),
    pytest.param("[1000..5000]", True, id="feel-range"),
    pytest.param("in (1, 2", False, id="unbalanced"),
    pytest.param("&lt; &lt; 5", False, id="double-operator"),
])
def test_dmn_input_entries_follow_spiffworkflow_rules(entry: str, ok: bool) -> None:
    table = dmn([("r1", entry, "-", '"x"'), ("r2", "-", "-", '"y"')], hit_policy="FIRST")
    problems = [p for p in validate_bundle({"r.dmn": table, "p.bpmn": simple_process()}) if "compile" in p.message]
    assert (problems == []) is ok, problems
    if not ok:
        assert problems[0].element_id == "r1_0" and problems[0].file == "r.dmn"


def test_dmn_input_expressions_must_compile() -> None:
    table = dmn([("r1", "-", '"y"')], hit_policy="FIRST", inputs=("amount +",))
    find(validate_bundle({"r.dmn": table, "p.bpmn": simple_process()}), "ie_0", "DMN input expression")


# --------------------------------------------------------------------------- decision tables
def test_single_hit_tables_need_a_catch_all_rule_multi_hit_tables_do_not() -> None:
    rules = [("r1", "&lt; 10", '"a"', '"x"'), ("r2", "&gt;= 10", '"a"', '"y"')]
    for policy in ("FIRST", "UNIQUE", "PRIORITY"):
        find(validate_bundle({"r.dmn": dmn(rules, policy)}), "routing", "no catch-all rule")
    assert not [p for p in validate_bundle({"r.dmn": dmn(rules, "COLLECT")}) if "catch-all" in p.message]
    with_default = [*rules, ("r3", "-", "-", '"z"')]
    assert not [p for p in validate_bundle({"r.dmn": dmn(with_default, "FIRST")}) if "catch-all" in p.message]


@pytest.mark.parametrize(("first", "second", "overlap"), [
    pytest.param(("&lt; 10", '"a"'), ("&lt; 10", '"a"'), True, id="identical"),
    pytest.param(("&lt; 10", '"a","b"'), ("5", '"b"'), True, id="literal-and-point-inside"),
    pytest.param(("[0..10]", '"a"'), ("&gt;= 10", '"a"'), True, id="closed-interval-touches"),
    pytest.param(("0 &lt;= ? &lt; 10", '"a"'), ("&gt;= 10", '"a"'), False, id="half-open-intervals-disjoint"),
    pytest.param(("&lt; 10", '"a"'), ("&lt; 10", '"b"'), False, id="different-literals"),
    pytest.param(("&lt; 10", "-"), ("&lt; 5", '"b"'), True, id="any-column"),
    pytest.param(("x.startswith(1)", '"a"'), ("&lt; 5", '"a"'), False, id="unknown-is-never-claimed"),
])
def test_unique_tables_report_only_provable_overlaps(first: tuple[str, str], second: tuple[str, str],
                                                      overlap: bool) -> None:
    table = dmn([("r1", *first, '"x"'), ("r2", *second, '"y"'), ("r_default", "-", "-", '"z"')])
    overlaps = [p for p in validate_bundle({"r.dmn": table}) if "both match" in p.message]
    assert bool(overlaps) is overlap, overlaps
    if overlap:
        assert [(p.element_id, p.file) for p in overlaps] == [("r2", "r.dmn")]


def test_a_catch_all_before_other_rules_of_a_unique_table_hides_them() -> None:
    table = dmn([("r_any", "-", "-", '"z"'), ("r1", "&lt; 10", '"a"', '"x"')])
    find(validate_bundle({"r.dmn": table}), "r1", "rules 'r_any' and 'r1' both match")


def test_the_repository_routing_table_collects_levels_and_needs_no_catch_all() -> None:
    table = (ROOT / "dmn" / "approval_routing.dmn").read_bytes()
    assert table.count(b'hitPolicy="COLLECT"') == 1
    problems = validate_bundle({"approval_routing.dmn": table})
    assert [p for p in problems if "catch-all" in p.message or "both match" in p.message] == []
    # No match must give no chain (the submission is refused), so the table has no catch-all on purpose:
    # the very same rules under a single-hit policy are reported.
    single_hit = validate_bundle({"approval_routing.dmn": table.replace(b'hitPolicy="COLLECT"', b'hitPolicy="FIRST"')})
    find(single_hit, "approval_routing", "the FIRST decision table has no catch-all rule")


# --------------------------------------------------------------------------- loops
def test_loops_and_merges_straight_into_a_task_are_refused_but_not_through_a_gateway() -> None:
    loop = ('<bpmn:startEvent id="start" /><bpmn:userTask id="work" /><bpmn:exclusiveGateway id="again" '
            'default="f_done" /><bpmn:endEvent id="end" />'
            + flows(("f1", "start", "work"), ("f2", "work", "again"), ("f_done", "again", "end"))
            + '<bpmn:sequenceFlow id="f_back" sourceRef="again" targetRef="work"><bpmn:conditionExpression>'
              'redo</bpmn:conditionExpression></bpmn:sequenceFlow>')
    problem = find(validate_bundle({"l.bpmn": bpmn(loop)}), "work", "loop re-enters this task")
    assert "'f1'" in problem.message and "'f_back'" in problem.message

    merged = loop.replace('<bpmn:userTask id="work" />', '<bpmn:exclusiveGateway id="merge" /><bpmn:userTask '
                          'id="work" />').replace('targetRef="work"', 'targetRef="merge"')
    merged += flows(("f_merge", "merge", "work"))
    assert [p for p in validate_bundle({"l.bpmn": bpmn(merged)}) if "gateway" in p.message] == []

    fork = ('<bpmn:startEvent id="start" /><bpmn:parallelGateway id="split" /><bpmn:task id="a" />'
            '<bpmn:task id="b" /><bpmn:userTask id="join_here" /><bpmn:endEvent id="end" />'
            + flows(("f1", "start", "split"), ("f2", "split", "a"), ("f3", "split", "b"), ("f4", "a", "join_here"),
                    ("f5", "b", "join_here"), ("f6", "join_here", "end")))
    find(validate_bundle({"m.bpmn": bpmn(fork)}), "join_here", "merge into this task without a gateway")


# --------------------------------------------------------------------------- SpiffWorkflow's own checks
def test_what_only_spiffworkflow_refuses_is_reported_too() -> None:
    body = ('<bpmn:startEvent id="start" /><bpmn:complexGateway id="cg" /><bpmn:endEvent id="end" />'
            + flows(("f1", "start", "cg"), ("f2", "cg", "end")))
    problems = validate_bundle({"g.bpmn": bpmn(body)})
    assert any(p.file == "g.bpmn" and p.element_id == "cg" for p in problems), problems
