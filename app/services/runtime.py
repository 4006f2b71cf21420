"""The bridge between the database and `workflows`: deployments, instance load/save, projection.

Every save writes the instance state with an optimistic version check and rewrites the
instance's rows in the human-task projection in the same transaction, so inboxes never need
to deserialize workflow state. Service tasks of the diagrams call `MilestoneServices`, whose
effects (status changes, fund releases) land in that same transaction too.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import lazyload

import workflows
from workflows import Deployment, DeploymentError, ExecutionError, HumanTask, Instance, ServiceCall
from workflows.validation import check_bundle

from ..errors import Conflict, NotFound, WorkflowFailure
from ..models import (
    DeploymentFile,
    DeploymentRecord,
    FundRelease,
    HumanTaskRow,
    Milestone,
    TaskCandidate,
    User,
    WorkflowInstance,
    utcnow,
)
from ..uow import UnitOfWork, as_conflict
from . import audit, ledger, routing
from .routing import APPROVAL_PROCESS

LIFECYCLE_PROCESS = "milestone_lifecycle"
MILESTONE_STATUSES = ("draft", "active", "submitted", "approved", "declined", "completed", "cancelled")


@dataclass(frozen=True)
class CurrentDeployment:
    """The deployment new instances start on: parsed, with its hash and version (no ORM state)."""

    deployment: Deployment
    hash: str
    version: int


class DeploymentCache:
    """Parsed deployments by content hash; parsing happens once per process and version.

    It also remembers which deployment is the latest, for starting instances (`current`), for
    CURRENT_TTL seconds: a deployment committed through this cache takes effect at once, one
    committed by another process (`milestones deploy`, another worker) within CURRENT_TTL.
    Migration and validation read the latest from the database every time (`latest`).
    """

    CURRENT_TTL = 5.0

    def __init__(self) -> None:
        self._by_hash: dict[str, Deployment] = {}
        self._lock = threading.Lock()
        self._current: tuple[float, CurrentDeployment] | None = None

    def get(self, uow: UnitOfWork, deployment_hash: str) -> Deployment:
        deployment = self._by_hash.get(deployment_hash)
        if deployment is not None:
            return deployment
        record = uow.s.get(DeploymentRecord, deployment_hash)
        if record is None:
            raise NotFound(f"no deployment {deployment_hash}")
        deployment = Deployment.from_files({f.name: f.content for f in record.files})
        with self._lock:
            return self._by_hash.setdefault(deployment_hash, deployment)

    def add(self, deployment: Deployment) -> None:
        with self._lock:
            self._by_hash.setdefault(deployment.hash, deployment)

    def latest(self, uow: UnitOfWork) -> tuple[Deployment, DeploymentRecord]:
        record = uow.s.scalar(select(DeploymentRecord).order_by(DeploymentRecord.version.desc()).limit(1))
        if record is None:
            raise Conflict("no process definition is deployed; run `milestones deploy` or restart the service")
        return self.get(uow, record.hash), record

    def current(self, uow: UnitOfWork) -> CurrentDeployment:
        """The latest deployment, read from the database at most every CURRENT_TTL seconds."""
        cached = self._current
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.CURRENT_TTL:
            return cached[1]
        row = uow.s.execute(select(DeploymentRecord.hash, DeploymentRecord.version)
                            .order_by(DeploymentRecord.version.desc()).limit(1)).first()
        if row is None:
            raise Conflict("no process definition is deployed; run `milestones deploy` or restart the service")
        current = CurrentDeployment(self.get(uow, row.hash), row.hash, row.version)
        self._current = (now, current)
        return current

    def forget_current(self) -> None:
        """Read the latest deployment again on the next start (after a deployment committed)."""
        self._current = None


def deploy(uow: UnitOfWork, cache: DeploymentCache, files: dict[str, bytes],
           known_groups: set[str] | None = None) -> tuple[DeploymentRecord, bool]:
    """Validate, then store a bundle once per content hash. Returns (record, created).

    Raises DeploymentError listing every problem (`workflows.validation`); nothing is stored then.
    """
    checked = check_bundle(files, known_groups)
    if checked.deployment is None:
        raise DeploymentError(checked.problems)
    deployment = checked.deployment
    record = uow.s.get(DeploymentRecord, deployment.hash)
    if record is not None:
        cache.add(deployment)
        return record, False
    version = (uow.s.scalar(select(func.max(DeploymentRecord.version))) or 0) + 1
    record = DeploymentRecord(hash=deployment.hash, version=version, created_by_id=uow.actor_id)
    record.files = [
        DeploymentFile(name=name, content=content, sha256=hashlib.sha256(content).hexdigest())
        for name, content in sorted(deployment.files.items())
    ]
    uow.s.add(record)
    audit.record(uow, "deployment.created", "deployment", deployment.hash,
                 after={"version": version, "files": sorted(deployment.files), "processes": deployment.executable})
    uow.flush()
    cache.add(deployment)
    uow.after_commit(cache.forget_current)  # new instances start on it right away in this process
    return record, True


def deploy_directories(uow: UnitOfWork, cache: DeploymentCache, dirs: Iterable[Path]) -> tuple[DeploymentRecord, bool]:
    """Deploy the bundled `bpmn/` and `dmn/` files if their content is new; commits."""
    files: dict[str, bytes] = {}
    for directory in dirs:
        for path in sorted(Path(directory).glob("*")):
            if path.suffix in (".bpmn", ".dmn") and path.is_file():
                files[path.name] = path.read_bytes()
    if not files:
        raise DeploymentError([workflows.Problem(f"no .bpmn or .dmn files in {', '.join(map(str, dirs))}")])
    record, created = deploy(uow, cache, files)
    uow.commit()
    return record, created


class MilestoneServices:
    """What the diagrams' service tasks may do. Runs inside the caller's transaction."""

    def __init__(self, uow: UnitOfWork, cache: DeploymentCache, milestone: Milestone | None,
                 instance_row: WorkflowInstance | None):
        self.uow = uow
        self.cache = cache
        self.milestone = milestone
        self.instance_row = instance_row
        self.next_round_requested = False
        self.approval_round_requested = False
        # Approval levels opened in this transaction: the save makes their review children seats.
        self.opened_levels: list[Any] = []
        # Electorates resolved in this command (planning, then opening level 1, ask the same question).
        self.electorates: dict[Any, Any] = {}

    def __call__(self, call: ServiceCall) -> Any:
        handler = getattr(self, f"op_{call.operation}", None)
        if handler is None and call.operation in routing.OPERATIONS:
            return routing.OPERATIONS[call.operation](self, call)
        if handler is None:
            from .automation import OPERATIONS  # notify, escalate_tasks, the contact's to-dos

            operation = OPERATIONS.get(call.operation)
            if operation is None:
                raise LookupError(f"unknown service operation {call.operation!r}")
            return operation(self, call)
        return handler(call)

    def require_milestone(self) -> Milestone:
        """The instance's milestone; LookupError (a failing step) when it has none."""
        if self.milestone is None:
            raise LookupError("this instance is not bound to a milestone")
        return self.milestone


    def op_set_milestone_status(self, call: ServiceCall) -> dict[str, Any]:
        milestone = self.require_milestone()
        status = str(call.params.get("status"))
        if status not in MILESTONE_STATUSES:
            raise ValueError(f"unknown milestone status {status!r}")
        before = milestone.status
        milestone.status = status
        audit.record(self.uow, "milestone.status_changed", "milestone", milestone.id,
                     before={"status": before}, after={"status": status, "by_step": call.bpmn_id,
                                                       "round": milestone.round})
        return {"status": status, "previous": before}

    def op_release_funds(self, call: ServiceCall) -> dict[str, Any]:
        """The approval diagram's release step: moves what the ledger holds for this milestone (and
        the retention it releases) exactly once, with a payment instruction per movement in this same
        transaction. Run again (a retried job, a restarted worker), it moves nothing and answers the same."""
        milestone = self.require_milestone()
        if int(call.params.get("milestone_id", -1)) != milestone.id:
            raise ValueError("release_funds was called for another milestone")
        currency = str(call.params.get("currency") or milestone.currency)
        if currency != milestone.currency:
            raise ValueError(f"release in {currency} for a milestone in {milestone.currency}")
        step = f"{call.bpmn_id}:{call.task_id}"
        result = ledger.release_for_milestone(self.uow, milestone, step=step, instance_id=self.instance_row_id(),
                                              round=milestone.round)
        released = sum((e.amount for e in result.released + result.retention_released), Decimal("0"))
        # One header row per milestone, ever (unique keys on the milestone and the task): the step's record.
        values = dict(milestone_id=milestone.id, instance_id=self.instance_row_id(), task_id=call.task_id,
                      amount=released, currency=currency, round=milestone.round, released_at=utcnow())
        release_id = self.uow.insert_unless_exists(FundRelease, values, FundRelease.id)
        if release_id is None:
            existing = self.uow.s.scalar(select(FundRelease).where(FundRelease.milestone_id == milestone.id))
            if existing is None or existing.task_id != call.task_id:
                which = f"release {existing.id}" if existing is not None else f"by task {call.task_id}"
                raise Conflict(f"funds of milestone {milestone.id} were already released ({which})")
            release_id = existing.id
        else:
            audit.record(self.uow, "funds.released", "milestone", milestone.id, round=milestone.round,
                         after={"release_id": release_id, "amount": released, "currency": currency, "step": step,
                                **result.as_dict()})
        return {"release_id": release_id, "amount": str(released), "currency": currency, **result.as_dict()}

    def op_start_next_round(self, call: ServiceCall) -> dict[str, Any]:
        self.next_round_requested = True
        return {"requested": True, "from_round": call.params.get("from_round")}

    def op_start_approval_round(self, call: ServiceCall) -> dict[str, Any]:
        # The round starts as its own instance once the lifecycle instance is saved.
        self.approval_round_requested = True
        return {"requested": True}

    def op_set_published(self, call: ServiceCall) -> dict[str, Any]:
        milestone = self.require_milestone()
        published = bool(call.params.get("published"))
        before = {"published": milestone.published, "published_at": milestone.published_at}
        milestone.published = published
        milestone.published_at = utcnow() if published else None
        audit.record(self.uow, "milestone.published" if published else "milestone.unpublished", "milestone",
                     milestone.id, before=before,
                     after={"published": published, "published_at": milestone.published_at, "by_step": call.bpmn_id})
        return {"published": published}

    def op_cancel_approval_rounds(self, call: ServiceCall) -> dict[str, Any]:
        """Cancel every running approval round of the milestone; their tasks leave all inboxes."""
        milestone = self.require_milestone()
        cancelled = []
        running = self.uow.s.scalars(select(WorkflowInstance).where(
            WorkflowInstance.milestone_id == milestone.id, WorkflowInstance.process_id == APPROVAL_PROCESS,
            WorkflowInstance.status == "running"))
        for row in list(running):
            loaded = load_instance(self.uow, self.cache, row.id)
            loaded.instance.cancel()
            loaded.save()
            row.status = "cancelled"
            row.completed_at = utcnow()
            cancelled.append(row.id)
            audit.record(self.uow, "workflow.cancelled", "workflow_instance", row.id,
                         after={"milestone_id": milestone.id, "round": row.round, "by_step": call.bpmn_id})
        return {"cancelled_instances": cancelled}

    def instance_row_id(self) -> int:
        """The instance row's id (flushing a new row to get one)."""
        if self.instance_row is None or self.instance_row.id is None:
            self.uow.flush()
        assert self.instance_row is not None
        return self.instance_row.id



