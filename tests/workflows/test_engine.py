"""The `workflows` engine package in memory: no Flask, no database, no SpiffWorkflow import here.

The repository's own bpmn/ + dmn/ bundle is driven through every route; small inline diagrams
(no BPMNDI, but valid against the BPMN XSD that `Deployment` validates with) cover errors,
lanes and timers.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from workflows import (
    SERIALIZER_VERSION,
    Deployment,
    DeploymentError,
    ExecutionError,
    HumanTask,
    Instance,
    Problem,
    ServiceCall,
    StateError,
    TaskNotFound,
    TaskNotReady,
    WorkflowError,
)

ROOT = Path(__file__).resolve().parents[2]
BPMN_DIR = ROOT / "bpmn"
DMN_DIR = ROOT / "dmn"
PROCESS = "milestone_approval"
EPOCH = datetime.fromtimestamp(0, UTC)
BPMN_FILE = "milestone_approval.bpmn"
DMN_FILE = "approval_routing.dmn"


# --------------------------------------------------------------------------- helpers
def repo_files() -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in sorted(BPMN_DIR.glob("*.bpmn"))}
    files.update({p.name: p.read_bytes() for p in sorted(DMN_DIR.glob("*.dmn"))})
    return files


@pytest.fixture(scope="module")
def deployment() -> Deployment:
    return Deployment.from_directories(BPMN_DIR, DMN_DIR)


@dataclass
class Services:
    """Records every service call the engine makes and answers like the application would.

    `open_approval_level` opens the next level of the chain the routing table wrote (the COLLECT
    outputs level, approval_group, quorum and on_decline are lists, one item per level) with
    `seats[i]` seats at the i-th level (the last entry repeats); `close_approval_level` closes it
    with the level_outcome of the seat that completed it and names the chain's next level, if any.
    """

    calls: list[ServiceCall] = field(default_factory=list)
    fail_on: str | None = None
    error: BaseException | None = None
    seats: tuple[int, ...] = (1,)

    def __call__(self, call: ServiceCall) -> Any:
        self.calls.append(call)
        if call.operation == self.fail_on:
            assert self.error is not None
            raise self.error
        if call.operation == "open_approval_level":
            return self._open_level(call)
        if call.operation == "close_approval_level":
            return self._close_level(call)
        return {"ok": True, "operation": call.operation}

    def _open_level(self, call: ServiceCall) -> dict[str, Any]:
        i = self.operations.count("open_approval_level") - 1
        seats = self.seats[min(i, len(self.seats) - 1)]
        quorum = call.data["quorum"][i]
        return {"level": call.data["level"][i], "group": call.data["approval_group"][i], "quorum": quorum,
                "required": 1 if quorum == "any" else seats, "seats": seats, "eligible": seats,
                "on_decline": call.data["on_decline"][i]}

    def _close_level(self, call: ServiceCall) -> dict[str, Any]:
        i = self.operations.count("close_approval_level") - 1
        levels = call.data["level"]
        outcome = call.data["level_outcome"]
        return {"level": levels[i], "outcome": outcome, "approvals": int(outcome == "approved"),
                "declines": int(outcome == "declined"), "next_level": levels[i + 1] if i + 1 < len(levels) else None}

    @property
    def ops(self) -> list[tuple[str, dict[str, Any]]]:
        return [(c.operation, dict(c.params)) for c in self.calls]

    @property
    def operations(self) -> list[str]:
        return [c.operation for c in self.calls]

    @property
    def statuses(self) -> list[str]:
        return [c.params["status"] for c in self.calls if c.operation == "set_milestone_status"]


def milestone(**overrides: Any) -> dict[str, Any]:
    """The start data the application puts on the root task."""
    data: dict[str, Any] = {
        "milestone_id": 42,
        "milestone_code": "M-42",
        "milestone_type": "financial",
        "amount": Decimal("5000"),
        "currency": "EUR",
        "contract_id": 7,
        "contract_number": "C-2024-007",
        "contract_value": Decimal("2500000"),
        "account_id": 3,
        "account_name": "Acme Ltd",
        "attributes": {},
        "risk": None,
        "submitted_by": "alice",
        "rework_to": ["alice"],
        "round": 1,
        "days_to_due": 30,
        "retention_of": None,
    }
    data.update(overrides)
    return data


# What the application passes when a seat of review_milestone completes: the seat's vote and its
# count of the level's votes so far ("pending" keeps the level open).
APPROVE = {"decision": "approve", "comment": "fine", "level_outcome": "approved"}
DECLINE = {"decision": "decline", "comment": "missing invoice", "level_outcome": "declined"}
PENDING = {"decision": "approve", "comment": "one more approval needed", "level_outcome": "pending"}

SUBMITTED = [("set_milestone_status", {"status": "submitted"}), ("plan_approval_levels", {"round": 1})]
OPEN = ("open_approval_level", {"round": 1})
CLOSE = ("close_approval_level", {"round": 1})


def only_task(instance: Instance) -> HumanTask:
    tasks = instance.ready_human_tasks()
    assert len(tasks) == 1, tasks
    return tasks[0]


def approve_every_level(instance: Instance) -> list[tuple[str, ...]]:
    """Approve level after level (one seat each) until no review is open; the groups, in order."""
    groups = []
    while (seats := [t for t in instance.ready_human_tasks() if t.bpmn_id == "review_milestone"]):
        assert len(seats) == 1, seats
        groups.append(seats[0].candidate_groups)
        instance.complete(seats[0].id, APPROVE)
    return groups


def roundtrip(deployment: Deployment, instance: Instance, services: Services) -> Instance:
    """State-only save and restore, as the application does between requests."""
    return Instance.restore(deployment, instance.dump(), instance.serializer_version, services)


def state_json(instance: Instance) -> dict[str, Any]:
    return json.loads(gzip.decompress(instance.dump()))


HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
                  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
                  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core"
                  xmlns:camunda="http://camunda.org/schema/1.0/bpmn"
                  id="test_definitions" targetNamespace="http://bpmn.io/schema/bpmn">
"""


