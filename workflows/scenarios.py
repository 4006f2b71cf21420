"""Scenario tests for analysts: one JSON file per path through a diagram, run in memory.

No Flask, no database: the files listed under "deployment" are loaded into a `Deployment`,
the instance runs in memory, and every service call is recorded and answered from the
scenario's "services" (default `{}`). Used by `tests/workflows/test_scenarios.py` and by
`milestones test-diagrams`.

A process scenario::

    {
      "name": "financial milestone of 150 000 is approved in two levels",
      "process": "milestone_approval",
      "deployment": ["bpmn/milestone_approval.bpmn", "dmn/approval_routing.dmn", "dmn/reminder_policy.dmn"],
      "start": {"milestone_id": 42, "milestone_type": "financial", "amount": 150000.00, "currency": "EUR",
                "risk": null, "submitted_by": "alice", "rework_to": ["alice"], "round": 1, "days_to_due": 30},
      "services": {
        "open_approval_level": [{"level": 1, "group": "finance-managers", "seats": 1, "...": "..."},
                                {"level": 2, "group": "executive-board", "seats": 1, "...": "..."}],
        "close_approval_level": [{"level": 1, "outcome": "approved", "next_level": 2},
                                 {"level": 2, "outcome": "approved", "next_level": null}],
        "release_funds": {"payment_id": "p-1"}
      },
      "steps": [
        {"task": "review_milestone", "candidate_groups": ["finance-managers"],
         "data": {"decision": "approve", "level_outcome": "approved"}},
        {"timer": "remind"},
        {"task": "review_milestone", "candidate_groups": ["executive-board"],
         "data": {"decision": "approve", "level_outcome": "approved"}}
      ],
      "expect": {
        "visited": ["start", "mark_submitted", "..."],   or {"any_order": [...]}
        "not_visited": ["rework_milestone"],
        "completed": true,
        "waiting": ["review_milestone", "review_milestone"],   (one entry per open seat)
        "data": {"approval_group": ["finance-managers", "executive-board"]},
        "services": ["set_milestone_status", {"operation": "release_funds", "params": {"amount": "150000.00"}}],
        "error": {"element": "release_funds_task", "message": "bank down"}
      }
    }

Service answers: `"op": {...}` answers every call, `"op": [{...}, {...}]` answers the calls in
turn (the last one repeats), and `{"$error": "text"}` makes that call fail. A step completes the
first READY task with that id (for a multi-instance task: its first open seat); a multi-instance
task is `visited` once, when it completes, however many seats it had.

A decision scenario (the output must equal the decision's result; a COLLECT table gives lists)::

    {"name": "...", "decision": "approval_routing", "deployment": ["dmn/approval_routing.dmn"],
     "cases": [{"input": {"milestone_type": "financial", "amount": 100000, "currency": "EUR", "risk": null},
                "output": {"level": [1, 2], "approval_group": ["finance-managers", "executive-board"],
                           "quorum": ["any", "any"], "on_decline": ["first", "first"]}}]}

Numbers with a fraction are read as exact decimals (`9999.99` is `Decimal("9999.99")`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from .deployment import Deployment
from .engine import Instance, ServiceCall, decide
from .errors import DeploymentError, ExecutionError, WorkflowError

_PROCESS_KEYS = {"name", "description", "process", "deployment", "start", "services", "steps", "expect"}
_DECISION_KEYS = {"name", "description", "decision", "deployment", "cases"}
_EXPECT_KEYS = {"visited", "not_visited", "completed", "waiting", "data", "services", "error"}
_STEP_KEYS = {"task", "data", "candidate_groups", "candidate_users", "timer"}


class ScenarioError(Exception):
    """The scenario file itself is wrong (not JSON, unknown keys, missing diagram files)."""


class Mismatch(Exception):  # noqa: N818 - a scenario outcome, not a programming error
    """What the diagram did differs from what the scenario expects."""


@dataclass
class Result:
    path: Path
    name: str
    passed: bool
    message: str = ""  # the first mismatch, or why the scenario could not run

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        head = f"{status}  {self.name}  ({self.path})"
        return head if self.passed else f"{head}\n      {self.message}"


@dataclass
class _Services:
    answers: dict[str, Any]
    calls: list[ServiceCall] = field(default_factory=list)

    def __call__(self, call: ServiceCall) -> Any:
        count = sum(1 for c in self.calls if c.operation == call.operation)
        self.calls.append(call)
        answer = self.answers.get(call.operation, {})
        if isinstance(answer, list):
            answer = answer[min(count, len(answer) - 1)] if answer else {}
        if isinstance(answer, dict) and set(answer) == {"$error"}:
            raise RuntimeError(str(answer["$error"]))
        return answer


# --------------------------------------------------------------------------- loading
def load(path: Path) -> dict[str, Any]:
    """Parse one scenario file. Raises ScenarioError."""
    try:
        scenario = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"cannot read {path}: {exc}") from exc
    if not isinstance(scenario, dict):
        raise ScenarioError("a scenario is a JSON object")
    allowed = _DECISION_KEYS if "decision" in scenario else _PROCESS_KEYS
    unknown = set(scenario) - allowed
    if unknown:
        raise ScenarioError(f"unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
    required = ("decision", "deployment", "cases") if "decision" in scenario else ("process", "deployment")
    missing = [k for k in required if k not in scenario]
    if missing:
        raise ScenarioError(f"missing keys {missing}")
    unknown_expect = set(scenario.get("expect") or {}) - _EXPECT_KEYS
    if unknown_expect:
        raise ScenarioError(f"unknown expect keys {sorted(unknown_expect)} (allowed: {sorted(_EXPECT_KEYS)})")
    for i, step in enumerate(scenario.get("steps") or [], 1):
        if not isinstance(step, dict) or not ({"task", "timer"} & set(step)) or set(step) - _STEP_KEYS:
            raise ScenarioError(
                f'step {i} must be {{"task": …}} or {{"timer": …}} with keys from {sorted(_STEP_KEYS)}'
            )
    return scenario


def discover(paths: Iterable[Path]) -> list[Path]:
    """Scenario files: the given files, plus every *.json under the given directories."""
    found: list[Path] = []
    for path in paths:
        found.extend(sorted(path.rglob("*.json")) if path.is_dir() else [path])
    return found


def _resolve(entry: str, scenario_path: Path, base: Path | None) -> Path:
    candidate = Path(entry)
    if candidate.is_absolute():
        return candidate
    roots = [base] if base is not None else [Path.cwd(), *scenario_path.resolve().parents]
    for root in roots:
        if (root / candidate).is_file():
            return root / candidate
    raise ScenarioError(f"deployment file {entry!r} not found (looked in {roots[0]} and upwards)")


class _Deployments:
    """Parses each distinct bundle once per run (keyed by file names and contents)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[tuple[str, bytes], ...], Deployment] = {}

    def get(self, files: list[Path]) -> Deployment:
        contents = tuple(sorted((p.name, p.read_bytes()) for p in files))
        if contents not in self._cache:
            self._cache[contents] = Deployment.from_files(dict(contents))
        return self._cache[contents]


