"""Moving a running instance to another deployment, with a plan that says what would change first.

Built on SpiffWorkflow 3.2's `bpmn.util.diff`: task specs are aligned by BPMN id (then by
structure), READY and WAITING tasks are reset and re-predicted on the new spec. What it does not
check, and we do: a task that is active (READY, WAITING, STARTED, ERROR) on an element the new
version removed, a running subprocess whose process is gone, and any task, even a completed
one, left on a spec the target does not have (our state-only format stores task specs by name,
so such an instance could not be restored). The plan is computed by migrating a copy and
restoring it with the target deployment; only a plan that survived that is `possible`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from SpiffWorkflow.bpmn.util.diff import SpecDiff, WorkflowDiff, migrate_workflow
from SpiffWorkflow.util.task import TaskState

from .deployment import SERIALIZER_VERSION, Deployment
from .engine import Instance, ServiceHandler
from .errors import DeploymentError, StateError, WorkflowError

ACTIVE = TaskState.READY | TaskState.WAITING | TaskState.STARTED | TaskState.ERROR
RESET = TaskState.READY | TaskState.WAITING
FINISHED = TaskState.COMPLETED | TaskState.CANCELLED
NOT_YET = TaskState.FUTURE | TaskState.LIKELY | TaskState.MAYBE


@dataclass(frozen=True)
class TaskImpact:
    """What the move does to one task of the instance: `removed`, `changed` (fields) or `reset`."""

    task_id: str
    bpmn_id: str
    state: str
    impact: str
    fields: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "bpmn_id": self.bpmn_id, "state": self.state, "impact": self.impact,
                "fields": list(self.fields)}


@dataclass(frozen=True)
class MigrationPlan:
    """The dry run of a move: what changes, and whether the move is possible at all (else `reasons`)."""

    process_id: str
    source_hash: str
    target_hash: str
    possible: bool
    reasons: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    tasks: tuple[TaskImpact, ...] = ()

    @property
    def unchanged(self) -> bool:
        return self.source_hash == self.target_hash

    def as_dict(self) -> dict[str, Any]:
        return {
            "process_id": self.process_id, "possible": self.possible, "reasons": list(self.reasons),
            "elements": {"added": list(self.added), "removed": list(self.removed),
                         "changed": {k: list(v) for k, v in self.changed.items()}},
            "tasks": [t.as_dict() for t in self.tasks],
        }


class MigrationRefused(WorkflowError):
    """The instance cannot be moved to the target deployment; `plan.reasons` says why."""

    def __init__(self, plan: MigrationPlan):
        self.plan = plan
        super().__init__("; ".join(plan.reasons))


def plan_migration(instance: Instance, target: Deployment) -> MigrationPlan:
    """What moving `instance` to `target` would change. Never modifies `instance`."""
    return _migrate_copy(instance, target, None)[0]


def migrate(instance: Instance, target: Deployment, services: ServiceHandler | None = None) -> tuple[Instance,
                                                                                                     MigrationPlan]:
    """A new `Instance` on `target` with the state of `instance` moved over; `instance` is left as it was.

    Raises MigrationRefused when the plan is not possible.
    """
    plan, moved = _migrate_copy(instance, target, services)
    if not plan.possible or moved is None:
        raise MigrationRefused(plan)
    return moved, plan


def _name(spec: Any) -> str:
    return str(getattr(spec, "bpmn_id", None) or spec.name)


def _state(task: Any) -> str:
    return str(TaskState.get_name(task.state))


def _migrate_copy(instance: Instance, target: Deployment,
                  services: ServiceHandler | None) -> tuple[MigrationPlan, Instance | None]:
    source = instance.deployment
    process_id = instance.process_id
    base = {"process_id": process_id, "source_hash": source.hash, "target_hash": target.hash}
    if source.hash == target.hash:
        return MigrationPlan(possible=True, **base), instance
    try:
        new_spec, new_dependencies = target.spec(process_id)
    except DeploymentError:
        return MigrationPlan(possible=False, reasons=(f"the target has no executable process {process_id!r}",),
                             **base), None

    copy = Instance.restore(source, instance.dump(), SERIALIZER_VERSION, services)
    wf = copy._wf
    registry = target.serializer.registry
    spec_diff = SpecDiff(registry, wf.spec, new_spec)
    top = WorkflowDiff(wf, spec_diff)
    reasons: list[str] = []
    impacts: dict[str, TaskImpact] = {}
    for task in top.removed:
        if task.has_state(ACTIVE):
            reasons.append(f"task {_name(task.task_spec)} is {_state(task)} but its element was removed")
        impacts[str(task.id)] = TaskImpact(str(task.id), _name(task.task_spec), _state(task), "removed")
    for task in top.changed:
        if str(task.id) not in impacts and not task.has_state(FINISHED):
            impacts[str(task.id)] = TaskImpact(str(task.id), _name(task.task_spec), _state(task), "changed",
                                               tuple(spec_diff.changed.get(task.task_spec, ())))
    for task in wf.get_tasks(state=RESET, skip_subprocesses=True):
        impacts.setdefault(str(task.id), TaskImpact(str(task.id), _name(task.task_spec), _state(task), "reset"))

    sub_diffs: dict[Any, tuple[WorkflowDiff, Any]] = {}
    for sp_id, sub in wf.subprocesses.items():
        spec = new_dependencies.get(sub.spec.name)
        if spec is None:
            if not sub.is_completed():
                reasons.append(f"the running subprocess {sub.spec.name!r} is not in the target")
            continue
        sub_diffs[sp_id] = (WorkflowDiff(sub, SpecDiff(registry, sub.spec, spec)), spec)

    plan_fields = {
        "added": tuple(sorted(_name(s) for s in spec_diff.added if getattr(s, "bpmn_id", None))),
        "removed": tuple(sorted(_name(s) for s in spec_diff.removed if getattr(s, "bpmn_id", None))),
        "changed": {_name(s): tuple(v) for s, v in sorted(spec_diff.changed.items(), key=lambda i: _name(i[0]))
                    if getattr(s, "bpmn_id", None)},
        "tasks": tuple(impacts.values()),
    }
    if reasons:
        return MigrationPlan(possible=False, reasons=tuple(reasons), **base, **plan_fields), None

    migrate_workflow(top, wf, new_spec)
    wf.subprocess_specs = dict(new_dependencies)
    # An unfinished task (a multi-instance review with seats open) keeps the steps it predicted from the
    # old outputs; predict them again from the new ones, or a step added after it would be skipped.
    for task in wf.get_tasks(state=TaskState.STARTED | TaskState.READY | TaskState.WAITING, skip_subprocesses=True):
        outputs = list(task.task_spec.outputs)
        stale = [c for c in task.children if not c.triggered and c.has_state(NOT_YET)
                 and c.task_spec not in outputs]
        if not stale:
            continue
        for child in stale:
            wf._remove_task(child.id)
        present = {c.task_spec for c in task.children}
        for spec in outputs:
            if spec not in present:
                child = task._add_child(spec, TaskState.FUTURE)
                child.task_spec._predict(child, mask=TaskState.FUTURE | TaskState.PREDICTED_MASK)
    for sp_id, (diff, spec) in sub_diffs.items():
        migrate_workflow(diff, wf.subprocesses[sp_id], spec)
    for task in wf.get_tasks():
        owner = task.workflow.spec
        if owner.task_specs.get(task.task_spec.name) is not task.task_spec:
            reasons.append(f"{_state(task).lower()} task {_name(task.task_spec)} would be left on an element "
                           "the target does not have")
    if not reasons:
        moved = Instance(target, wf, services)
        try:
            # The proof: the moved state is written and read back with the target alone.
            restored = Instance.restore(target, moved.dump(), SERIALIZER_VERSION, services)
            restored.ready_human_tasks()
        except (StateError, WorkflowError, Exception) as exc:  # noqa: BLE001 - any failure means "not possible"
            reasons.append(f"the moved state does not restore on the target: {type(exc).__name__}: {exc}")
        else:
            return MigrationPlan(possible=True, **base, **plan_fields), restored
    return MigrationPlan(possible=False, reasons=tuple(dict.fromkeys(reasons)), **base, **plan_fields), None