def bpmn_doc(body: str, process_id: str = "test_process", prolog: str = "") -> bytes:
    """A one-process BPMN document (no diagram interchange) around `body`."""
    head = HEAD
    if prolog:  # e.g. a DOCTYPE: it must come after the XML declaration
        first, rest = head.split("\n", 1)
        head = f"{first}\n{prolog}\n{rest}"
    return (
        f'{head}  <bpmn:process id="{process_id}" isExecutable="true">\n{body}\n  </bpmn:process>\n'
        "</bpmn:definitions>\n"
    ).encode()


def flows(*pairs: tuple[str, str, str]) -> str:
    return "\n".join(f'<bpmn:sequenceFlow id="{fid}" sourceRef="{src}" targetRef="{dst}" />' for fid, src, dst in pairs)


def problems_of(files: Mapping[str, bytes]) -> list[Problem]:
    with pytest.raises(DeploymentError) as info:
        Deployment.from_files(dict(files))
    assert info.value.problems, "a DeploymentError must list at least one problem"
    return info.value.problems


# --------------------------------------------------------------------------- deployment
def test_repo_bundle_deploys_the_approval_and_lifecycle_processes(deployment: Deployment) -> None:
    assert sorted(deployment.executable) == [PROCESS, "milestone_contact_tasks", "milestone_lifecycle"]
    assert {BPMN_FILE, DMN_FILE, "milestone_lifecycle.bpmn"} <= set(deployment.files)
    assert deployment.file_of(PROCESS) == BPMN_FILE
    assert len(deployment.hash) == 64 and int(deployment.hash, 16) >= 0


def test_hash_is_stable_and_independent_of_file_order(deployment: Deployment) -> None:
    files = repo_files()
    reversed_files = dict(reversed(list(files.items())))
    assert list(reversed_files) != list(files)
    assert Deployment.from_files(files).hash == deployment.hash
    assert Deployment.from_files(reversed_files).hash == deployment.hash
    assert Deployment.from_directories(DMN_DIR, BPMN_DIR).hash == deployment.hash
    assert Deployment.from_directories(BPMN_DIR, DMN_DIR).hash == deployment.hash


def test_hash_changes_when_one_byte_or_a_file_name_changes(deployment: Deployment) -> None:
    files = repo_files()
    original = files[BPMN_FILE]
    marker = b"hand-written BPMN"
    assert original.count(marker) == 1
    changed = original.replace(marker, b"hand-written BPMn")  # one byte, inside an XML comment
    assert len(changed) == len(original) and sum(a != b for a, b in zip(changed, original, strict=True)) == 1
    one_byte = Deployment.from_files({**files, BPMN_FILE: changed})
    assert sorted(one_byte.executable) == [PROCESS, "milestone_contact_tasks", "milestone_lifecycle"]
    assert one_byte.hash != deployment.hash

    renamed = Deployment.from_files({"milestone_approval_v2.bpmn": original, DMN_FILE: files[DMN_FILE],
                                     "reminder_policy.dmn": files["reminder_policy.dmn"]})
    assert renamed.hash != deployment.hash


def test_from_directories_without_models_is_a_deployment_error(tmp_path: Path) -> None:
    (tmp_path / "README.txt").write_text("no models here")
    with pytest.raises(DeploymentError):
        Deployment.from_directories(tmp_path)


# --------------------------------------------------------------------------- routing (every DMN row)
FM, EB, CM = "finance-managers", "executive-board", "contract-managers"
ROUTES = [
    pytest.param("financial", "5000", None, ["finance"], id="financial-small"),
    pytest.param("financial", "9999.99", None, ["finance"], id="financial-small-edge"),
    pytest.param("financial", "10000", None, [FM], id="financial-medium-edge"),
    pytest.param("financial", "50000", None, [FM], id="financial-medium"),
    pytest.param("financial", "99999.99", None, [FM], id="financial-medium-upper-edge"),
    pytest.param("financial", "100000", None, [FM, EB], id="financial-large-edge"),
    pytest.param("financial", "2500000", None, [FM, EB], id="financial-large"),
    pytest.param("non_financial", "0", None, ["project-managers"], id="non-financial"),
    pytest.param("non_financial", "250000", None, ["project-managers"], id="non-financial-large-amount"),
    pytest.param("financial", "50000", "low", [FM], id="other-risk-adds-nothing"),
    pytest.param("financial", "5000", "high", ["finance", CM], id="high-risk-small"),
    pytest.param("financial", "100000", "high", [FM, EB, CM], id="high-risk-large"),
    pytest.param("non_financial", "0", "high", ["project-managers", CM], id="high-risk-non-financial"),
]


