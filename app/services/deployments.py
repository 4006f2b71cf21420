"""Process definitions as analysts manage them: validate, deploy, list, download, diff; move instances.

Deploying and moving instances are for administrators and members of the group `analysts`;
reading deployments is for every signed-in user. A deployment is a complete bundle: every
`.bpmn` and `.dmn` file the service runs, validated as a whole before anything is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from workflows import Deployment, Problem
from workflows.deployment import MAX_FILE_BYTES
from workflows.diff import diff_bundles
from workflows.migration import MigrationPlan, MigrationRefused, migrate, plan_migration
from workflows.validation import check_bundle, describe

from ..errors import Conflict, Forbidden, NotFound, PayloadTooLarge, ValidationFailed
from ..models import DeploymentRecord, Group, HumanTaskRow, TaskCandidate, User, WorkflowInstance
from ..uow import UnitOfWork
from . import audit, runtime
from .identity import group_names
from .records import Page, paginate

ANALYSTS = "analysts"
MOVABLE = ("running", "incident")
CONTENT_TYPE = "application/xml"


@dataclass
class DeploymentView:
    version: int
    hash: str
    created_at: Any
    created_by: str | None
    files: list[dict[str, Any]]
    processes: list[str]


@dataclass
class Validation:
    valid: bool
    problems: list[dict[str, object]] = field(default_factory=list)


def require_analyst(uow: UnitOfWork, user: User, action: str = "manage process definitions") -> None:
    """Raises Forbidden unless the user is an administrator or a member of `analysts`."""
    if user.is_admin or ANALYSTS in group_names(uow, user.id):
        return
    raise Forbidden(f"only administrators and members of the group {ANALYSTS!r} may {action}")


def known_groups(uow: UnitOfWork) -> set[str]:
    return set(uow.s.scalars(select(Group.name)))


def _refuse_oversize(files: dict[str, bytes]) -> None:
    for name, content in sorted(files.items()):
        if len(content) > MAX_FILE_BYTES:
            raise PayloadTooLarge(f"{name} has {len(content)} bytes; a diagram may have at most {MAX_FILE_BYTES}",
                                  file=name, limit=MAX_FILE_BYTES)


def _problems(uow: UnitOfWork, cache: runtime.DeploymentCache, files: dict[str, bytes]) -> list[Problem]:
    checked = check_bundle(files, known_groups(uow))
    problems = list(checked.problems)
    if checked.deployment is not None:
        problems.extend(_keeps_running_processes(uow, cache, checked.deployment))
    return problems


def _keeps_running_processes(uow: UnitOfWork, cache: runtime.DeploymentCache, new: Deployment) -> list[Problem]:
    # New milestones and rounds start their processes from the latest deployment: a version that
    # drops one would break every later start.
    latest = uow.s.scalar(select(DeploymentRecord).order_by(DeploymentRecord.version.desc()).limit(1))
    if latest is None:
        return []
    missing = sorted(set(cache.get(uow, latest.hash).executable) - set(new.executable))
    return [Problem(f"executable process {pid!r} of v{latest.version} is missing: the service starts it from the "
                    "latest version; a deployment is the complete bundle") for pid in missing]


def _refusal(problems: list[Problem]) -> ValidationFailed:
    errors: dict[str, list[str]] = {}
    for p in problems:
        errors.setdefault(p.file or "bundle", []).append(describe(p))
    return ValidationFailed(f"the bundle has {len(problems)} problem(s); nothing was stored", errors,
                            problems=[p.as_dict() for p in problems])


# --------------------------------------------------------------------------- validate, deploy
def validate_files(uow: UnitOfWork, cache: runtime.DeploymentCache, user: User | None,
                   files: dict[str, bytes]) -> Validation:
    """Every problem of the bundle, against this database's groups and latest version; stores nothing.

    `user` None is the command line. Raises Forbidden, PayloadTooLarge.
    """
    if user is not None:
        require_analyst(uow, user, "validate process definitions")
    _refuse_oversize(files)
    problems = _problems(uow, cache, files)
    return Validation(valid=not problems, problems=[p.as_dict() for p in problems])


def deploy_files(uow: UnitOfWork, cache: runtime.DeploymentCache, user: User | None,
                 files: dict[str, bytes]) -> tuple[DeploymentView, bool]:
    """Validate the bundle and store it as the next version unless an identical one exists; commits.

    `user` None is the `milestones deploy` command (whoever has the database). Raises Forbidden,
    PayloadTooLarge (a file over the cap) and ValidationFailed (`problems` lists every problem with
    file, element id and line); nothing is stored then.
    """
    if user is not None:
        require_analyst(uow, user, "deploy process definitions")
    _refuse_oversize(files)
    problems = _problems(uow, cache, files)
    if problems:
        raise _refusal(problems)
    record, created = runtime.deploy(uow, cache, files, known_groups(uow))
    uow.commit()
    return _view(uow, cache, record), created


# --------------------------------------------------------------------------- read
def _record(uow: UnitOfWork, version: int) -> DeploymentRecord:
    record = uow.s.scalar(select(DeploymentRecord).where(DeploymentRecord.version == version))
    if record is None:
        raise NotFound(f"no deployment version {version}")
    return record


def _view(uow: UnitOfWork, cache: runtime.DeploymentCache, record: DeploymentRecord) -> DeploymentView:
    creator = uow.s.get(User, record.created_by_id) if record.created_by_id else None
    return DeploymentView(
        version=record.version, hash=record.hash, created_at=record.created_at,
        created_by=creator.username if creator else None,
        files=[{"name": f.name, "size": len(f.content), "sha256": f.sha256} for f in record.files],
        processes=list(cache.get(uow, record.hash).executable),
    )


def list_deployments(uow: UnitOfWork, cache: runtime.DeploymentCache, page: int, page_size: int) -> Page:
    """Newest first."""
    result = paginate(uow, select(DeploymentRecord).order_by(DeploymentRecord.version.desc()), page, page_size)
    result.items = [_view(uow, cache, r) for r in result.items]
    return result


def get_deployment(uow: UnitOfWork, cache: runtime.DeploymentCache, version: int) -> DeploymentView:
    return _view(uow, cache, _record(uow, version))


def get_file(uow: UnitOfWork, version: int, name: str) -> tuple[str, bytes, str]:
    """(name, content, content type) of one file of a version. Raises NotFound."""
    for file in _record(uow, version).files:
        if file.name == name:
            return file.name, file.content, CONTENT_TYPE
    raise NotFound(f"deployment version {version} has no file {name!r}")


def diff_versions(uow: UnitOfWork, a: int, b: int) -> dict[str, Any]:
    """Element-level changes from version `a` to version `b`."""
    old, new = _record(uow, a), _record(uow, b)
    diff = diff_bundles({f.name: f.content for f in old.files}, {f.name: f.content for f in new.files})
    return {"from_version": a, "to_version": b, "identical": diff.empty, **diff.as_dict()}


# --------------------------------------------------------------------------- migrate instances
@dataclass
class MigrationResult:
    instance_id: int
    possible: bool
    from_version: int | None = None
    to_version: int | None = None
    reasons: list[str] = field(default_factory=list)
    plan: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "possible": self.possible, "from_version": self.from_version,
                "to_version": self.to_version, "reasons": self.reasons, **(self.plan or {})}


def migrate_instances(uow: UnitOfWork, cache: runtime.DeploymentCache, user: User | None,
                      instance_ids: list[int], to_version: int, *, dry_run: bool = True) -> list[MigrationResult]:
    """Move running instances (or instances in an incident) to deployment `to_version`.

    A dry run reports, per instance, what would change and whether the move is possible, and changes
    nothing. A real run moves every instance or none: it raises Conflict (with the per-instance
    report) when one move is impossible, and Conflict when an instance changed meanwhile (optimistic
    version check). Each move re-saves the state, re-projects the open tasks and is audited; commits.
    `user` None is the command line.
    """
    if user is not None:
        require_analyst(uow, user, "migrate workflow instances")
    target_record = _record(uow, to_version)
    target = cache.get(uow, target_record.hash)
    results: list[MigrationResult] = []
    moves: list[tuple[runtime.LoadedInstance, Any, MigrationPlan]] = []
    versions = {r.hash: r.version for r in uow.s.scalars(select(DeploymentRecord))}
    for instance_id in dict.fromkeys(instance_ids):
        row = uow.s.get(WorkflowInstance, instance_id)
        if row is None:
            results.append(MigrationResult(instance_id, False, reasons=[f"no workflow instance {instance_id}"]))
            continue
        result = MigrationResult(instance_id, False, versions.get(row.deployment_hash), to_version)
        results.append(result)
        if row.status not in MOVABLE:
            result.reasons.append(f"the instance is {row.status}; only running instances can be moved")
            continue
        loaded = runtime.load_instance(uow, cache, instance_id)
        if dry_run:
            plan = plan_migration(loaded.instance, target)
        else:
            try:
                moved, plan = migrate(loaded.instance, target, loaded.services)
            except MigrationRefused as exc:
                plan = exc.plan
            else:
                moves.append((loaded, moved, plan))
        result.possible, result.reasons, result.plan = plan.possible, list(plan.reasons), plan.as_dict()
    if dry_run:
        return results
    refused = [r for r in results if not r.possible]
    if refused:
        raise Conflict(f"{len(refused)} of {len(results)} instance(s) cannot be moved to v{to_version}; "
                       "nothing was changed", instances=[r.as_dict() for r in results])
    for loaded, moved, plan in moves:
        move_loaded(uow, loaded, moved, plan, versions.get(loaded.row.deployment_hash), target_record)
    uow.commit()
    return results


def migrate_to_latest(uow: UnitOfWork, cache: runtime.DeploymentCache, instance_id: int) -> MigrationPlan:
    """Move one instance to the latest deployment inside the caller's transaction (no commit).

    Raises Conflict with the reasons when the move is impossible.
    """
    target, record = cache.latest(uow)
    loaded = runtime.load_instance(uow, cache, instance_id)
    before = uow.s.scalar(select(DeploymentRecord.version).where(DeploymentRecord.hash == loaded.row.deployment_hash))
    try:
        moved, plan = migrate(loaded.instance, target, loaded.services)
    except MigrationRefused as exc:
        raise Conflict(f"instance {instance_id} cannot be moved to v{record.version}: {exc}",
                       reasons=list(exc.plan.reasons)) from exc
    if not plan.unchanged:
        move_loaded(uow, loaded, moved, plan, before, record)
    return plan


def move_loaded(uow: UnitOfWork, loaded: runtime.LoadedInstance, moved: Any, plan: MigrationPlan,
                from_version: int | None, target: DeploymentRecord) -> None:
    row = loaded.row
    before = {"deployment": row.deployment_hash, "version": from_version}
    row.deployment_hash = target.hash
    moved_loaded = runtime.LoadedInstance(uow, row, moved, loaded.services)
    moved_loaded.save()  # the instance row's version column makes a concurrent change a Conflict here
    _refresh_open_tasks(uow, row, moved.ready_human_tasks())
    audit.record(uow, "workflow.migrated", "workflow_instance", row.id, before=before,
                 after={"deployment": target.hash, "version": target.version, "plan": plan.as_dict()})


def _refresh_open_tasks(uow: UnitOfWork, row: WorkflowInstance, ready: list[Any]) -> None:
    """The projection keeps a task row across saves; a new version may rename it or change its candidates."""
    by_id = {t.id: t for t in ready}
    for task_row in uow.s.scalars(select(HumanTaskRow).where(HumanTaskRow.instance_id == row.id,
                                                              HumanTaskRow.status == "open")):
        task = by_id.get(task_row.id)
        if task is None:
            continue
        task_row.name, task_row.lane, task_row.documentation = task.name, task.lane, task.documentation
        wanted = {("group", g) for g in task.candidate_groups} | {("user", u) for u in task.candidate_users}
        current = {(c.kind, c.name): c for c in task_row.candidates}
        for key, candidate in current.items():
            if key not in wanted:
                task_row.candidates.remove(candidate)
        for kind, name in sorted(wanted - set(current)):
            task_row.candidates.append(TaskCandidate(kind=kind, name=name))
    uow.flush()