class LoadedInstance:
    """An instance row, its restored engine instance and the services bound to this transaction.

    `no_open_tasks` says that the instance has no open rows in the task projection (a new row,
    or one whose deployment gives its process no human task), so that `save` need not look.
    """

    def __init__(self, uow: UnitOfWork, row: WorkflowInstance, instance: Instance, services: MilestoneServices,
                 *, no_open_tasks: bool = False):
        self.uow = uow
        self.row = row
        self.instance = instance
        self.services = services
        self.no_open_tasks = no_open_tasks
        self._started_audit: dict[str, Any] | None = None

    def save(self, *, flush: bool = True) -> list[HumanTaskRow]:
        """Write state (optimistic version check at flush) and rewrite the task projection.

        Returns the task rows it created (the instance's other open rows, if any, were kept).
        flush=False leaves an existing row's UPDATE to the command's next flush or its commit.
        """
        row, instance = self.row, self.instance
        row.state = instance.dump()
        row.serializer_version = instance.serializer_version
        row.updated_at = utcnow()
        row.next_timer_at = instance.next_timer_due()
        row.waiting_for = instance.waiting_messages()
        if instance.is_completed and row.status == "running":
            row.status = "completed"
            row.completed_at = utcnow()
        ready = instance.ready_human_tasks()
        if row.id is None:
            self.uow.flush()  # the INSERT, state included; a second start of the same round fails here
        created = project_tasks(self.uow, row, ready, lookup=not self.no_open_tasks)
        if created and self.services.opened_levels:
            routing.seat_new_tasks(self.uow, self.services.opened_levels, created,
                                   {t.id for t in ready if t.multi_instance})
        self.services.opened_levels = []
        if created:
            routing.substitute_new_tasks(self.uow, created)
        if flush:
            self.uow.flush()
        # Every save makes the open rows equal to `ready` (task rows are only created here, other
        # code only closes them, and a concurrent save of the instance fails this one on its version).
        self.no_open_tasks = not ready
        if self._started_audit is not None:
            audit.record(self.uow, "workflow.started", "workflow_instance", row.id, after=self._started_audit)
            self._started_audit = None
        return created