@pytest.mark.parametrize(("milestone_type", "amount", "risk", "chain"), ROUTES)
def test_the_first_level_review_is_routed_by_the_decision_table(
    deployment: Deployment, milestone_type: str, amount: str, risk: str | None, chain: list[str]
) -> None:
    services = Services()
    before = datetime.now(UTC)
    instance = Instance.start(
        deployment, PROCESS, milestone(milestone_type=milestone_type, amount=Decimal(amount), risk=risk), services
    )
    after = datetime.now(UTC)

    assert not instance.is_completed
    assert instance.process_id == PROCESS
    assert services.ops == [*SUBMITTED, OPEN]
    assert instance.reached("determine_approval_route") and instance.reached("plan_approval")
    # the COLLECT table hands the whole chain to plan_approval_levels, one list item per level
    plan_data = services.calls[1].data
    assert plan_data["approval_group"] == chain
    assert plan_data["level"] == sorted(plan_data["level"]) and plan_data["level"][0] == 1
    assert len(plan_data["level"]) == len(plan_data["quorum"]) == len(plan_data["on_decline"]) == len(chain)

    task = only_task(instance)
    assert task.bpmn_id == "review_milestone"
    assert task.multi_instance
    assert task.name == "Review milestone"
    assert task.process_id == PROCESS
    assert task.lane == "Approvers"
    assert task.candidate_groups == (chain[0],)
    assert task.candidate_users == ()
    assert task.documentation == "Approve or decline the submitted milestone."
    assert UUID(task.id)
    assert task.ready_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= task.ready_at <= after + timedelta(seconds=1)
    assert task.due_at == task.ready_at + timedelta(days=5)


@pytest.mark.parametrize(("milestone_type", "amount", "risk", "chain"), ROUTES)
def test_every_level_of_the_chain_is_reviewed_in_turn(
    deployment: Deployment, milestone_type: str, amount: str, risk: str | None, chain: list[str]
) -> None:
    services = Services()
    instance = Instance.start(
        deployment, PROCESS, milestone(milestone_type=milestone_type, amount=Decimal(amount), risk=risk), services
    )

    assert approve_every_level(instance) == [(group,) for group in chain]
    assert instance.is_completed and instance.reached("end_completed")
    assert services.ops[:2] == SUBMITTED
    assert services.ops[2:2 + 2 * len(chain)] == [OPEN, CLOSE] * len(chain)
    assert services.statuses == ["submitted", "approved", "completed"]
    assert ("release_funds" in services.operations) is (milestone_type == "financial")
    assert instance.data()["level_result"]["next_level"] is None


def test_a_milestone_no_rule_routes_gets_no_chain_and_stops_at_plan_approval(deployment: Deployment) -> None:
    # No catch-all on purpose: the application refuses the empty chain in plan_approval_levels.
    refused = ValueError("no approval route for milestone_type 'in_kind'")
    services = Services(fail_on="plan_approval_levels", error=refused)
    with pytest.raises(ExecutionError) as info:
        Instance.start(deployment, PROCESS, milestone(milestone_type="in_kind", amount=Decimal("1")), services)

    assert info.value.element_id == "plan_approval"
    assert info.value.cause is refused
    assert services.operations == ["set_milestone_status", "plan_approval_levels"]
    assert not {"level", "approval_group", "quorum", "on_decline"} & set(services.calls[-1].data)


def test_the_routing_table_needs_the_risk_input(deployment: Deployment) -> None:
    start = milestone()
    del start["risk"]
    with pytest.raises(ExecutionError) as info:
        Instance.start(deployment, PROCESS, start, Services())
    assert info.value.element_id == "determine_approval_route"
    assert "risk" in str(info.value)


# --------------------------------------------------------------------------- approve / decline
def test_financial_approval_sets_statuses_releases_funds_and_completes(deployment: Deployment) -> None:
    services = Services()
    instance = Instance.start(deployment, PROCESS, milestone(amount=Decimal("50000")), services)
    review = only_task(instance)

    completed = instance.complete(review.id, APPROVE)

    assert completed.id == review.id and completed.bpmn_id == "review_milestone"
    assert services.ops == [
        *SUBMITTED,
        OPEN,
        CLOSE,
        ("set_milestone_status", {"status": "approved"}),
        ("release_funds", {"milestone_id": 42, "amount": "50000", "currency": "EUR"}),
        ("set_milestone_status", {"status": "completed"}),
    ]
    release = services.calls[5]
    assert release.bpmn_id == "release_funds_task"
    assert release.process_id == PROCESS
    assert UUID(release.task_id)
    assert instance.is_completed
    assert instance.ready_human_tasks() == []
    assert instance.reached("end_completed") and not instance.reached("end_resubmitted")
    final = instance.data()
    assert final["decision"] == "approve" and final["level_outcome"] == "approved"
    assert final["approval_group"] == ["finance-managers"]
    assert final["level_plan"]["group"] == "finance-managers"
    assert final["level_result"] == {"level": 1, "outcome": "approved", "approvals": 1, "declines": 0,
                                     "next_level": None}
    assert final["release"] == {"ok": True, "operation": "release_funds"}


def test_two_levels_are_approved_one_after_the_other_before_funds_are_released(deployment: Deployment) -> None:
    services = Services(seats=(1, 2))
    instance = Instance.start(deployment, PROCESS, milestone(amount=Decimal("120000")), services)
    first = only_task(instance)
    assert first.candidate_groups == ("finance-managers",)

    instance.complete(first.id, APPROVE)

    assert services.ops[2:] == [OPEN, CLOSE, OPEN]
    assert services.statuses == ["submitted"]  # nothing is approved after the first level
    second = instance.ready_human_tasks()
    assert [t.candidate_groups for t in second] == [("executive-board",)] * 2
    assert first.id not in {t.id for t in second} and all(t.multi_instance for t in second)
    assert instance.data()["level_plan"]["level"] == 2

    # level 1 ended with level_outcome "approved": level 2 still waits for a seat of its own
    instance.complete(second[0].id, PENDING)
    assert [t.id for t in instance.ready_human_tasks()] == [second[1].id]
    assert services.operations.count("close_approval_level") == 1

    instance.complete(second[1].id, APPROVE)

    assert services.ops[2:] == [OPEN, CLOSE, OPEN, CLOSE, ("set_milestone_status", {"status": "approved"}),
                                ("release_funds", {"milestone_id": 42, "amount": "120000", "currency": "EUR"}),
                                ("set_milestone_status", {"status": "completed"})]
    assert instance.is_completed and instance.reached("end_completed")
    assert instance.visited().count("level_merge") == 2
    assert instance.visited().count("review_milestone") == 2  # once per level, not once per seat
    assert instance.data()["level_result"]["level"] == 2


