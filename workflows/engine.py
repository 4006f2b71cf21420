"""Running instances: start, step until waiting, list human tasks, complete one, save and restore.

Nothing SpiffWorkflow-typed leaves this module: callers get `HumanTask` and `ServiceCall`
dataclasses, plain dicts and the errors of `workflows.errors`.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType, SimpleNamespace
from typing import Any
from uuid import UUID

from SpiffWorkflow.bpmn import BpmnEvent, BpmnWorkflow
from SpiffWorkflow.bpmn.exceptions import WorkflowTaskException
from SpiffWorkflow.bpmn.script_engine import BasePythonScriptEngineEnvironment, PythonScriptEngine
from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition
from SpiffWorkflow.exceptions import SpiffWorkflowException, TaskNotFoundException
from SpiffWorkflow.util.task import TaskState

from . import sandbox
from .deployment import READABLE_SERIALIZER_VERSIONS, SERIALIZER_VERSION, Deployment
from .errors import ExecutionError, MessageNotExpected, StateError, TaskNotFound, TaskNotReady

# Keys a completion may never write: routing decisions and identities live here, and a
# form that could overwrite them could route an approval to itself.
RESERVED_PREFIX = "_"


@dataclass(frozen=True)
class HumanTask:
    """A READY user or manual task, as the inbox projection stores it."""

    id: str
    bpmn_id: str
    name: str
    process_id: str
    lane: str | None
    candidate_groups: tuple[str, ...]
    candidate_users: tuple[str, ...]
    assignee: str | None
    due_at: datetime | None
    ready_at: datetime
    documentation: str | None = None
    form_key: str | None = None
    # One child of a multi-instance activity (e.g. one seat of an approval level's review).
    multi_instance: bool = False


@dataclass(frozen=True)
class ServiceCall:
    """One service-task invocation handed to the application's handler."""

    operation: str
    params: dict[str, Any]
    task_id: str
    bpmn_id: str
    process_id: str
    data: Mapping[str, Any] = field(default_factory=dict)


ServiceHandler = Callable[[ServiceCall], Any]


def _no_services(call: ServiceCall) -> Any:
    raise LookupError(f"no service handler for operation {call.operation!r}")


class _SandboxEnvironment(BasePythonScriptEngineEnvironment):
    """Every expression and script of a diagram runs through `workflows.sandbox`.

    SpiffWorkflow also calls the environment directly (process-level conditions, message
    correlation), so the containment lives here and not only in the engine's overrides.
    """

    def evaluate(self, expression: str, context: dict[str, Any], external_context: Any = None) -> Any:
        return sandbox.evaluate(expression, context, external_context)

    def execute(self, script: str, context: dict[str, Any], external_context: Any = None) -> bool:
        sandbox.execute(script, context, external_context)
        return True


class _ScriptEngine(PythonScriptEngine):
    """Routes service tasks to the caller's handler and reports its errors properly.

    SpiffWorkflow 3.2.0's own `call_service` turns any handler error into
    `NameError: name 'script' is not defined`; this keeps the real exception as the cause.
    Expression and script errors keep theirs too, with a message that says what failed.
    """

    def __init__(self, handler: ServiceHandler):
        super().__init__(environment=_SandboxEnvironment())
        self.handler = handler

    def evaluate(self, task: Any, expression: str, external_context: Any = None) -> Any:
        try:
            return self.environment.evaluate(expression, task.data, external_context)
        except SpiffWorkflowException as exc:
            exc.add_note(f"Error evaluating expression '{expression}'")
            raise
        except Exception as err:
            raise WorkflowTaskException(
                f"expression {expression.strip()!r} failed: {_describe_error(err)}", task=task, exception=err
            ) from err

    def execute(self, task: Any, script: str, external_context: Any = None) -> bool:
        try:
            return bool(self.environment.execute(script, task.data, external_context))
        except SpiffWorkflowException:
            raise
        except Exception as err:
            line = sandbox.script_line(err)
            lines = script.splitlines()
            raise WorkflowTaskException(
                f"script failed: {_describe_error(err)}", task=task, exception=err, line_number=line,
                error_line=lines[line - 1] if line and 0 < line <= len(lines) else None,
            ) from err

    def call_service(self, task: Any, **kwargs: Any) -> str:
        operation = kwargs["operation_name"]
        params = {name: p.get("value") for name, p in (kwargs.get("operation_params") or {}).items()}
        call = ServiceCall(
            operation=operation,
            params=params,
            task_id=str(task.id),
            bpmn_id=task.task_spec.bpmn_id,
            process_id=task.workflow.top_workflow.spec.name,
            data=MappingProxyType(task.data),
        )
        try:
            result = self.handler(call)
        except Exception as err:
            raise WorkflowTaskException(
                f"service {operation!r} failed: {type(err).__name__}: {err}", task=task, exception=err
            ) from err
        return json.dumps(result, default=_json_default)


