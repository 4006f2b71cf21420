"""Milestones: creation and the lifecycle transitions, which the lifecycle workflow executes.

The API never writes `status` or `published`: it sends the lifecycle instance a message
(activate, publish, unpublish, submit, cancel) and the diagram's service steps make the change.
The messages an instance waits for are projected on its row at every save, so the allowed
transitions are known without deserializing workflow state.
"""

from __future__ import annotations

from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import and_, bindparam, func, select
from sqlalchemy.orm import aliased

from workflows import ExecutionError, MessageNotExpected

from ..errors import Conflict, InvalidTransition, NotFound, ValidationFailed
from ..models import Contact, Contract, HumanTaskRow, Milestone, TaskCandidate, User, WorkflowInstance
from ..uow import UnitOfWork
from . import audit
from .runtime import (
    APPROVAL_PROCESS,
    LIFECYCLE_PROCESS,
    DeploymentCache,
    LoadedInstance,
    execution_failure,
    load_instance,
    start_instance,
)

MILESTONE_TYPES = ("financial", "non_financial")
API_ACTIONS = ("activate", "publish", "unpublish", "submit", "cancel")
OPEN_STATUSES = ("draft", "active", "submitted", "approved", "declined")
CENT = Decimal("0.01")


def create_milestone(uow: UnitOfWork, cache: DeploymentCache, contract_id: int, code: str, type: str, *,
                     currency: str | None = None, amount: Decimal | None = None,
                     percentage: Decimal | None = None, description: str = "", due_date: date | None = None,
                     external_refs: list[dict[str, str]] | None = None,
                     primary_contact_id: int | None = None,
                     attributes: dict[str, Any] | None = None, release_percentage: Decimal | None = None,
                     retainage_percentage: Decimal | None = None,
                     retention_of_id: int | None = None) -> Milestone:
    """Create a draft milestone on a contract and start its lifecycle workflow.

    Raises ValidationFailed (field errors), NotFound (contract), Conflict (duplicate code, or the
    milestones would exceed the contract value: the detail says by how much).
    """
    contract = uow.s.get(Contract, contract_id)
    if contract is None:
        raise NotFound(f"no contract {contract_id}")
    errors: dict[str, list[str]] = {}
    currency = (currency or contract.currency).upper()
    if currency != contract.currency:
        errors["currency"] = [f"must be the contract currency {contract.currency}"]
    if amount is not None and percentage is not None:
        errors["percentage"] = ["give an amount or a percentage, not both"]
    if percentage is not None:
        if contract.value is None:
            errors["percentage"] = ["the contract has no value to take a percentage of"]
        elif not errors.get("percentage"):
            amount = (contract.value * percentage / 100).quantize(CENT, rounding=ROUND_HALF_UP)
    if type == "financial" and (amount is None or amount <= 0):
        errors.setdefault("amount", ["a financial milestone needs a positive amount or percentage"])
    if type == "non_financial" and amount not in (None, Decimal("0")):
        errors["amount"] = ["a non-financial milestone has no amount"]
    if primary_contact_id is not None:
        contact = uow.s.get(Contact, primary_contact_id)
        if contact is None or contact.account_id != contract.account_id:
            errors["primary_contact_id"] = [f"no contact {primary_contact_id} on the contract's account"]
    if retention_of_id is not None:
        original = uow.s.get(Milestone, retention_of_id)
        if original is None or original.contract_id != contract.id:
            errors["retention_of_id"] = [f"no milestone {retention_of_id} on this contract"]
        elif original.type != "financial":
            errors["retention_of_id"] = [f"milestone {original.code} is non-financial: it holds no money"]
    if type == "non_financial" and (release_percentage is not None or retainage_percentage is not None):
        errors.setdefault("retainage_percentage", ["a non-financial milestone releases no money of its own"])
    seen: set[tuple[str, str]] = set()
    for ref in external_refs or []:
        key = (ref["system"], ref["reference"])
        if key in seen:
            errors["external_refs"] = [f"duplicate reference {ref['system']}:{ref['reference']}"]
        seen.add(key)
    if errors:
        raise ValidationFailed("the milestone is not valid", errors)
    # One query for both checks: is the code taken, and what do the contract's milestones total.
    taken, committed = uow.s.execute(select(
        func.count().filter(Milestone.code == code),
        func.coalesce(func.sum(Milestone.amount).filter(Milestone.status != "cancelled"), 0),
    ).where(Milestone.contract_id == contract_id)).one()
    if taken:
        raise Conflict(f"milestone code {code!r} already exists on contract {contract.number}", field="code")
    if amount and contract.value is not None:
        total = Decimal(committed) + amount
        if total > contract.value:
            raise Conflict(
                f"milestone amounts would total {total} {currency}, {total - contract.value} {currency} more than "
                f"the contract value {contract.value} {currency}",
                contract_value=str(contract.value), milestones_total=str(total), excess=str(total - contract.value),
            )
    milestone = Milestone(
        contract_id=contract.id, account_id=contract.account_id, code=code, description=description, type=type,
        amount=amount, percentage=percentage, currency=currency, due_date=due_date,
        external_refs=list(external_refs or []), primary_contact_id=primary_contact_id,
        attributes=dict(attributes or {}), release_percentage=release_percentage,
        retainage_percentage=retainage_percentage, retention_of_id=retention_of_id, created_by_id=uow.actor_id,
    )
    uow.s.add(milestone)
    uow.flush()
    audit.record(uow, "milestone.created", "milestone", milestone.id,
                 after={"code": code, "type": type, "amount": amount, "percentage": percentage,
                        "currency": currency, "contract_id": contract.id})
    lifecycle = start_instance(uow, cache, milestone, {"milestone_id": milestone.id, "milestone_code": code},
                               process_id=LIFECYCLE_PROCESS, round=0)
    lifecycle.save()
    uow.commit()
    return milestone


