"""Contract transactions (payments, invoices, retainage...) and their link to financial milestones."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from sqlalchemy import select

from ..errors import Conflict, NotFound, ValidationFailed
from ..models import Contract, ContractTransaction, Milestone
from ..models.objectives import Objective
from ..uow import UnitOfWork
from . import audit, ledger
from .records import Page, paginate

KINDS = ("payment", "invoice", "retainage", "credit_note", "adjustment")
LINKABLE_STATUSES = ("draft", "active", "submitted", "declined")


def record_transaction(uow: UnitOfWork, contract_id: int, *, kind: str, amount: Decimal, currency: str,
                       occurred_on: date, external_ref: str | None = None, milestone_id: int | None = None,
                       objective_id: int | None = None) -> ContractTransaction:
    """Record a transaction on a contract, optionally linked at once. Raises NotFound, ValidationFailed."""
    contract = uow.s.get(Contract, contract_id)
    if contract is None:
        raise NotFound(f"no contract {contract_id}")
    errors: dict[str, list[str]] = {}
    if kind not in KINDS:
        errors["kind"] = [f"one of {', '.join(KINDS)}"]
    if amount <= 0:
        errors["amount"] = ["must be positive"]
    if currency.upper() != contract.currency:
        errors["currency"] = [f"mismatched currency: the contract is in {contract.currency}"]
    if errors:
        raise ValidationFailed("the transaction is not valid", errors)
    transaction = ContractTransaction(contract_id=contract.id, kind=kind, amount=amount, currency=currency.upper(),
                                      occurred_on=occurred_on, external_ref=external_ref,
                                      created_by_id=uow.actor_id)
    uow.s.add(transaction)
    uow.flush()
    audit.record(uow, "transaction.recorded", "contract", contract.id,
                 after={"transaction_id": transaction.id, "kind": kind, "amount": amount, "currency": currency})
    if milestone_id is not None:
        _link(uow, transaction, milestone_id, objective_id)
    uow.commit()
    return transaction


def link_transaction(uow: UnitOfWork, transaction_id: int, milestone_id: int,
                     objective_id: int | None = None) -> ContractTransaction:
    """Link to a financial milestone of the same contract (and optionally one of its objectives)."""
    transaction = get_transaction(uow, transaction_id)
    _link(uow, transaction, milestone_id, objective_id)
    uow.commit()
    return transaction


def unlink_transaction(uow: UnitOfWork, transaction_id: int) -> ContractTransaction:
    transaction = get_transaction(uow, transaction_id)
    if transaction.milestone_id is None:
        return transaction
    milestone = uow.s.get(Milestone, transaction.milestone_id)
    if milestone is not None and milestone.status not in LINKABLE_STATUSES:
        raise Conflict(f"milestone {milestone.code} is {milestone.status}; its transactions can no longer change",
                       current_state=milestone.status)
    before = {"milestone_id": transaction.milestone_id, "objective_id": transaction.objective_id}
    if milestone is not None:
        ledger.cancel_hold(uow, transaction, milestone)  # the held money is cancelled, never deleted
    transaction.milestone_id = None
    transaction.objective_id = None
    audit.record(uow, "transaction.unlinked", "transaction", transaction.id, before=before)
    uow.commit()
    return transaction


def _link(uow: UnitOfWork, transaction: ContractTransaction, milestone_id: int, objective_id: int | None) -> None:
    milestone = uow.s.get(Milestone, milestone_id)
    if milestone is None or milestone.contract_id != transaction.contract_id:
        raise ValidationFailed("unknown milestone", {"milestone_id": [f"no milestone {milestone_id} on this contract"]})
    if milestone.type != "financial":
        raise ValidationFailed(
            f"milestone {milestone.code} is non-financial: transactions link only to financial milestones",
            {"milestone_id": ["not a financial milestone"]})
    if milestone.currency != transaction.currency:
        raise ValidationFailed("mismatched currency", {"milestone_id": [f"the milestone is in {milestone.currency}"]})
    if objective_id is not None:
        objective = uow.s.get(Objective, objective_id)
        if objective is None or objective.milestone_id != milestone.id:
            raise ValidationFailed("unknown objective",
                                   {"objective_id": [f"no objective {objective_id} on milestone {milestone.code}"]})
    if milestone.status not in LINKABLE_STATUSES:
        raise Conflict(f"milestone {milestone.code} is {milestone.status}; transactions can no longer be linked",
                       current_state=milestone.status)
    if transaction.milestone_id == milestone.id and transaction.objective_id == objective_id:
        return  # linked so already: nothing moves
    # Its money moves with it: what it held for another milestone (or objective) is cancelled first.
    if transaction.milestone_id is not None:
        previous = uow.s.get(Milestone, transaction.milestone_id)
        if previous is not None:
            if previous.status not in LINKABLE_STATUSES:
                raise Conflict(f"transaction {transaction.id} belongs to milestone {previous.code}, which is "
                               f"{previous.status}", current_state=previous.status)
            ledger.cancel_hold(uow, transaction, previous)
    if milestone.amount is not None:
        linked = ledger.milestone_money(uow, milestone)["linked"]
        if linked + transaction.amount > milestone.amount:
            raise Conflict(
                f"linking {transaction.amount} {milestone.currency} would link {linked + transaction.amount} "
                f"{milestone.currency} to milestone {milestone.code}, more than its amount {milestone.amount} "
                f"{milestone.currency}: releases could exceed it", linked=str(linked),
                amount=str(milestone.amount), requested=str(transaction.amount),
                excess=str(linked + transaction.amount - milestone.amount))
    before = {"milestone_id": transaction.milestone_id, "objective_id": transaction.objective_id}
    transaction.milestone_id = milestone.id
    transaction.objective_id = objective_id
    audit.record(uow, "transaction.linked", "transaction", transaction.id, before=before,
                 after={"milestone_id": milestone.id, "objective_id": objective_id})
    audit.record(uow, "transaction.linked", "milestone", milestone.id,
                 after={"transaction_id": transaction.id, "amount": transaction.amount, "objective_id": objective_id})
    ledger.hold(uow, transaction, milestone)


def get_transaction(uow: UnitOfWork, transaction_id: int) -> ContractTransaction:
    transaction = uow.s.get(ContractTransaction, transaction_id)
    if transaction is None:
        raise NotFound(f"no transaction {transaction_id}")
    return transaction


def list_transactions(uow: UnitOfWork, contract_id: int, page: int, page_size: int,
                      milestone_id: int | None = None) -> Page:
    if uow.s.get(Contract, contract_id) is None:
        raise NotFound(f"no contract {contract_id}")
    stmt = select(ContractTransaction).where(ContractTransaction.contract_id == contract_id)
    if milestone_id is not None:
        stmt = stmt.where(ContractTransaction.milestone_id == milestone_id)
    return paginate(uow, stmt.order_by(ContractTransaction.occurred_on, ContractTransaction.id), page, page_size)