def test_a_quorum_level_waits_while_pending_and_cancels_the_remaining_seats(deployment: Deployment) -> None:
    services = Services(seats=(3,))
    instance = Instance.start(deployment, PROCESS, milestone(amount=Decimal("50000")), services)
    seats = instance.ready_human_tasks()
    assert [t.bpmn_id for t in seats] == ["review_milestone"] * 3 and len({t.id for t in seats}) == 3
    assert all(t.multi_instance and t.candidate_groups == ("finance-managers",) for t in seats)

    instance.complete(seats[0].id, PENDING)

    assert sorted(t.id for t in instance.ready_human_tasks()) == sorted([seats[1].id, seats[2].id])
    assert "close_approval_level" not in services.operations
    assert not instance.reached("review_milestone")

    instance.complete(seats[1].id, APPROVE)

    assert instance.ready_human_tasks() == []
    assert services.operations.count("close_approval_level") == 1
    assert instance.is_completed and instance.reached("release_funds_task")
    assert instance.data()["comment"] == APPROVE["comment"]  # the seat that completed the level
    with pytest.raises(TaskNotReady) as info:
        instance.complete(seats[2].id, APPROVE)
    assert info.value.state == "CANCELLED"


def test_non_financial_approval_never_releases_funds(deployment: Deployment) -> None:
    services = Services()
    instance = Instance.start(
        deployment, PROCESS, milestone(milestone_type="non_financial", amount=Decimal("75000")), services
    )
    assert only_task(instance).candidate_groups == ("project-managers",)
    instance.complete(only_task(instance).id, APPROVE)

    assert services.statuses == ["submitted", "approved", "completed"]
    assert "release_funds" not in services.operations
    assert not instance.reached("release_funds_task")
    assert instance.is_completed and instance.reached("end_completed")


def test_decline_goes_to_rework_for_the_rework_users_then_requests_a_new_round(deployment: Deployment) -> None:
    services = Services()
    instance = Instance.start(
        deployment, PROCESS, milestone(submitted_by="alice", rework_to=["cora", "alice"], round=3), services
    )
    instance.complete(only_task(instance).id, DECLINE)

    assert services.statuses == ["submitted", "declined"]
    assert services.ops[1:4] == [("plan_approval_levels", {"round": 3}), ("open_approval_level", {"round": 3}),
                                 ("close_approval_level", {"round": 3})]
    assert "release_funds" not in services.operations
    assert not instance.is_completed

    rework = only_task(instance)
    assert rework.bpmn_id == "rework_milestone"
    assert not rework.multi_instance
    assert rework.lane == "Submitter"
    assert rework.candidate_users == ("cora", "alice")
    assert rework.candidate_groups == ()  # explicit candidates: no fallback to the lane
    assert rework.due_at == rework.ready_at + timedelta(days=10)

    instance.complete(rework.id, {"comment": "invoice attached"})

    assert services.ops[-1] == ("start_next_round", {"from_round": 3})
    assert services.operations.count("start_next_round") == 1
    assert services.statuses == ["submitted", "declined"]
    assert instance.is_completed
    assert instance.reached("end_resubmitted") and not instance.reached("end_completed")


def test_a_decline_at_the_second_level_goes_to_rework_without_releasing_funds(deployment: Deployment) -> None:
    services = Services()
    instance = Instance.start(deployment, PROCESS, milestone(amount=Decimal("100000")), services)
    instance.complete(only_task(instance).id, APPROVE)
    second = only_task(instance)
    assert second.candidate_groups == ("executive-board",)

    instance.complete(second.id, DECLINE)

    assert services.operations.count("close_approval_level") == 2
    assert instance.data()["level_result"] == {"level": 2, "outcome": "declined", "approvals": 0, "declines": 1,
                                               "next_level": None}
    assert services.statuses == ["submitted", "declined"]
    assert not instance.reached("mark_approved") and "release_funds" not in services.operations
    assert only_task(instance).bpmn_id == "rework_milestone"


@pytest.mark.parametrize("form", [
    pytest.param({"decision": "approve", "level_outcome": "Approved"}, id="case-matters"),
    pytest.param({"decision": "approve", "level_outcome": "declined"}, id="the-count-not-the-vote"),
    pytest.param({"decision": "approve", "level_outcome": "expired"}, id="unknown-outcome"),
])
def test_any_level_outcome_other_than_approved_takes_the_default_decline_flow(
    deployment: Deployment, form: dict[str, Any]
) -> None:
    services = Services()
    instance = Instance.start(deployment, PROCESS, milestone(), services)
    instance.complete(only_task(instance).id, form)
    assert instance.data()["level_result"]["outcome"] == form["level_outcome"]
    assert services.statuses == ["submitted", "declined"]
    assert only_task(instance).bpmn_id == "rework_milestone"


# --------------------------------------------------------------------------- state-only persistence