# --------------------------------------------------------------------------- transitions
_LIFECYCLE_ROW = select(WorkflowInstance).where(
    WorkflowInstance.milestone_id == bindparam("milestone_id"), WorkflowInstance.process_id == LIFECYCLE_PROCESS,
    WorkflowInstance.status == "running")


def lifecycle_row(uow: UnitOfWork, milestone_id: int) -> WorkflowInstance | None:
    return uow.s.scalar(_LIFECYCLE_ROW, {"milestone_id": milestone_id})


# A milestone's running lifecycle instance (as `lifecycle_row` finds it), to join to a query so
# that one round trip reads both. Built once: building aliases and statements costs more than
# running them.
LIFECYCLE = aliased(WorkflowInstance, name="lifecycle")


def running_lifecycle_on(milestone_id: Any) -> Any:
    """The ON clause joining LIFECYCLE to `milestone_id` (a column)."""
    return and_(LIFECYCLE.milestone_id == milestone_id, LIFECYCLE.process_id == LIFECYCLE_PROCESS,
                LIFECYCLE.status == "running")


_MILESTONE_WITH_LIFECYCLE = (select(Milestone, LIFECYCLE).outerjoin(LIFECYCLE, running_lifecycle_on(Milestone.id))
                             .where(Milestone.id == bindparam("milestone_id")))


def milestone_with_lifecycle(uow: UnitOfWork, milestone_id: int) -> tuple[Milestone, WorkflowInstance | None]:
    """The milestone (NotFound) and its running lifecycle instance row, in one query."""
    found = uow.s.execute(_MILESTONE_WITH_LIFECYCLE, {"milestone_id": milestone_id}).first()
    if found is None:
        raise NotFound(f"no milestone {milestone_id}")
    return found[0], found[1]


_OPEN_REWORK_TASK = (
    select(HumanTaskRow).join(WorkflowInstance, WorkflowInstance.id == HumanTaskRow.instance_id).where(
        HumanTaskRow.milestone_id == bindparam("milestone_id"), HumanTaskRow.status == "open",
        WorkflowInstance.process_id == APPROVAL_PROCESS, HumanTaskRow.level.is_(None),  # not an approval seat
        select(TaskCandidate.task_id).where(TaskCandidate.task_id == HumanTaskRow.id,
                                            TaskCandidate.kind == "user").exists(),
    ).limit(1))


def open_rework_task(uow: UnitOfWork, milestone_id: int) -> HumanTaskRow | None:
    """The submitter's open rework task of a declined milestone, if there is one."""
    return uow.s.scalar(_OPEN_REWORK_TASK, {"milestone_id": milestone_id})