# --------------------------------------------------------------------------- running
def run(path: Path, *, base: Path | None = None, deployments: _Deployments | None = None) -> Result:
    """Run one scenario file; never raises for a diagram or scenario problem (see Result.message)."""
    name = path.stem
    try:
        scenario = load(path)
        name = str(scenario.get("name") or name)
        files = [_resolve(str(e), path, base) for e in scenario["deployment"]]
        deployment = (deployments or _Deployments()).get(files)
        if "decision" in scenario:
            _run_decision(deployment, scenario)
        else:
            _run_process(deployment, scenario)
    except Mismatch as exc:
        return Result(path, name, False, str(exc))
    except ScenarioError as exc:
        return Result(path, name, False, f"scenario error: {exc}")
    except DeploymentError as exc:
        return Result(path, name, False, f"deployment refused: {exc}")
    return Result(path, name, True)


def run_all(paths: Iterable[Path], *, base: Path | None = None) -> Iterator[Result]:
    deployments = _Deployments()
    for path in discover(paths):
        yield run(path, base=base, deployments=deployments)


def _run_decision(deployment: Deployment, scenario: dict[str, Any]) -> None:
    decision = str(scenario["decision"])
    for i, case in enumerate(scenario["cases"], 1):
        label = case.get("name") or f"case {i}"
        try:
            output = decide(deployment, decision, case.get("input") or {})
        except ExecutionError as exc:
            raise Mismatch(f"{label}: the decision failed: {exc}") from exc
        expected = case.get("output") or {}
        if output != expected:
            raise Mismatch(
                f"{label}: input {_show(case.get('input'))} gave {_show(output)}, expected {_show(expected)}"
            )


def _run_process(deployment: Deployment, scenario: dict[str, Any]) -> None:
    expect = scenario.get("expect") or {}
    services = _Services(dict(scenario.get("services") or {}))
    instance: Instance | None = None
    where = "start"
    try:
        instance = Instance.start(deployment, str(scenario["process"]), scenario.get("start") or {}, services)
        for i, step in enumerate(scenario.get("steps") or [], 1):
            where = f"step {i}"
            _run_step(instance, step, where)
    except ExecutionError as exc:
        wanted = expect.get("error")
        if not wanted:
            raise Mismatch(f"{where}: unexpected error at {exc.element_id or '?'}: {exc}") from exc
        if wanted.get("element") and wanted["element"] != exc.element_id:
            raise Mismatch(
                f"{where}: the error was at {exc.element_id!r}, expected {wanted['element']!r}: {exc}"
            ) from exc
        if wanted.get("message") and str(wanted["message"]) not in str(exc):
            raise Mismatch(f"{where}: the error {str(exc)!r} does not contain {wanted['message']!r}") from exc
    else:
        if expect.get("error"):
            raise Mismatch(f"expected an error at {expect['error'].get('element')!r}, but none happened")
    if instance is not None:
        _check_outcome(instance, services, expect)
    elif expect.get("error") is None:
        raise Mismatch("the instance did not start")
    if expect.get("services") is not None:
        _check_services(services.calls, expect["services"])


