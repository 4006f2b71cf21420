"""Diagrams saved by Camunda Modeler: they deploy, run to completion on the right path, and what we
cannot run faithfully is refused at deployment with the element id and the reason.

The diagrams are hand-written in Camunda Modeler's format under camunda/, each path as a scenario
under camunda/scenarios/ (run by the same runner as `milestones test-diagrams`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from workflows import Deployment, DeploymentError, Instance, Problem, ServiceCall, scenarios
from workflows.camunda import (
    Unsupported,
    expression_to_python,
    feel_input_entry_to_python,
    template_to_python,
)
from workflows.engine import decide

CAMUNDA = Path(__file__).resolve().parent / "camunda"
SCENARIO_FILES = sorted((CAMUNDA / "scenarios").glob("*.json"))
PROCESSES = {
    "purchase_approval",
    "invoice_reminder",
    "scheduled_payment",
    "board_vote",
    "expense_claim",
    "supplier_onboarding",
    "parallel_notification",
    "order_fulfilment",
    "pack_order_process",
}


@pytest.fixture(scope="module")
def bundle() -> Deployment:
    return Deployment.from_directories(CAMUNDA)


def files(*names: str) -> dict[str, bytes]:
    return {name: (CAMUNDA / name).read_bytes() for name in names}


# --------------------------------------------------------------------------- they run
@pytest.mark.parametrize("path", SCENARIO_FILES, ids=[p.stem for p in SCENARIO_FILES])
def test_camunda_scenario(path: Path) -> None:
    result = scenarios.run(path)
    assert result.passed, result.line()


def test_at_least_seven_camunda_processes_run_to_completion() -> None:
    completed = set()
    for path in SCENARIO_FILES:
        scenario = scenarios.load(path)
        if "process" in scenario and scenario["expect"].get("completed") and scenarios.run(path).passed:
            completed.add(scenario["process"])
    assert len(completed) >= 7, sorted(completed)
    assert completed == PROCESSES - {"pack_order_process"}  # the called process runs inside order_fulfilment


def test_the_whole_folder_deploys_as_one_bundle_and_the_uploaded_bytes_stay_untouched(
    bundle: Deployment,
) -> None:
    assert set(bundle.executable) == PROCESSES
    assert bundle.decision_ids == [
        "approver_group",
        "needs_legal_review",
        "required_documents",
        "risk_level",
        "supplier_tier",
    ]
    for name, content in bundle.files.items():
        assert content == (CAMUNDA / name).read_bytes()
    assert b"camunda:decisionRef" in bundle.files["purchase_approval.bpmn"]
    assert b"spiffworkflow" not in bundle.files["purchase_approval.bpmn"]
    assert b"[1000..5000]" in bundle.files["purchase_decisions.dmn"]


def test_a_dmn_file_with_several_decisions_loads_every_one_with_feel_entries(bundle: Deployment) -> None:
    assert {d for d, f in bundle.decision_files.items() if f == "purchase_decisions.dmn"} == {
        "approver_group",
        "risk_level",
        "needs_legal_review",
    }
    risk = [
        decide(bundle, "risk_level", {"amount": Decimal(a), "category": c})
        for a, c in [
            ("1000", "office"),
            ("1000.01", "office"),
            ("20000", "equipment"),
            ("20000.01", "equipment"),
        ]
    ]
    assert risk == [
        {"risk_level": "low"},
        {"risk_level": "medium"},
        {"risk_level": "low"},
        {"risk_level": "high"},
    ]
    legal = [
        decide(bundle, "needs_legal_review", {"has_contract": h, "vendor": {"country": c}})
        for h, c in [(True, "DE"), (False, "US"), (False, "AT")]
    ]
    assert legal == [{"legal_review": True}, {"legal_review": True}, {"legal_review": False}]
    assert decide(bundle, "supplier_tier", {"yearly_volume": 100000}) == {
        "tier": "preferred",
        "credit_limit": 50000,
    }


def test_a_service_task_named_like_its_topic_calls_that_operation() -> None:
    # SpiffWorkflow indexes operator ids with task ids: "release_funds" used to replace the task node
    deployment = Deployment.from_files(files("purchase_approval.bpmn", "purchase_decisions.dmn"))
    calls: list[ServiceCall] = []
    instance = Instance.start(
        deployment,
        "purchase_approval",
        {"amount": Decimal("20000"), "category": "travel"},
        lambda call: calls.append(call) or {"payment_id": "p"},
    )
    [review] = instance.ready_human_tasks()
    assert review.candidate_groups == ("finance",)
    assert review.form_key == "embedded:app:forms/review.html"
    instance.complete(review.id, {"approved": True})
    assert [(c.operation, c.bpmn_id, c.params) for c in calls] == [
        ("release_funds", "release_funds", {"amount": Decimal("20000"), "currency": "EUR", "risk": "medium"})
    ]
    assert instance.data()["release_funds_result"] == {"payment_id": "p"}


def test_bare_iso_timers_are_scheduled_like_quoted_ones() -> None:
    reminders = Deployment.from_files(files("invoice_reminder.bpmn"))
    before = datetime.now(UTC)
    instance = Instance.start(
        reminders, "invoice_reminder", {"invoice_no": "1", "requested_by": "x", "due": "P5D"}, lambda call: {}
    )
    due = instance.next_timer_due()
    assert due is not None and before + timedelta(minutes=2) - timedelta(seconds=1) <= due
    assert due <= datetime.now(UTC) + timedelta(minutes=2)
    [task] = instance.ready_human_tasks()
    assert task.candidate_groups == ("finance", "accounting")
    assert task.due_at == task.ready_at + timedelta(days=5)
    instance.fire_timer("reminder_timer")
    cycle_due = instance.next_timer_due()  # only the R3/P1D escalation is left
    assert cycle_due is not None and timedelta(hours=23) < cycle_due - datetime.now(UTC) <= timedelta(days=1)

    payments = Deployment.from_files(files("scheduled_payment.bpmn"))
    waiting = Instance.start(payments, "scheduled_payment", {"clearing_delay": "PT1H"}, lambda call: {})
    assert waiting.next_timer_due() == datetime(2099, 12, 1, 10, 0, tzinfo=UTC)
    assert waiting.visited() == ["payment_planned"]


# --------------------------------------------------------------------------- translations
@pytest.mark.parametrize(
    ("juel", "python"),
    [
        ('amount > 1000 && type == "financial"', 'amount > 1000 and type == "financial"'),
        ("!approved || vip", "not approved or vip"),
        ("total gt 500 and not empty items", "total > 500 and not not items"),
        ("a eq 1 or b ne 2 or c le 3 or d ge 4 or e lt 5", "a == 1 or b != 2 or c <= 3 or d >= 4 or e < 5"),
        ("x div 2 mod 3", "x / 2 % 3"),
        ("flag == true && other != null", "flag == True and other != None"),
        ("order.customer.tier", 'order ["customer"] ["tier"]'),
        ('total > 500 ? "manager" : "auto"', '(("manager") if (total > 500) else ("auto"))'),
    ],
)
def test_juel_expressions_become_python(juel: str, python: str) -> None:
    assert expression_to_python(juel) == python


def test_templates_mix_text_and_expressions() -> None:
    assert template_to_python("${approval_group}") == "approval_group"
    assert template_to_python("procurement-${region}") == "'procurement-' + str(region)"
    assert template_to_python("finance,legal") is None
    assert template_to_python('#{x == "}"}') == 'x == "}"'


@pytest.mark.parametrize(
    "juel", ['execution.getVariable("amount") > 1', "name.startsWith('a')", "task.assignee", "a instanceof b"]
)
def test_what_cannot_be_translated_is_unsupported(juel: str) -> None:
    with pytest.raises(Unsupported):
        expression_to_python(juel)


@pytest.mark.parametrize(
    ("feel", "python"),
    [
        ("< 1000", None),  # SpiffWorkflow reads it as it is
        ('"financial"', None),
        ("-", None),
        ("10000 <= ? < 100000", None),
        ("[1000..5000]", "1000 <= ? <= 5000"),
        ("]1000..5000[", "1000 < ? < 5000"),
        ("(1000..5000]", "1000 < ? <= 5000"),
        ('"a","b"', '(? == "a") or (? == "b")'),
        ('not("x")', 'not (? == "x")'),
        ('not("DE","AT")', 'not ((? == "DE") or (? == "AT"))'),
        ("< 10, > 20", "(? < 10) or (? > 20)"),
        ("true", "? == True"),
        ("null", "? is None"),
    ],
)
def test_feel_input_entries_become_python(feel: str, python: str | None) -> None:
    assert feel_input_entry_to_python(feel) == python


# --------------------------------------------------------------------------- refusals
CAMUNDA_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
  xmlns:camunda="http://camunda.org/schema/1.0/bpmn" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  id="Definitions_refused" targetNamespace="http://bpmn.io/schema/bpmn" exporter="Camunda Modeler">
  <bpmn:process id="refused" isExecutable="true">
    <bpmn:startEvent id="start"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="work" />
"""
CAMUNDA_TAIL = """
    <bpmn:sequenceFlow id="f2" sourceRef="work" targetRef="end" />
    <bpmn:endEvent id="end"><bpmn:incoming>f2</bpmn:incoming></bpmn:endEvent>
  </bpmn:process>
</bpmn:definitions>
"""
IO = "<bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing>"
REFUSALS = [
    pytest.param(
        f'<bpmn:serviceTask id="work" camunda:class="com.acme.ReleaseFunds">{IO}</bpmn:serviceTask>',
        "work",
        "Java delegates (camunda:class)",
        id="java-class",
    ),
    pytest.param(
        f'<bpmn:serviceTask id="work" camunda:delegateExpression="${{releaseFunds}}">{IO}</bpmn:serviceTask>',
        "work",
        "camunda:delegateExpression",
        id="delegate-expression",
    ),
    pytest.param(
        f'<bpmn:serviceTask id="work" camunda:expression="${{bean.pay()}}">{IO}</bpmn:serviceTask>',
        "work",
        "camunda:expression",
        id="java-expression",
    ),
    pytest.param(
        f'<bpmn:serviceTask id="work"><bpmn:extensionElements><camunda:connector>'
        f"<camunda:connectorId>http-connector</camunda:connectorId></camunda:connector>"
        f"</bpmn:extensionElements>{IO}</bpmn:serviceTask>",
        "work",
        "connectors",
        id="connector",
    ),
    pytest.param(
        f'<bpmn:scriptTask id="work" scriptFormat="javascript">{IO}<bpmn:script>var a = 1;</bpmn:script>'
        f"</bpmn:scriptTask>",
        "work",
        "javascript scripts are not supported",
        id="javascript",
    ),
    pytest.param(
        f'<bpmn:scriptTask id="work" scriptFormat="groovy" camunda:resource="deployment://a.groovy">{IO}'
        f"</bpmn:scriptTask>",
        "work",
        "groovy scripts are not supported",
        id="groovy-resource",
    ),
    pytest.param(
        f'<bpmn:userTask id="work"><bpmn:extensionElements><camunda:taskListener event="create" '
        f'class="com.acme.Listener" /></bpmn:extensionElements>{IO}</bpmn:userTask>',
        "work",
        "camunda:taskListener",
        id="task-listener",
    ),
    pytest.param(
        f'<bpmn:userTask id="work"><bpmn:extensionElements><camunda:inputOutput><camunda:inputParameter '
        f'name="x">1</camunda:inputParameter></camunda:inputOutput></bpmn:extensionElements>{IO}'
        f"</bpmn:userTask>",
        "work",
        "inputOutput mappings",
        id="user-task-io",
    ),
    pytest.param(
        f'<bpmn:serviceTask id="work" camunda:type="external" camunda:topic="pay">'
        f'<bpmn:extensionElements><camunda:inputOutput><camunda:outputParameter name="id">${{paymentId}}'
        f"</camunda:outputParameter></camunda:inputOutput></bpmn:extensionElements>{IO}</bpmn:serviceTask>",
        "work",
        "outputParameter",
        id="output-parameter",
    ),
    pytest.param(
        f'<bpmn:serviceTask id="work">{IO}</bpmn:serviceTask>',
        "work",
        'camunda:type="external"',
        id="service-without-implementation",
    ),
    pytest.param(
        f'<bpmn:task id="work" camunda:someFutureAttribute="1">{IO}</bpmn:task>',
        "work",
        "camunda:someFutureAttribute is not supported",
        id="unknown-attribute",
    ),
    pytest.param(
        f'<bpmn:task id="work">{IO}</bpmn:task><bpmn:dataStoreReference id="ledger" />',
        "ledger",
        "data stores",
        id="data-store",
    ),
    pytest.param(
        f'<bpmn:task id="work">{IO}</bpmn:task>'.replace(
            'id="work">',
            'id="work"><bpmn:extensionElements>'
            '<camunda:executionListener event="start" expression="${log}" /></bpmn:extensionElements>',
        ),
        "work",
        "camunda:executionListener",
        id="execution-listener",
    ),
]