def run_scenario(
    deployment: Deployment, start: dict[str, Any], forms: list[dict[str, Any]], seats: tuple[int, ...], *,
    restore_each_step: bool,
) -> tuple[Services, Instance, list[tuple[Any, ...]]]:
    services = Services(seats=seats)
    instance = Instance.start(deployment, PROCESS, start, services)
    seen: list[tuple[Any, ...]] = []
    for form in forms:
        if restore_each_step:
            instance = roundtrip(deployment, roundtrip(deployment, instance, services), services)
        ready = instance.ready_human_tasks()
        task = ready[0]
        seen.append((len(ready), task.bpmn_id, task.multi_instance, task.lane, task.candidate_groups,
                     task.candidate_users, task.due_at - task.ready_at, instance.data()))
        instance.complete(task.id, form)
        if restore_each_step:
            instance = roundtrip(deployment, instance, services)
    return services, instance, seen


SCENARIOS = [
    pytest.param(milestone(amount=Decimal("120000.50")), [APPROVE, APPROVE], (1,), id="two-levels-approve"),
    pytest.param(milestone(amount=Decimal("50000")), [PENDING, APPROVE], (3,), id="quorum-approve"),
    pytest.param(milestone(milestone_type="non_financial"), [APPROVE], (1,), id="non-financial-approve"),
    pytest.param(milestone(), [DECLINE, {"comment": "redone"}], (1,), id="decline"),
    pytest.param(milestone(amount=Decimal("100000")), [APPROVE, PENDING, DECLINE, {"comment": "redone"}], (1, 2),
                 id="second-level-decline"),
]


@pytest.mark.parametrize(("start", "forms", "seats"), SCENARIOS)
def test_restoring_between_every_step_gives_the_same_outcome(
    deployment: Deployment, start: dict[str, Any], forms: list[dict[str, Any]], seats: tuple[int, ...]
) -> None:
    plain_services, plain, plain_seen = run_scenario(deployment, start, forms, seats, restore_each_step=False)
    saved_services, saved, saved_seen = run_scenario(deployment, start, forms, seats, restore_each_step=True)

    assert plain.is_completed and saved.is_completed
    assert saved_services.ops == plain_services.ops
    assert saved_seen == plain_seen
    assert saved.data() == plain.data()
    assert saved.visited() == plain.visited()
    for end in ("end_completed", "end_resubmitted", "release_funds_task"):
        assert saved.reached(end) == plain.reached(end)


def test_restored_ready_seats_are_identical(deployment: Deployment) -> None:
    services = Services(seats=(3,))
    instance = Instance.start(deployment, PROCESS, milestone(), services)
    restored = roundtrip(deployment, instance, services)
    live, back = instance.ready_human_tasks(), restored.ready_human_tasks()
    assert len(live) == 3

    # The stored state keeps each task's last state change to the millisecond: everything else is equal.
    def timeless(task: HumanTask) -> HumanTask:
        return replace(task, ready_at=EPOCH, due_at=None)

    assert [timeless(t) for t in back] == [timeless(t) for t in live]
    for before, after in zip(live, back, strict=True):
        assert abs(after.ready_at - before.ready_at) <= timedelta(milliseconds=1)
        assert after.due_at is not None and before.due_at is not None
        assert after.due_at - after.ready_at == before.due_at - before.ready_at
    assert roundtrip(deployment, restored, services).ready_human_tasks() == back  # and exactly stable from then on
    assert restored.process_id == PROCESS
    assert services.ops == [*SUBMITTED, OPEN]  # restoring runs nothing


def test_a_review_seat_restored_on_a_freshly_parsed_deployment_completes_the_level() -> None:
    services = Services()
    opened = Instance.start(Deployment.from_directories(BPMN_DIR, DMN_DIR), PROCESS, milestone(), services)
    fresh = Deployment.from_directories(BPMN_DIR, DMN_DIR)  # the same files, parsed by another worker
    assert fresh.hash == opened.deployment.hash
    restored = Instance.restore(fresh, opened.dump(), SERIALIZER_VERSION, services)

    restored.complete(only_task(restored).id, APPROVE)

    assert "close_approval_level" in services.operations
    assert restored.is_completed


def test_completed_dump_is_small_gzipped_state_only(deployment: Deployment) -> None:
    services = Services()
    instance = Instance.start(deployment, PROCESS, milestone(), services)
    instance.complete(only_task(instance).id, APPROVE)
    assert instance.is_completed

    blob = instance.dump()
    assert blob[:2] == b"\x1f\x8b", "dump() must be gzip"
    assert len(blob) < 2048, f"completed instance dump is {len(blob)} bytes"
    text = gzip.decompress(blob).decode()
    # The spec (documentation, decision table, parameters) stays with the deployment.
    assert "Approve or decline the submitted milestone." not in text
    assert "Address the decline reasons" not in text
    assert json.loads(text)["spec"] == PROCESS


def test_decimal_amounts_survive_a_round_trip_as_decimal(deployment: Deployment) -> None:
    services = Services()
    amount = Decimal("12345.67")
    instance = roundtrip(deployment, Instance.start(deployment, PROCESS, milestone(amount=amount), services), services)
    review = only_task(instance)
    assert review.candidate_groups == ("finance-managers",)  # compared as a number, not a string
    instance.complete(review.id, APPROVE)
    instance = roundtrip(deployment, instance, services)

    assert instance.is_completed
    restored_amount = instance.data()["amount"]
    assert type(restored_amount) is Decimal
    assert restored_amount == amount
    assert ("release_funds", {"milestone_id": 42, "amount": "12345.67", "currency": "EUR"}) in services.ops