def _describe_error(err: BaseException) -> str:
    if isinstance(err, sandbox.SandboxError):
        return str(err)
    return f"{type(err).__name__}: {err}"


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class Instance:
    """One workflow instance in memory. Single-threaded: one writer per instance at a time."""

    def __init__(self, deployment: Deployment, workflow: BpmnWorkflow, services: ServiceHandler | None):
        self.deployment = deployment
        self._wf = workflow
        self._wf.script_engine = _ScriptEngine(services or _no_services)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(
        cls,
        deployment: Deployment,
        process_id: str,
        data: Mapping[str, Any],
        services: ServiceHandler | None = None,
    ) -> Instance:
        """Create an instance with `data` and run it until it waits. Raises ExecutionError."""
        spec, subprocess_specs = deployment.spec(process_id)
        workflow = BpmnWorkflow(spec, subprocess_specs)
        workflow.task_tree.data.update(dict(data))
        instance = cls(deployment, workflow, services)
        instance.run()
        return instance

    @classmethod
    def restore(
        cls, deployment: Deployment, state: bytes, serializer_version: str, services: ServiceHandler | None = None
    ) -> Instance:
        """Rebuild an instance from `dump()` output made with the same deployment."""
        if serializer_version not in READABLE_SERIALIZER_VERSIONS:
            raise StateError(f"state was written by serializer {serializer_version!r}, this is {SERIALIZER_VERSION!r}")
        try:
            workflow = deployment.serializer.deserialize_json(gzip.decompress(state))
        except Exception as exc:
            raise StateError(f"cannot restore instance state: {type(exc).__name__}: {exc}") from exc
        return cls(deployment, workflow, services)

    def dump(self) -> bytes:
        """Instance state only (no specs), gzipped JSON."""
        return gzip.compress(self.deployment.serializer.serialize_json(self._wf).encode(), compresslevel=5)

    serializer_version = SERIALIZER_VERSION

    def run(self) -> None:
        """Run every engine task that can run. Raises ExecutionError naming the failing element."""
        try:
            self._wf.do_engine_steps()
        except SpiffWorkflowException as exc:
            raise self._execution_error(exc) from exc
        except sandbox.SandboxError as exc:  # raised where SpiffWorkflow calls the environment directly
            error = ExecutionError(str(exc), file=self.deployment.file_of(self.process_id), element_id=None)
            error.cause = exc
            raise error from exc

    # ------------------------------------------------------------------ inspection
    @property
    def process_id(self) -> str:
        return str(self._wf.spec.name)

    @property
    def is_completed(self) -> bool:
        return bool(self._wf.is_completed())

    def data(self) -> dict[str, Any]:
        """The current variables: the end data when completed, else the last task's data."""
        if self._wf.is_completed():
            return dict(self._wf.data)
        task = self._wf.last_task or self._wf.task_tree
        return dict(task.data)

    def reached(self, bpmn_id: str) -> bool:
        """Whether an element with this BPMN id has completed in this instance."""
        return any(
            t.task_spec.bpmn_id == bpmn_id for t in self._wf.get_tasks(state=TaskState.COMPLETED)
        )

    def visited(self) -> list[str]:
        """BPMN ids of the completed elements in completion order (called processes included).

        A multi-instance activity counts once, when it completes; parallel branches that completed
        in the same instant keep the order of the task tree.
        """
        tasks = [t for t in self._wf.get_tasks(state=TaskState.COMPLETED)
                 if t.task_spec.bpmn_id and not t.task_spec.name.endswith(" [child]")]
        position = {t.id: i for i, t in enumerate(tasks)}
        tasks.sort(key=lambda t: (t.last_state_change, position[t.id]))
        return [t.task_spec.bpmn_id for t in tasks]

    def errored_tasks(self) -> list[str]:
        return [t.task_spec.bpmn_id for t in self._wf.get_tasks(state=TaskState.ERROR)]

    def ready_human_tasks(self) -> list[HumanTask]:
        """Every READY user/manual task, with its candidates resolved against its data."""
        return [self._describe(t) for t in self._wf.get_tasks(state=TaskState.READY, manual=True)]

    def next_timer_due(self) -> datetime | None:
        """When the earliest waiting timer fires, so a scheduler can wake the instance."""
        due: list[datetime] = []
        for event in self._wf.waiting_events():
            # event types are class names: TimeDate-, DurationTimer- and CycleTimerEventDefinition
            if str(event.event_type).startswith(("TimeDate", "DurationTimer", "CycleTimer")) \
                    and isinstance(event.value, str):
                try:
                    due.append(TimerEventDefinition.get_datetime(event.value))
                except Exception:
                    continue
        return min(due) if due else None

    # ------------------------------------------------------------------ actions
    def complete(self, task_id: str, data: Mapping[str, Any] | None = None) -> HumanTask:
        """Complete a READY human task with `data`, then run until the instance waits again.

        Raises TaskNotFound (unknown id or not in this instance), TaskNotReady (not READY or not a
        human task: SpiffWorkflow's own `task.run()` would happily complete a FUTURE task),
        ValueError (a reserved key in `data`) and ExecutionError.
        """
        task = self._find(task_id)
        if task.state != TaskState.READY or not task.task_spec.manual:
            state = TaskState.get_name(task.state) if task.task_spec.manual else "not a human task"
            raise TaskNotReady(task_id, str(state))
        payload = dict(data or {})
        bad = [k for k in payload if not isinstance(k, str) or k.startswith(RESERVED_PREFIX)]
        if bad:
            raise ValueError(f"reserved keys cannot be written by a task completion: {sorted(map(str, bad))}")
        described = self._describe(task)
        task.set_data(**payload)
        try:
            task.run()
        except SpiffWorkflowException as exc:
            raise self._execution_error(exc) from exc
        self.run()
        return described

    def waiting_messages(self) -> list[str]:
        """Names of the messages the instance is waiting for right now (its allowed transitions)."""
        return sorted(self._message_definitions())

    def send_message(self, name: str, payload: Mapping[str, Any] | None = None) -> None:
        """Deliver a message to the catch event waiting for it, then run on.

        Raises MessageNotExpected when nothing waits for `name`, and ExecutionError.
        """
        definitions = self._message_definitions()
        definition = definitions.get(name)
        if definition is None:
            raise MessageNotExpected(name, sorted(definitions))
        try:
            # The waiting spec's own definition object: SpiffWorkflow matches events by class.
            self._wf.send_event(BpmnEvent(definition, dict(payload or {})))
        except SpiffWorkflowException as exc:
            raise self._execution_error(exc) from exc
        self.run()

    def _message_definitions(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for task in self._wf.event_manager.tasks.values():
            definition = task.task_spec.event_definition
            # an event-based gateway holds the definitions of all its branches
            for item in getattr(definition, "event_definitions", [definition]):
                if isinstance(item, MessageEventDefinition):
                    found[item.name] = item
        return found

    def fire_timer(self, bpmn_id: str) -> None:
        """Fire the waiting timer event `bpmn_id` now, whatever its due time ("send the reminder now").

        Raises TaskNotFound when no timer with that id is waiting, and ExecutionError.
        """
        try:
            self._wf.refresh_timers()  # a timer reached but never checked has no due time yet
        except SpiffWorkflowException as exc:
            raise self._execution_error(exc) from exc
        # just past, so that a cycle fires once and its next occurrence stays one period away
        past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        waiting = [t for t in self._wf.get_tasks(state=TaskState.WAITING) if t.task_spec.bpmn_id == bpmn_id
                   and isinstance(getattr(t.task_spec, "event_definition", None), TimerEventDefinition)]
        if not waiting:
            raise TaskNotFound(f"no timer {bpmn_id!r} is waiting in this instance")
        for task in waiting:
            value = task.internal_data.get("event_value")
            if isinstance(value, dict):  # a cycle: move its next occurrence into the past
                value["next"] = past
            else:
                task.internal_data["event_value"] = past
        self.fire_due_timers()

    def fire_due_timers(self) -> None:
        """Fire every timer whose time has come, then run on."""
        self._wf.refresh_timers()
        self.run()

    def cancel(self) -> None:
        self._wf.cancel()

    # ------------------------------------------------------------------ incidents
    def failed_task(self) -> dict[str, Any] | None:
        """After an ExecutionError: the first task in ERROR as {task_id, bpmn_id, data (a copy)}."""
        for task in self._wf.get_tasks(state=TaskState.ERROR):
            return {"task_id": str(task.id), "bpmn_id": task.task_spec.bpmn_id, "data": dict(task.data)}
        return None

    def merge_data(self, data: Mapping[str, Any]) -> None:
        """Merge corrected `data` into every READY or WAITING task: the steps that run next inherit it.

        Raises ValueError for reserved keys, as `complete` does.
        """
        payload = dict(data)
        bad = [k for k in payload if not isinstance(k, str) or k.startswith(RESERVED_PREFIX)]
        if bad:
            raise ValueError(f"reserved keys cannot be written: {sorted(map(str, bad))}")
        for task in self._wf.get_tasks(state=TaskState.READY | TaskState.WAITING):
            task.set_data(**payload)

    # ------------------------------------------------------------------ helpers
    def _find(self, task_id: str) -> Any:
        try:
            uid = UUID(str(task_id))
            return self._wf.get_task_from_id(uid)
        except (ValueError, TaskNotFoundException):
            raise TaskNotFound(f"no task {task_id} in this instance") from None

    def _describe(self, task: Any) -> HumanTask:
        spec = task.task_spec
        top = task.workflow.top_workflow.spec.name
        meta = self.deployment.meta_for(top, spec.bpmn_id)
        ready_at = datetime.fromtimestamp(task.last_state_change, UTC)
        groups = _names(self._resolve(task, meta.candidate_groups))
        users = _names(self._resolve(task, meta.candidate_users))
        if not groups and not users and spec.lane:
            groups = (spec.lane,)
        assignee = self._resolve(task, meta.assignee)
        return HumanTask(
            id=str(task.id),
            bpmn_id=spec.bpmn_id,
            name=spec.bpmn_name or spec.bpmn_id,
            process_id=top,
            lane=spec.lane,
            candidate_groups=groups,
            candidate_users=users,
            assignee=str(assignee) if assignee else None,
            due_at=self._due(task, meta.due_date, ready_at),
            ready_at=ready_at,
            documentation=getattr(spec, "documentation", None),
            form_key=meta.form_key,
            multi_instance=spec.name.endswith(" [child]"),
        )

    def _resolve(self, task: Any, value: str | None) -> Any:
        if not value:
            return None
        value = value.strip()
        if value.startswith("${") and value.endswith("}"):
            try:
                return self._wf.script_engine.evaluate(task, value[2:-1])
            except SpiffWorkflowException as exc:
                raise self._execution_error(exc) from exc
        return value

    def _due(self, task: Any, value: str | None, ready_at: datetime) -> datetime | None:
        resolved = self._resolve(task, value)
        if resolved is None or resolved == "":
            return None
        if isinstance(resolved, datetime):
            return resolved if resolved.tzinfo else resolved.replace(tzinfo=UTC)
        if isinstance(resolved, date):
            return datetime(resolved.year, resolved.month, resolved.day, tzinfo=UTC)
        text = str(resolved)
        try:
            if text.startswith("P"):
                parsed = TimerEventDefinition.parse_iso_duration(text)
                return ready_at + TimerEventDefinition.get_timedelta_from_start(parsed, ready_at)
            parsed_dt = datetime.fromisoformat(text)
        except Exception as exc:
            raise ExecutionError(
                f"due date {text!r} is neither an ISO-8601 date-time nor a duration",
                file=self.deployment.file_of(task.workflow.top_workflow.spec.name),
                element_id=task.task_spec.bpmn_id,
            ) from exc
        return parsed_dt if parsed_dt.tzinfo else parsed_dt.replace(tzinfo=UTC)

    def _execution_error(self, exc: SpiffWorkflowException) -> ExecutionError:
        task = getattr(exc, "task", None)
        task_spec = getattr(exc, "task_spec", None) or (task.task_spec if task is not None else None)
        process_id = self.process_id
        if task is not None:
            process_id = task.workflow.top_workflow.spec.name
        line = getattr(exc, "line_number", None)
        error = ExecutionError(
            str(exc).strip(),
            file=self.deployment.file_of(process_id),
            element_id=getattr(task_spec, "bpmn_id", None),
            line=line if isinstance(line, int) and line > 0 else None,
        )
        error.cause = exc.__cause__ or getattr(exc, "exception", None)
        return error


def decide(deployment: Deployment, decision_id: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluate one decision table of `deployment` against `data`, outside any process.

    Returns the outputs of the matching rule(s) exactly as a business rule task would merge them
    ({} when no rule matches). Raises DeploymentError (unknown decision) and ExecutionError.
    """
    table = deployment.decision(decision_id)
    file = deployment.decision_files.get(decision_id)
    workflow = SimpleNamespace(script_engine=_ScriptEngine(_no_services), spec=SimpleNamespace(file=file))
    workflow.top_workflow = workflow
    spec = SimpleNamespace(name=decision_id, bpmn_id=decision_id, bpmn_name=decision_id)
    task = SimpleNamespace(data=dict(data), workflow=workflow, id=None, task_spec=spec)
    try:
        return dict(table.result(task))
    except (SpiffWorkflowException, sandbox.SandboxError) as exc:
        error = ExecutionError(str(exc).strip(), file=file, element_id=decision_id)
        error.cause = exc.__cause__ or exc
        raise error from exc


def _names(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, (list, tuple, set)):
        items = list(value)
    else:
        items = [value]
    return tuple(dict.fromkeys(str(i).strip() for i in items if str(i).strip()))