@pytest.mark.parametrize(("body", "element", "reason"), REFUSALS)
def test_unsupported_camunda_constructs_are_refused_at_deployment(
    body: str, element: str, reason: str
) -> None:
    with pytest.raises(DeploymentError) as info:
        Deployment.from_files({"refused.bpmn": (CAMUNDA_HEAD + body + CAMUNDA_TAIL).encode()})
    matching = [p for p in info.value.problems if p.element_id == element and reason in p.message]
    assert matching, info.value.problems
    assert all(p.file == "refused.bpmn" and p.line is not None for p in matching)


def refused_gateway(condition: str, language: str = "") -> list[Problem]:
    attr = f' language="{language}"' if language else ""
    body = f"""<bpmn:exclusiveGateway id="work" default="f2">
      <bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing><bpmn:outgoing>f3</bpmn:outgoing>
    </bpmn:exclusiveGateway>
    <bpmn:sequenceFlow id="f3" sourceRef="work" targetRef="end">
      <bpmn:conditionExpression xsi:type="bpmn:tFormalExpression"{attr}>{condition}</bpmn:conditionExpression>
    </bpmn:sequenceFlow>"""
    with pytest.raises(DeploymentError) as info:
        Deployment.from_files({"refused.bpmn": (CAMUNDA_HEAD + body + CAMUNDA_TAIL).encode()})
    return info.value.problems