def test_restore_with_another_serializer_version_is_a_state_error(deployment: Deployment) -> None:
    services = Services()
    instance = Instance.start(deployment, PROCESS, milestone(), services)
    assert instance.serializer_version == SERIALIZER_VERSION
    with pytest.raises(StateError):
        Instance.restore(deployment, instance.dump(), "spiff-3.1.0/state-only-1", services)
    with pytest.raises(StateError):
        Instance.restore(deployment, instance.dump(), "", services)
    # and the right version works
    assert Instance.restore(deployment, instance.dump(), SERIALIZER_VERSION, services).ready_human_tasks()


def test_restore_of_garbage_or_a_foreign_deployment_is_a_state_error(deployment: Deployment) -> None:
    with pytest.raises(StateError):
        Instance.restore(deployment, b"not gzip at all", SERIALIZER_VERSION)
    with pytest.raises(StateError):
        Instance.restore(deployment, gzip.compress(b"{not json"), SERIALIZER_VERSION)

    other = Deployment.from_files({"lanes.bpmn": LANE_BPMN})
    foreign = Instance.start(other, "lane_process", {"owner": "bob"})
    with pytest.raises(StateError):
        Instance.restore(deployment, foreign.dump(), SERIALIZER_VERSION)


# --------------------------------------------------------------------------- completion guards
def test_unknown_or_malformed_task_ids_are_not_found(deployment: Deployment) -> None:
    instance = Instance.start(deployment, PROCESS, milestone(), Services())
    for bad in (str(uuid4()), "not-a-uuid", "", "review_milestone"):
        with pytest.raises(TaskNotFound):
            instance.complete(bad, APPROVE)
    assert only_task(instance).bpmn_id == "review_milestone"


def test_a_task_of_another_instance_is_not_found(deployment: Deployment) -> None:
    first = Instance.start(deployment, PROCESS, milestone(), Services())
    second = Instance.start(deployment, PROCESS, milestone(), Services())
    with pytest.raises(TaskNotFound):
        second.complete(only_task(first).id, APPROVE)


def test_completing_a_completed_task_is_not_ready(deployment: Deployment) -> None:
    services = Services()
    instance = Instance.start(deployment, PROCESS, milestone(), services)
    review = only_task(instance)
    instance.complete(review.id, DECLINE)
    calls_before = list(services.ops)

    with pytest.raises(TaskNotReady) as info:
        instance.complete(review.id, APPROVE)

    assert info.value.task_id == review.id
    assert info.value.state == "COMPLETED"
    assert services.ops == calls_before
    assert only_task(instance).bpmn_id == "rework_milestone"


@pytest.mark.parametrize("form", [
    pytest.param({**APPROVE, "_approval_group": "executive-board"}, id="underscore-key"),
    pytest.param({**APPROVE, "__builtins__": {}}, id="dunder-key"),
    pytest.param({**APPROVE, 7: "x"}, id="non-string-key"),
])
def test_reserved_keys_are_refused_and_nothing_changes(deployment: Deployment, form: dict[Any, Any]) -> None:
    services = Services()
    instance = Instance.start(deployment, PROCESS, milestone(), services)
    review = only_task(instance)
    state_before = state_json(instance)

    with pytest.raises(ValueError, match="reserved"):
        instance.complete(review.id, form)

    assert instance.ready_human_tasks() == [review]  # still READY, same task
    assert state_json(instance) == state_before
    assert services.statuses == ["submitted"]
    # the task can still be completed properly afterwards
    instance.complete(review.id, APPROVE)
    assert instance.is_completed
    assert "_approval_group" not in instance.data()


# --------------------------------------------------------------------------- execution errors
SCRIPT_FILE = "broken_script.bpmn"
SCRIPT_BPMN = bpmn_doc(
    """
    <bpmn:startEvent id="start"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:scriptTask id="compute_total" name="Compute total" scriptFormat="python">
      <bpmn:incoming>f1</bpmn:incoming>
      <bpmn:outgoing>f2</bpmn:outgoing>
      <bpmn:script>x = undefined_name</bpmn:script>
    </bpmn:scriptTask>
    <bpmn:endEvent id="end"><bpmn:incoming>f2</bpmn:incoming></bpmn:endEvent>
    """ + flows(("f1", "start", "compute_total"), ("f2", "compute_total", "end")),
    process_id="script_process",
)


def test_script_runtime_error_names_file_and_element() -> None:
    deployment = Deployment.from_files({SCRIPT_FILE: SCRIPT_BPMN})  # it compiles: the error is at run time
    with pytest.raises(ExecutionError) as info:
        Instance.start(deployment, "script_process", {})

    error = info.value
    assert isinstance(error, WorkflowError)
    assert error.file == SCRIPT_FILE
    assert error.element_id == "compute_total"
    assert error.problem.file == SCRIPT_FILE and error.problem.element_id == "compute_total"
    assert "undefined_name" in str(error)
    assert "compute_total" in str(error)


def test_service_handler_error_keeps_the_original_exception_as_cause(deployment: Deployment) -> None:
    class BankDown(RuntimeError):
        pass

    boom = BankDown("bank gateway unreachable")
    services = Services(fail_on="release_funds", error=boom)
    instance = Instance.start(deployment, PROCESS, milestone(), services)

    with pytest.raises(ExecutionError) as info:
        instance.complete(only_task(instance).id, APPROVE)

    error = info.value
    assert error.cause is boom
    assert error.element_id == "release_funds_task"
    assert error.file == BPMN_FILE
    assert "bank gateway unreachable" in str(error)
    assert instance.errored_tasks() == ["release_funds_task"]
    assert not instance.is_completed
    assert services.statuses == ["submitted", "approved"]  # mark_completed never ran