def start_instance(uow: UnitOfWork, cache: DeploymentCache, milestone: Milestone, data: dict[str, Any],
                   process_id: str = APPROVAL_PROCESS, round: int | None = None) -> LoadedInstance:
    """Start an instance on the current deployment. The caller must `save()` it: the row is
    inserted, state included, by that save (a second start of the same round fails there on
    the unique key), which also writes the "workflow.started" audit event."""
    current = cache.current(uow)
    row = WorkflowInstance(milestone_id=milestone.id, round=milestone.round if round is None else round,
                           process_id=process_id,
                           deployment_hash=current.hash, serializer_version=workflows.SERIALIZER_VERSION,
                           state=b"", status="running")
    uow.s.add(row)
    services = MilestoneServices(uow, cache, milestone, row)
    try:
        instance = Instance.start(current.deployment, process_id, data, services)
    except ExecutionError as exc:
        raise execution_failure(exc) from exc
    loaded = LoadedInstance(uow, row, instance, services, no_open_tasks=True)
    loaded._started_audit = {"milestone_id": milestone.id, "round": row.round, "deployment": current.hash,
                             "deployment_version": current.version, "process_id": process_id}
    return loaded


def load_instance(uow: UnitOfWork, cache: DeploymentCache, instance_id: int) -> LoadedInstance:
    row = uow.s.get(WorkflowInstance, instance_id)
    if row is None:
        raise NotFound(f"no workflow instance {instance_id}")
    milestone = uow.s.get(Milestone, row.milestone_id) if row.milestone_id is not None else None
    services = MilestoneServices(uow, cache, milestone, row)
    deployment = cache.get(uow, row.deployment_hash)
    try:
        instance = Instance.restore(deployment, row.state, row.serializer_version, services)
    except workflows.StateError as exc:
        raise WorkflowFailure(str(exc), instance_id=instance_id) from exc
    # Saves keep the projection equal to the state's ready tasks: none if the process has none.
    try:
        no_open_tasks = not deployment.has_human_tasks(row.process_id)
    except DeploymentError:  # cannot tell: look
        no_open_tasks = False
    return LoadedInstance(uow, row, instance, services, no_open_tasks=no_open_tasks)