def test_conditions_in_other_languages_or_on_camunda_objects_are_refused() -> None:
    [js] = refused_gateway("amount &gt; 5", language="javascript")
    assert js.element_id == "f3" and "javascript expressions are not supported" in js.message
    [context] = refused_gateway('${execution.getVariable("amount") &gt; 5}')
    assert context.element_id == "f3" and "'execution' object is not available" in context.message
    [unsafe] = refused_gateway("amount.__class__ is None")  # a Python condition in a Camunda diagram
    assert unsafe.element_id == "f3" and "not allowed" in unsafe.message


DMN_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="https://www.omg.org/spec/DMN/20191111/MODEL/" id="refused_dmn" name="Refused"
  namespace="http://camunda.org/schema/1.0/dmn">
"""
TABLE = """<decisionTable id="table_{id}" hitPolicy="{policy}"{extra}>
      <input id="in_{id}">
        <inputExpression id="ie_{id}" typeRef="number"><text>amount</text></inputExpression>
      </input>
      <output id="out_{id}" name="result_{id}" typeRef="number" />
      <rule id="rule_{id}"><inputEntry id="e_{id}"><text>-</text></inputEntry>
        <outputEntry id="o_{id}"><text>1</text></outputEntry></rule>
    </decisionTable>"""


def test_unsupported_dmn_constructs_are_refused_with_the_decision_element() -> None:
    dmn = (
        DMN_HEAD
        + f"""
  <decision id="needs_other" name="Needs other">
    <informationRequirement id="req"><requiredDecision href="#plain" /></informationRequirement>
    {TABLE.format(id="a", policy="FIRST", extra="")}
  </decision>
  <decision id="literal" name="Literal">
    <literalExpression id="lit"><text>1</text></literalExpression>
  </decision>
  <decision id="summed" name="Summed">
    {TABLE.format(id="b", policy="COLLECT", extra=' aggregation="SUM"')}
  </decision>
  <decision id="prioritised" name="Prioritised">{TABLE.format(id="c", policy="PRIORITY", extra="")}</decision>
  <decision id="plain" name="Plain">{TABLE.format(id="d", policy="UNIQUE", extra="")}</decision>
</definitions>
"""
    )
    with pytest.raises(DeploymentError) as info:
        Deployment.from_files({"refused.dmn": dmn.encode()})
    found = {(p.element_id, p.message.split(":")[0]) for p in info.value.problems}
    assert {element for element, _ in found} == {"req", "lit", "table_b", "table_c"}
    assert all(p.file == "refused.dmn" for p in info.value.problems)