def test_a_missing_service_handler_is_an_execution_error(deployment: Deployment) -> None:
    with pytest.raises(ExecutionError) as info:
        Instance.start(deployment, PROCESS, milestone())  # no handler at all
    assert info.value.element_id == "mark_submitted"
    assert isinstance(info.value.cause, LookupError)


# --------------------------------------------------------------------------- deployment errors
def test_malformed_xml_names_file_and_line() -> None:
    content = b'<?xml version="1.0" encoding="UTF-8"?>\n<definitions>\n  <process id="p">\n</definitions>\n'
    [problem] = problems_of({"broken.bpmn": content})
    assert problem.file == "broken.bpmn"
    assert problem.line == 4
    assert "well-formed" in problem.message


XXE_PAYLOADS = [
    pytest.param(
        '<!DOCTYPE bpmn:definitions [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
        '<bpmn:startEvent id="start"><bpmn:documentation>&e;</bpmn:documentation></bpmn:startEvent>',
        id="external-entity-in-text",
    ),
    pytest.param(
        '<!DOCTYPE bpmn:definitions [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
        '<bpmn:startEvent id="start" name="&e;" />',
        id="external-entity-in-attribute",
    ),
    pytest.param(
        '<!DOCTYPE bpmn:definitions [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>',
        '<bpmn:startEvent id="start"><bpmn:documentation>&b;</bpmn:documentation></bpmn:startEvent>',
        id="internal-entity-expansion",
    ),
    pytest.param('<!DOCTYPE bpmn:definitions>', '<bpmn:startEvent id="start" />', id="bare-doctype"),
]


@pytest.mark.parametrize(("doctype", "body"), XXE_PAYLOADS)
def test_doctype_and_entities_are_refused(doctype: str, body: str) -> None:
    problems = problems_of({"xxe.bpmn": bpmn_doc(body, prolog=doctype)})
    assert all(p.file == "xxe.bpmn" for p in problems)
    text = " ".join(p.message for p in problems)
    assert "root:" not in text  # nothing from /etc/passwd leaks into the error
    assert "aaaaaaaaaa" not in text


def test_the_same_document_without_doctype_deploys() -> None:
    # Control for the test above: the refusal is about the DOCTYPE, not the rest of the document.
    Deployment.from_files({"ok.bpmn": bpmn_doc('<bpmn:startEvent id="start" />')})


def test_gateway_condition_syntax_error_is_reported_before_anything_runs() -> None:
    body = """
    <bpmn:startEvent id="start"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:exclusiveGateway id="is_big" default="flow_small">
      <bpmn:incoming>f1</bpmn:incoming>
      <bpmn:outgoing>flow_big</bpmn:outgoing>
      <bpmn:outgoing>flow_small</bpmn:outgoing>
    </bpmn:exclusiveGateway>
    <bpmn:endEvent id="end"><bpmn:incoming>flow_big</bpmn:incoming><bpmn:incoming>flow_small</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="is_big" />
    <bpmn:sequenceFlow id="flow_big" sourceRef="is_big" targetRef="end">
      <bpmn:conditionExpression xsi:type="bpmn:tFormalExpression">amount &gt;= = 10000</bpmn:conditionExpression>
    </bpmn:sequenceFlow>
    <bpmn:sequenceFlow id="flow_small" sourceRef="is_big" targetRef="end" />
    """
    [problem] = problems_of({"gateway.bpmn": bpmn_doc(body)})
    assert problem.file == "gateway.bpmn"
    assert problem.element_id == "flow_big"
    assert problem.line is not None and problem.line > 1
    assert "conditionExpression" in problem.message


def test_several_expression_problems_are_collected_in_one_error() -> None:
    body = """
    <bpmn:scriptTask id="first_script"><bpmn:script>total = = 1</bpmn:script></bpmn:scriptTask>
    <bpmn:scriptTask id="second_script"><bpmn:script>def (</bpmn:script></bpmn:scriptTask>
    """
    problems = problems_of({"scripts.bpmn": bpmn_doc(body)})
    assert [(p.file, p.element_id) for p in problems] == [
        ("scripts.bpmn", "first_script"),
        ("scripts.bpmn", "second_script"),
    ]


def test_problems_from_several_files_are_collected_in_one_error() -> None:
    problems = problems_of({
        "notes.txt": b"not a model",
        "broken.bpmn": b"<a>\n<b>\n</a>\n",
        "ok.bpmn": bpmn_doc('<bpmn:startEvent id="start" />'),
    })
    by_file = {p.file: p for p in problems}
    assert set(by_file) == {"notes.txt", "broken.bpmn"}
    assert by_file["broken.bpmn"].line == 3


def test_a_missing_dmn_for_a_business_rule_task_is_reported() -> None:
    [problem] = problems_of({BPMN_FILE: repo_files()[BPMN_FILE]})
    assert problem.file == BPMN_FILE
    assert problem.element_id == "determine_approval_route"
    assert "approval_routing" in problem.message


@pytest.mark.parametrize("name", ["approval.xml", "approval.bpmn.txt", "approval", "approval.BPMN2"])
def test_only_bpmn_and_dmn_file_names_are_accepted(name: str) -> None:
    problems = problems_of({name: bpmn_doc('<bpmn:startEvent id="start" />')})
    assert [p.file for p in problems] == [name]
    assert ".bpmn" in problems[0].message


