"""Contained scripts and expressions: refused at deployment (file, element, line) and at run time.

Diagram code runs under `workflows.sandbox`: an AST allow-list, guarded operators and, for code
that loops, a sandbox process with a time and a memory limit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from workflows import Deployment, DeploymentError, ExecutionError, Instance, Problem, sandbox

HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
                  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
                  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core"
                  id="sandbox_definitions" targetNamespace="http://bpmn.io/schema/bpmn">
  <bpmn:process id="scripted" isExecutable="true">
    <bpmn:startEvent id="start"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
"""
TAIL = """
    <bpmn:endEvent id="end"><bpmn:incoming>f2</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="compute" />
    <bpmn:sequenceFlow id="f2" sourceRef="compute" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>
"""


def script_bpmn(script: str) -> bytes:
    escaped = script.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        HEAD + '    <bpmn:scriptTask id="compute" name="Compute" scriptFormat="python">\n'
        "      <bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing>\n"
        f"      <bpmn:script>{escaped}</bpmn:script>\n    </bpmn:scriptTask>" + TAIL
    ).encode()


def condition_bpmn(condition: str) -> bytes:
    escaped = condition.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        HEAD
        + """    <bpmn:exclusiveGateway id="compute" default="f3">
      <bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing><bpmn:outgoing>f3</bpmn:outgoing>
    </bpmn:exclusiveGateway>
    <bpmn:endEvent id="other"><bpmn:incoming>f3</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f3" sourceRef="compute" targetRef="other" />"""
        + TAIL.replace(
            '<bpmn:sequenceFlow id="f2" sourceRef="compute" targetRef="end" />',
            '<bpmn:sequenceFlow id="f2" sourceRef="compute" targetRef="end">\n'
            '      <bpmn:conditionExpression xsi:type="bpmn:tFormalExpression">'
            f"{escaped}</bpmn:conditionExpression>\n"
            "    </bpmn:sequenceFlow>",
        )
    ).encode()


def refused(files: dict[str, bytes]) -> list[Problem]:
    with pytest.raises(DeploymentError) as info:
        Deployment.from_files(files)
    return info.value.problems


@pytest.fixture()
def short_limits() -> Iterator[sandbox.Limits]:
    previous = sandbox.configure(time_seconds=0.5, memory_bytes=64 * 1024 * 1024)
    yield sandbox.limits()
    sandbox.configure(time_seconds=previous.time_seconds, memory_bytes=previous.memory_bytes)


# --------------------------------------------------------------------------- refused at deployment
SCRIPT_FIRST_LINE = 10  # of the <bpmn:script> text in script_bpmn()
ESCAPES = [  # (script, why, line inside the script)
    pytest.param("x = ().__class__.__base__.__subclasses__()", "__class__", 1, id="subclasses-escape"),
    pytest.param("a = 1\nimport os", "import", 2, id="import"),
    pytest.param("from os import system", "import", 1, id="import-from"),
    pytest.param("x = __import__('os')", "__import__", 1, id="dunder-import"),
    pytest.param("x = __builtins__", "__builtins__", 1, id="builtins-name"),
    pytest.param("g = (i for i in [1])\nf = g.gi_frame.f_back", "gi_frame", 2, id="generator-frame"),
    pytest.param("f = lambda b=().__class__: b", "default argument", 1, id="lambda-default"),
    pytest.param("def f(a=[]):\n    return a", "default argument", 1, id="def-default"),
    pytest.param("global total\ntotal = 1", "global", 1, id="global"),
    pytest.param("class A:\n    pass", "class", 1, id="class"),
    pytest.param("with open('x') as f:\n    pass", "with", 1, id="with"),
    pytest.param("try:\n    x = 1\nexcept:\n    pass", "bare except", 3, id="bare-except"),
    pytest.param(
        "try:\n    x = 1\nexcept BaseException:\n    pass", "except may only", 3, id="base-exception"
    ),
    pytest.param("x = 10 ** 10 ** 10", "size limit", 1, id="huge-power-constant"),
    pytest.param("x = 1\ny = 'a' * 10 ** 9", "size limit", 2, id="huge-repetition-constant"),
    pytest.param("x = [0] * (1 << 40)", "size limit", 1, id="huge-list-constant"),
    pytest.param("x = 0\nwhile True:\n    x += 1", "never ends", 2, id="while-true-without-break"),
    pytest.param("x = f'{1:>999999999}'", "format width", 1, id="huge-fstring-width"),
]