def _run_step(instance: Instance, step: dict[str, Any], where: str) -> None:
    if "timer" in step:
        try:
            instance.fire_timer(str(step["timer"]))
        except WorkflowError as exc:
            if isinstance(exc, ExecutionError):
                raise
            raise Mismatch(f"{where}: {exc}") from exc
        return
    bpmn_id = str(step["task"])
    ready = instance.ready_human_tasks()
    candidates = [t for t in ready if t.bpmn_id == bpmn_id]
    if not candidates:
        raise Mismatch(
            f"{where}: task {bpmn_id!r} is not ready; ready: {[t.bpmn_id for t in ready] or 'none'}"
            f"{' (the instance completed)' if instance.is_completed else ''}"
        )
    for key in ("candidate_groups", "candidate_users"):
        if key in step:
            wanted = tuple(step[key])
            matching = [t for t in candidates if getattr(t, key) == wanted]
            if not matching:
                raise Mismatch(
                    f"{where}: task {bpmn_id!r} has {key} "
                    f"{' / '.join(str(list(getattr(t, key))) for t in candidates)}, expected {list(wanted)}"
                )
            candidates = matching
    try:
        instance.complete(candidates[0].id, step.get("data") or {})
    except ValueError as exc:
        raise Mismatch(f"{where}: {exc}") from exc


def _check_outcome(instance: Instance, services: _Services, expect: dict[str, Any]) -> None:
    visited = instance.visited()
    wanted = expect.get("visited")
    if isinstance(wanted, list) and visited != wanted:
        raise Mismatch(f"visited {visited}, expected {wanted}{_first_difference(visited, wanted)}")
    if isinstance(wanted, dict):
        any_order = wanted.get("any_order", [])
        if sorted(visited) != sorted(any_order):
            missing, extra = list(any_order), []
            for bpmn_id in visited:
                if bpmn_id in missing:
                    missing.remove(bpmn_id)
                else:
                    extra.append(bpmn_id)
            raise Mismatch(
                f"visited (any order) differs: not visited {sorted(missing)}, visited but not "
                f"expected {sorted(extra)}; visited {visited}"
            )
    for bpmn_id in expect.get("not_visited") or []:
        if bpmn_id in visited:
            raise Mismatch(f"{bpmn_id!r} was visited; visited {visited}")
    if "completed" in expect and bool(expect["completed"]) != instance.is_completed:
        ready = [t.bpmn_id for t in instance.ready_human_tasks()]
        raise Mismatch(
            f"completed is {instance.is_completed}, expected {expect['completed']} "
            f"(waiting for {ready or 'nothing'}; visited {visited})"
        )
    if "waiting" in expect:
        ready = sorted(t.bpmn_id for t in instance.ready_human_tasks())
        if ready != sorted(expect["waiting"]):
            raise Mismatch(f"waiting for {ready}, expected {sorted(expect['waiting'])}")
    if "data" in expect:
        problem = _subset(expect["data"], instance.data(), "data")
        if problem:
            raise Mismatch(problem)


def _check_services(calls: list[ServiceCall], expected: list[Any]) -> None:
    operations = [c.operation for c in calls]
    wanted_ops = [e if isinstance(e, str) else e.get("operation") for e in expected]
    if operations != wanted_ops:
        raise Mismatch(
            f"service calls {operations}, expected {wanted_ops}{_first_difference(operations, wanted_ops)}"
        )
    for i, (call, wanted) in enumerate(zip(calls, expected, strict=True), 1):
        if isinstance(wanted, dict) and "params" in wanted:
            problem = _subset(wanted["params"], call.params, f"service call {i} ({call.operation}) params")
            if problem:
                raise Mismatch(problem)


def _subset(expected: Any, actual: Any, where: str) -> str | None:
    """The first place where `actual` does not contain `expected` (dicts: subset; lists: equal)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{where} is {_show(actual)}, expected an object"
        for key, value in expected.items():
            if key not in actual:
                return f"{where}.{key} is missing (have {sorted(actual)})"
            problem = _subset(value, actual[key], f"{where}.{key}")
            if problem:
                return problem
        return None
    if isinstance(expected, list):
        if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
            return f"{where} is {_show(actual)}, expected {_show(expected)}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            problem = _subset(e, a, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if expected != actual or isinstance(expected, bool) != isinstance(actual, bool):
        return f"{where} is {_show(actual)}, expected {_show(expected)}"
    return None


def _first_difference(actual: list[Any], expected: list[Any]) -> str:
    for i, (a, e) in enumerate(zip(actual, expected, strict=False)):
        if a != e:
            return f" (first difference at position {i + 1}: {a!r} instead of {e!r})"
    if len(actual) != len(expected):
        shorter = "fewer" if len(actual) < len(expected) else "more"
        return f" ({shorter} items than expected)"
    return ""


def _show(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)