def test_documents_are_validated_against_the_bpmn_schema() -> None:
    body = """
    <bpmn:userTask id="out_of_order">
      <bpmn:outgoing>f2</bpmn:outgoing>
      <bpmn:incoming>f1</bpmn:incoming>
    </bpmn:userTask>
    """
    [problem] = problems_of({"order.bpmn": bpmn_doc(body)})
    assert problem.file == "order.bpmn"
    assert problem.line is not None
    assert "incoming" in problem.message


# --------------------------------------------------------------------------- lanes
LANE_BPMN = bpmn_doc(
    """
    <bpmn:laneSet id="lanes">
      <bpmn:lane id="lane_reviewers" name="Reviewers">
        <bpmn:flowNodeRef>start</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>check_documents</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>sign_off</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>end</bpmn:flowNodeRef>
      </bpmn:lane>
    </bpmn:laneSet>
    <bpmn:startEvent id="start"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:userTask id="check_documents" name="Check documents">
      <bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing>
    </bpmn:userTask>
    <bpmn:userTask id="sign_off" name="Sign off" camunda:candidateUsers="${owner}">
      <bpmn:incoming>f2</bpmn:incoming><bpmn:outgoing>f3</bpmn:outgoing>
    </bpmn:userTask>
    <bpmn:endEvent id="end"><bpmn:incoming>f3</bpmn:incoming></bpmn:endEvent>
    """ + flows(("f1", "start", "check_documents"), ("f2", "check_documents", "sign_off"), ("f3", "sign_off", "end")),
    process_id="lane_process",
)


def test_a_user_task_without_candidates_falls_back_to_its_lane() -> None:
    deployment = Deployment.from_files({"lanes.bpmn": LANE_BPMN})
    instance = Instance.start(deployment, "lane_process", {"owner": "bob"})

    check = only_task(instance)
    assert check.bpmn_id == "check_documents"
    assert check.lane == "Reviewers"
    assert check.candidate_groups == ("Reviewers",)
    assert check.candidate_users == ()
    assert check.due_at is None

    instance.complete(check.id, {})
    sign = only_task(instance)
    assert sign.bpmn_id == "sign_off"
    assert sign.candidate_users == ("bob",)
    assert sign.candidate_groups == ()  # explicit candidates win over the lane

    instance.complete(sign.id, {})
    assert instance.is_completed


# --------------------------------------------------------------------------- timers
def timer_bpmn(duration: str) -> bytes:
    return bpmn_doc(
        f"""
        <bpmn:startEvent id="start"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
        <bpmn:userTask id="approve_it" name="Approve it">
          <bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing>
        </bpmn:userTask>
        <bpmn:boundaryEvent id="reminder" name="Reminder" attachedToRef="approve_it" cancelActivity="false">
          <bpmn:outgoing>f3</bpmn:outgoing>
          <bpmn:timerEventDefinition id="reminder_timer">
            <bpmn:timeDuration xsi:type="bpmn:tFormalExpression">"{duration}"</bpmn:timeDuration>
          </bpmn:timerEventDefinition>
        </bpmn:boundaryEvent>
        <bpmn:serviceTask id="remind_task" name="Send reminder">
          <bpmn:extensionElements>
            <spiffworkflow:serviceTaskOperator id="send_reminder" resultVariable="reminder_sent">
              <spiffworkflow:parameters />
            </spiffworkflow:serviceTaskOperator>
          </bpmn:extensionElements>
          <bpmn:incoming>f3</bpmn:incoming><bpmn:outgoing>f4</bpmn:outgoing>
        </bpmn:serviceTask>
        <bpmn:endEvent id="end"><bpmn:incoming>f2</bpmn:incoming></bpmn:endEvent>
        <bpmn:endEvent id="reminded"><bpmn:incoming>f4</bpmn:incoming></bpmn:endEvent>
        """
        + flows(("f1", "start", "approve_it"), ("f2", "approve_it", "end"), ("f3", "reminder", "remind_task"),
                ("f4", "remind_task", "reminded")),
        process_id="timer_process",
    )


def test_next_timer_due_reports_the_boundary_timer_and_early_firing_does_nothing() -> None:
    deployment = Deployment.from_files({"timer.bpmn": timer_bpmn("P2D")})
    services = Services()
    before = datetime.now(UTC)
    instance = Instance.start(deployment, "timer_process", {}, services)
    after = datetime.now(UTC)

    due = instance.next_timer_due()
    assert due is not None and due.tzinfo is not None
    assert before + timedelta(days=2) - timedelta(seconds=1) <= due <= after + timedelta(days=2) + timedelta(seconds=1)
    waiting = instance.ready_human_tasks()

    instance.fire_due_timers()

    assert services.calls == []
    assert not instance.reached("reminder") and not instance.reached("remind_task")
    assert instance.ready_human_tasks() == waiting
    assert instance.next_timer_due() == due
    # the due time is part of the saved state
    assert roundtrip(deployment, instance, services).next_timer_due() == due


def test_a_due_non_interrupting_timer_fires_and_keeps_the_task_ready() -> None:
    deployment = Deployment.from_files({"timer.bpmn": timer_bpmn("PT0.2S")})
    services = Services()
    instance = Instance.start(deployment, "timer_process", {}, services)
    due = instance.next_timer_due()
    assert due is not None
    task = only_task(instance)

    time.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.05)
    instance = roundtrip(deployment, instance, services)
    instance.fire_due_timers()

    assert services.operations == ["send_reminder"]
    assert instance.reached("remind_task")
    assert instance.next_timer_due() is None
    assert only_task(instance).id == task.id  # non-interrupting: the approval is still waiting
    instance.complete(task.id, {})
    assert instance.is_completed