@pytest.mark.parametrize(("script", "reason", "line"), ESCAPES)
def test_unsafe_scripts_are_refused_at_deployment_with_file_element_and_line(
    script: str, reason: str, line: int
) -> None:
    [problem] = refused({"scripted.bpmn": script_bpmn(script)})
    assert problem.file == "scripted.bpmn"
    assert problem.element_id == "compute"
    assert reason in problem.message
    assert problem.line == SCRIPT_FIRST_LINE + line - 1


def test_every_problem_is_reported_at_once_with_its_own_line() -> None:
    problems = refused({"scripted.bpmn": script_bpmn("a = 1\nimport os\nb = ().__class__\nc = 2")})
    assert [(p.element_id, p.line) for p in problems] == [
        ("compute", SCRIPT_FIRST_LINE + 1),
        ("compute", SCRIPT_FIRST_LINE + 2),
    ]


@pytest.mark.parametrize(
    "condition",
    [
        "().__class__.__base__.__subclasses__()",
        "amount > 1 and __import__('os')",
        "'{0.__class__}'.format(amount)",  # only caught at run time: see below
    ],
)
def test_unsafe_conditions_are_refused(condition: str) -> None:
    files = {"gateway.bpmn": condition_bpmn(condition)}
    if "format" in condition:
        deployment = Deployment.from_files(files)  # the format string is data, not syntax
        with pytest.raises(ExecutionError) as info:
            Instance.start(deployment, "scripted", {"amount": 1})
        assert info.value.element_id == "compute"
        assert isinstance(info.value.cause, sandbox.UnsafeCode)
        return
    [problem] = refused(files)
    assert problem.element_id == "f2"
    assert "conditionExpression" in problem.message and "not allowed" in problem.message


def test_dmn_cells_are_checked_as_the_engine_will_run_them() -> None:
    dmn = b"""<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="https://www.omg.org/spec/DMN/20191111/MODEL/" id="d" name="d" namespace="x">
  <decision id="routing" name="Routing">
    <decisionTable id="t" hitPolicy="FIRST">
      <input id="i1"><inputExpression id="ie1" typeRef="number"><text>amount</text></inputExpression></input>
      <output id="o1" name="group" typeRef="string" />
      <rule id="r1">
        <inputEntry id="r1i"><text>&lt; ().__class__.__base__</text></inputEntry>
        <outputEntry id="r1o"><text>"a"</text></outputEntry>
      </rule>
      <rule id="r2">
        <inputEntry id="r2i"><text>-</text></inputEntry>
        <outputEntry id="r2o"><text>"x" * 10 ** 9</text></outputEntry>
      </rule>
    </decisionTable>
  </decision>
</definitions>
"""
    problems = refused({"routing.dmn": dmn})
    assert [(p.file, p.element_id) for p in problems] == [("routing.dmn", "r1i"), ("routing.dmn", "r2o")]
    assert "__class__" in problems[0].message and "size limit" in problems[1].message


