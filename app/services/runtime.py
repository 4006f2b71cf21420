"""The bridge between the database and `workflows`: deployments, instance load/save, projection.

Every save writes the instance state with an optimistic version check and rewrites the
instance's rows in the human-task projection in the same transaction, so inboxes never need
to deserialize workflow state. Service tasks of the diagrams call `MilestoneServices`, whose
effects (status changes, fund releases) land in that same transaction too.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

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
from . import audit

APPROVAL_PROCESS = "milestone_approval"
LIFECYCLE_PROCESS = "milestone_lifecycle"
MILESTONE_STATUSES = ("draft", "active", "submitted", "approved", "declined", "completed", "cancelled")


class DeploymentCache:
    """Parsed deployments by content hash; parsing happens once per process and version."""

    def __init__(self) -> None:
        self._by_hash: dict[str, Deployment] = {}
        self._lock = threading.Lock()

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

    def __call__(self, call: ServiceCall) -> Any:
        handler = getattr(self, f"op_{call.operation}", None)
        if handler is None:
            raise LookupError(f"unknown service operation {call.operation!r}")
        return handler(call)

    def _milestone(self) -> Milestone:
        if self.milestone is None:
            raise LookupError("this instance is not bound to a milestone")
        return self.milestone

    def op_set_milestone_status(self, call: ServiceCall) -> dict[str, Any]:
        milestone = self._milestone()
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
        milestone = self._milestone()
        if int(call.params.get("milestone_id", -1)) != milestone.id:
            raise ValueError("release_funds was called for another milestone")
        amount = Decimal(str(call.params.get("amount")))
        currency = str(call.params.get("currency"))
        if milestone.amount is None or amount != milestone.amount or currency != milestone.currency:
            raise ValueError(f"release of {amount} {currency} does not match the milestone "
                             f"({milestone.amount} {milestone.currency})")
        existing = self.uow.s.scalar(select(FundRelease).where(FundRelease.milestone_id == milestone.id))
        if existing is not None:
            if existing.task_id == call.task_id:  # the same step run again: same answer, no new money
                return {"release_id": existing.id, "amount": str(existing.amount), "currency": existing.currency}
            raise Conflict(f"funds of milestone {milestone.id} were already released (release {existing.id})")
        release = FundRelease(milestone_id=milestone.id, instance_id=self._instance_id(), task_id=call.task_id,
                              amount=amount, currency=currency, round=milestone.round)
        self.uow.s.add(release)
        self.uow.flush()
        audit.record(self.uow, "funds.released", "milestone", milestone.id,
                     after={"release_id": release.id, "amount": amount, "currency": currency, "task_id": call.task_id})
        return {"release_id": release.id, "amount": str(amount), "currency": currency}

    def op_start_next_round(self, call: ServiceCall) -> dict[str, Any]:
        self.next_round_requested = True
        return {"requested": True, "from_round": call.params.get("from_round")}

    def op_start_approval_round(self, call: ServiceCall) -> dict[str, Any]:
        # The round starts as its own instance once the lifecycle instance is saved.
        self.approval_round_requested = True
        return {"requested": True}

    def op_set_published(self, call: ServiceCall) -> dict[str, Any]:
        milestone = self._milestone()
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
        milestone = self._milestone()
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

    def _instance_id(self) -> int:
        if self.instance_row is None or self.instance_row.id is None:
            self.uow.flush()
        assert self.instance_row is not None
        return self.instance_row.id


class LoadedInstance:
    """An instance row, its restored engine instance and the services bound to this transaction."""

    def __init__(self, uow: UnitOfWork, row: WorkflowInstance, instance: Instance, services: MilestoneServices):
        self.uow = uow
        self.row = row
        self.instance = instance
        self.services = services

    def save(self) -> list[HumanTaskRow]:
        """Write state (optimistic version check at flush) and rewrite the task projection."""
        row, instance = self.row, self.instance
        row.state = instance.dump()
        row.serializer_version = instance.serializer_version
        row.updated_at = utcnow()
        row.next_timer_at = instance.next_timer_due()
        row.waiting_for = instance.waiting_messages()
        if instance.is_completed and row.status == "running":
            row.status = "completed"
            row.completed_at = utcnow()
        self.uow.flush()
        return project_tasks(self.uow, row, instance.ready_human_tasks())


def start_instance(uow: UnitOfWork, cache: DeploymentCache, milestone: Milestone, data: dict[str, Any],
                   process_id: str = APPROVAL_PROCESS, round: int | None = None) -> LoadedInstance:
    deployment, record = cache.latest(uow)
    row = WorkflowInstance(milestone_id=milestone.id, round=milestone.round if round is None else round,
                           process_id=process_id,
                           deployment_hash=record.hash, serializer_version=workflows.SERIALIZER_VERSION,
                           state=b"", status="running")
    uow.s.add(row)
    uow.flush()  # a second submission of the same round fails here on the unique key
    services = MilestoneServices(uow, cache, milestone, row)
    try:
        instance = Instance.start(deployment, process_id, data, services)
    except ExecutionError as exc:
        raise execution_failure(exc) from exc
    loaded = LoadedInstance(uow, row, instance, services)
    audit.record(uow, "workflow.started", "workflow_instance", row.id,
                 after={"milestone_id": milestone.id, "round": row.round, "deployment": record.hash,
                        "deployment_version": record.version, "process_id": process_id})
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
    return LoadedInstance(uow, row, instance, services)


def project_tasks(uow: UnitOfWork, row: WorkflowInstance, ready: list[HumanTask]) -> list[HumanTaskRow]:
    """Make the open projection rows of `row` equal to `ready`; rows that left are cancelled."""
    existing = {t.id: t for t in uow.s.scalars(
        select(HumanTaskRow).where(HumanTaskRow.instance_id == row.id, HumanTaskRow.status == "open")
    )}
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
    uow.flush()
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