# Only the rows themselves: their candidates and assignee are not needed to project.
_OPEN_TASK_ROWS = (select(HumanTaskRow)
                   .where(HumanTaskRow.instance_id == bindparam("instance_id"), HumanTaskRow.status == "open")
                   .options(lazyload(HumanTaskRow.candidates), lazyload(HumanTaskRow.assignee)))


def project_tasks(uow: UnitOfWork, row: WorkflowInstance, ready: list[HumanTask], *,
                  lookup: bool = True) -> list[HumanTaskRow]:
    """Make the open projection rows of `row` equal to `ready`; rows that left are cancelled.

    Returns the rows it created (not flushed). lookup=False: the caller knows that `row` has no
    open rows, so none is read.
    """
    existing: dict[str, HumanTaskRow] = {}
    if lookup:
        existing = {t.id: t for t in uow.s.scalars(_OPEN_TASK_ROWS, {"instance_id": row.id})}
    ready_ids = {t.id for t in ready}
    now = utcnow()
    for task_id, task_row in existing.items():
        if task_id not in ready_ids:
            task_row.status = "cancelled"
            task_row.completed_at = now
    created: list[HumanTaskRow] = []
    for task in ready:
        task_row = existing.get(task.id)
        if task_row is None:
            task_row = HumanTaskRow(
                id=task.id, instance_id=row.id, milestone_id=row.milestone_id, process_id=task.process_id,
                bpmn_id=task.bpmn_id, name=task.name, lane=task.lane, documentation=task.documentation,
                status="open", due_at=task.due_at, created_at=task.ready_at,
            )
            task_row.candidates = [TaskCandidate(kind="group", name=g) for g in task.candidate_groups] + [
                TaskCandidate(kind="user", name=u) for u in task.candidate_users
            ]
            if task.assignee:
                assignee = uow.s.scalar(select(User).where(User.username == task.assignee))
                task_row.assignee_id = assignee.id if assignee else None
            uow.s.add(task_row)
            created.append(task_row)
        else:
            task_row.due_at = task.due_at
    return created


def execution_failure(exc: ExecutionError) -> Exception:
    """Map an engine failure to the domain error the caller should see."""
    # A service step that lost a race (stale row, unique key) is a conflict, not a broken diagram.
    conflict = as_conflict(exc.cause) if exc.cause is not None else None
    if conflict is not None:
        return conflict
    return StepFailed(exc)


class StepFailed(WorkflowFailure):
    """A script, decision or service step failed. Use cases that advance a saved instance turn it
    into an incident (`app.services.incidents.incident_on_failure`); elsewhere it stays a 500."""

    def __init__(self, error: ExecutionError):
        super().__init__(str(error), file=error.file, element_id=error.element_id)
        self.error = error