# --------------------------------------------------------------------------- refused at run time
@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("().__class__.__base__.__subclasses__()", sandbox.UnsafeCode),
        ("open('/etc/passwd').read()", NameError),
        ("eval('1')", NameError),
        ("getattr(amount, 'as_integer_ratio')", NameError),
        ("str.format('{0.__class__}', 1)", sandbox.UnsafeCode),
        ("'x' * n", sandbox.LimitExceeded),
        ("'x'.ljust(n)", sandbox.LimitExceeded),
        ("2 ** n", sandbox.LimitExceeded),
        ("list(range(n))", sandbox.LimitExceeded),
        ("'%*d' % (n, 1)", sandbox.LimitExceeded),
        ("','.join(['abc'] * 900000)", sandbox.LimitExceeded),
        ("int(Decimal('1e999999'))", sandbox.LimitExceeded),
        ("f\"{Decimal('1e999999999'):f}\"", sandbox.LimitExceeded),
        ("'{:f}'.format(Decimal('1e999999999'))", sandbox.LimitExceeded),
        ("round(Decimal('1e999999999'))", sandbox.LimitExceeded),
    ],
)
def test_the_run_time_refuses_what_validation_would(source: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        sandbox.evaluate(source, {"n": 10**9, "amount": Decimal("1")})


def test_a_spec_changed_after_deployment_is_still_checked_when_it_runs() -> None:
    deployment = Deployment.from_files({"scripted.bpmn": script_bpmn("total = 1")})
    spec, _subprocesses = deployment.spec("scripted")
    spec.task_specs["compute"].script = "import os\ntotal = os.getpid()"  # as if validation had been skipped
    with pytest.raises(ExecutionError) as info:
        Instance.start(deployment, "scripted", {})
    assert info.value.element_id == "compute"
    assert isinstance(info.value.cause, sandbox.UnsafeCode)
    assert "import is not allowed" in str(info.value)


def test_a_data_key_named_builtins_cannot_replace_the_allow_list() -> None:
    with pytest.raises(NameError):
        sandbox.evaluate("open", {"__builtins__": {"open": open}})
    assert sandbox.evaluate("len(x)", {"__builtins__": {"len": lambda _: 99}, "x": [1, 2]}) == 2


# --------------------------------------------------------------------------- what scripts can do
def test_scripts_keep_their_variables_and_drop_functions() -> None:
    data: dict[str, Any] = {"items": [Decimal("1.50"), Decimal("2")], "round": 3}
    sandbox.execute(
        "total = sum(items)\nnext_round = round + 1\nlargest = max(items)\ndef helper(x):\n    return x\n",
        data,
    )
    assert data == {
        "items": [Decimal("1.50"), Decimal("2")],
        "round": 3,
        "total": Decimal("3.50"),
        "next_round": 4,
        "largest": Decimal("2"),
    }


def test_helpers_and_dates_are_available() -> None:
    value = sandbox.evaluate("(date(2026, 1, 31) + timedelta(days=1)).isoformat()", {})
    assert value == "2026-02-01"
    assert sandbox.evaluate("sorted(set(x))[:2] + [abs(-1), round(Decimal('2.5'))]", {"x": [3, 1, 2, 1]}) == [
        1,
        2,
        1,
        2,
    ]
    assert sandbox.evaluate("isinstance(today(), date) and now().tzinfo is not None", {}) is True


def test_code_that_loops_runs_in_the_sandbox_process_and_gives_the_same_result() -> None:
    data: dict[str, Any] = {"items": [{"amount": Decimal("2.5")}, {"amount": Decimal("4")}]}
    sandbox.execute("total = Decimal(0)\nfor item in items:\n    total += item['amount']", data)
    assert data["total"] == Decimal("6.5")
    assert sandbox.compile_checked("total = 0\nfor i in x:\n    total += i", "exec").isolated
    assert not sandbox.compile_checked("amount < 10000 and kind == 'financial'", "eval").isolated
    assert sandbox.evaluate("any(i > 3 for i in x)", {"x": [1, 5]}) is True


def test_a_script_error_names_its_line_even_from_the_sandbox_process() -> None:
    with pytest.raises(KeyError) as info:
        sandbox.execute("total = 0\nfor i in x:\n    total += lookup[i]", {"x": [1], "lookup": {}})
    assert sandbox.script_line(info.value) == 3


# --------------------------------------------------------------------------- limits
def test_an_endless_loop_is_stopped_and_the_instance_gets_an_execution_error(
    short_limits: sandbox.Limits,
) -> None:
    deployment = Deployment.from_files({"scripted.bpmn": script_bpmn("n = 0\nwhile n >= 0:\n    n += 1")})
    started = time.monotonic()
    with pytest.raises(ExecutionError) as info:
        Instance.start(deployment, "scripted", {})
    elapsed = time.monotonic() - started
    assert info.value.element_id == "compute"
    assert info.value.file == "scripted.bpmn"
    assert isinstance(info.value.cause, sandbox.LimitExceeded) and info.value.cause.kind == "time"
    assert "time limit" in str(info.value)
    assert short_limits.time_seconds <= elapsed < short_limits.time_seconds + 3
    # the killed sandbox process is replaced: the next script runs normally
    ok = Deployment.from_files({"scripted.bpmn": script_bpmn("n = 0\nfor i in range(3):\n    n += i")})
    assert Instance.start(ok, "scripted", {}).data()["n"] == 3


def test_unbounded_allocation_is_stopped_by_the_memory_limit(short_limits: sandbox.Limits) -> None:
    script = "chunks = []\nwhile len(chunks) >= 0:\n    chunks.append('x' * 1000000)"
    deployment = Deployment.from_files({"scripted.bpmn": script_bpmn(script)})
    with pytest.raises(ExecutionError) as info:
        Instance.start(deployment, "scripted", {})
    assert info.value.element_id == "compute"
    assert isinstance(info.value.cause, sandbox.LimitExceeded) and info.value.cause.kind == "memory"
    assert "memory limit" in str(info.value)


def test_a_single_huge_allocation_from_data_is_refused_in_process() -> None:
    deployment = Deployment.from_files({"scripted.bpmn": script_bpmn("padding = 'x' * size")})
    with pytest.raises(ExecutionError) as info:
        Instance.start(deployment, "scripted", {"size": 10**10})
    assert info.value.element_id == "compute"
    assert isinstance(info.value.cause, sandbox.LimitExceeded) and info.value.cause.kind == "size"