def allowed_actions(uow: UnitOfWork, milestone: Milestone) -> list[str]:
    """What the API may ask of this milestone now, read from projections only."""
    row = lifecycle_row(uow, milestone.id)
    waiting = set(row.waiting_for or []) if row is not None else set()
    allowed = {a for a in waiting if a in API_ACTIONS}
    allowed.discard("unpublish" if not milestone.published else "publish")
    if open_rework_task(uow, milestone.id) is not None:
        allowed.add("submit")
    return [a for a in API_ACTIONS if a in allowed]


def allows(uow: UnitOfWork, milestone: Milestone, action: str, row: WorkflowInstance | None) -> bool:
    """`action in allowed_actions(uow, milestone)` for an already read lifecycle `row`; looks
    for a rework task only when that decides (a submit the lifecycle does not wait for)."""
    waiting = set(row.waiting_for or []) if row is not None else set()
    if action in API_ACTIONS and action in waiting \
            and action != ("unpublish" if not milestone.published else "publish"):
        return True
    return action == "submit" and open_rework_task(uow, milestone.id) is not None


def refuse(uow: UnitOfWork, milestone: Milestone, action: str) -> InvalidTransition:
    allowed = allowed_actions(uow, milestone)
    return InvalidTransition(
        f"cannot {action} milestone {milestone.code}: it is {milestone.status}"
        + (" and published" if milestone.published else "")
        + (f"; allowed now: {', '.join(allowed)}" if allowed else "; nothing can change it now"),
        current=milestone.status, allowed=allowed,
    )


def transition(uow: UnitOfWork, cache: DeploymentCache, user: User, milestone_id: int, action: str) -> Milestone:
    """Ask the lifecycle workflow to activate, publish, unpublish or cancel the milestone.

    Raises NotFound, InvalidTransition (409 naming the current state and the allowed actions).
    """
    if action not in ("activate", "publish", "unpublish", "cancel"):
        raise ValidationFailed(f"unknown action {action!r}", {"action": [f"one of {API_ACTIONS}"]})
    milestone, row = milestone_with_lifecycle(uow, milestone_id)
    if not allows(uow, milestone, action, row):
        raise refuse(uow, milestone, action)
    loaded = load_lifecycle(uow, cache, milestone, row)
    send(loaded, action, user, flush=False)  # one flush, at the commit
    audit.record(uow, f"milestone.{action}_requested", "milestone", milestone.id,
                 after={"by": user.username, "status": milestone.status})
    uow.commit()
    return milestone


def send(loaded: LoadedInstance, message: str, user: User | None, *, flush: bool = True, **payload: Any) -> None:
    try:
        loaded.instance.send_message(message, {"by": user.username if user else None, **payload})
    except MessageNotExpected as exc:
        milestone = loaded.services.milestone
        assert milestone is not None
        raise InvalidTransition(str(exc), current=milestone.status, allowed=[]) from exc
    except ExecutionError as exc:
        raise execution_failure(exc) from exc
    loaded.save(flush=flush)


def load_lifecycle(uow: UnitOfWork, cache: DeploymentCache, milestone: Milestone,
                    row: WorkflowInstance | None = None) -> LoadedInstance:
    """The milestone's running lifecycle instance (`row`: its row, when the caller has read it)."""
    if row is None:
        row = lifecycle_row(uow, milestone.id)
    if row is None:
        raise refuse(uow, milestone, "change")
    return load_instance(uow, cache, row.id)


def notify_approval_completed(uow: UnitOfWork, cache: DeploymentCache, milestone: Milestone,
                              lifecycle: WorkflowInstance | None = None) -> None:
    """Tell the lifecycle that the approval rounds ended with the milestone completed.

    `lifecycle`: its running lifecycle row, if the caller read it already in this transaction.
    """
    row = lifecycle
    if row is None or row.status != "running" or row.milestone_id != milestone.id:
        row = lifecycle_row(uow, milestone.id)
    if row is None or "approval_completed" not in (row.waiting_for or []):
        return
    send(load_instance(uow, cache, row.id), "approval_completed", None, flush=False)  # flushed at the commit
