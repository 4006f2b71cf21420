"""Accounts, contracts and milestones: create, list, get."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from ..errors import Conflict, NotFound, ValidationFailed
from ..models import Account, Contract, Milestone
from ..uow import UnitOfWork
from . import audit

MILESTONE_TYPES = ("financial", "non_financial")


@dataclass
class Page:
    items: list[Any]
    page: int
    page_size: int
    total: int


def paginate(uow: UnitOfWork, stmt: Any, page: int, page_size: int) -> Page:
    total = uow.s.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    items = list(uow.s.scalars(stmt.limit(page_size).offset((page - 1) * page_size)))
    return Page(items=items, page=page, page_size=page_size, total=total)


# --------------------------------------------------------------------------- accounts
def create_account(uow: UnitOfWork, name: str, external_ref: str | None = None) -> Account:
    if uow.s.scalar(select(Account.id).where(Account.name == name)) is not None:
        raise Conflict(f"an account named {name!r} already exists")
    account = Account(name=name, external_ref=external_ref, created_by_id=uow.actor_id)
    uow.s.add(account)
    uow.flush()
    audit.record(uow, "account.created", "account", account.id, after={"name": name})
    uow.commit()
    return account


def get_account(uow: UnitOfWork, account_id: int) -> Account:
    account = uow.s.get(Account, account_id)
    if account is None:
        raise NotFound(f"no account {account_id}")
    return account


def list_accounts(uow: UnitOfWork, page: int, page_size: int) -> Page:
    return paginate(uow, select(Account).order_by(Account.id), page, page_size)


# --------------------------------------------------------------------------- contracts
def create_contract(uow: UnitOfWork, account_id: int, number: str, title: str, currency: str,
                    value: Decimal | None = None) -> Contract:
    if uow.s.get(Account, account_id) is None:
        raise ValidationFailed("unknown account", {"account_id": [f"no account {account_id}"]})
    if uow.s.scalar(select(Contract.id).where(Contract.number == number)) is not None:
        raise Conflict(f"contract number {number!r} is already used")
    contract = Contract(account_id=account_id, number=number, title=title, currency=currency.upper(),
                        value=value, created_by_id=uow.actor_id)
    uow.s.add(contract)
    uow.flush()
    audit.record(uow, "contract.created", "contract", contract.id,
                 after={"number": number, "account_id": account_id, "value": value, "currency": currency})
    uow.commit()
    return contract


def get_contract(uow: UnitOfWork, contract_id: int) -> Contract:
    contract = uow.s.get(Contract, contract_id)
    if contract is None:
        raise NotFound(f"no contract {contract_id}")
    return contract


def list_contracts(uow: UnitOfWork, page: int, page_size: int, account_id: int | None = None) -> Page:
    stmt = select(Contract).order_by(Contract.id)
    if account_id is not None:
        stmt = stmt.where(Contract.account_id == account_id)
    return paginate(uow, stmt, page, page_size)


# --------------------------------------------------------------------------- milestones
def create_milestone(uow: UnitOfWork, contract_id: int, code: str, type: str, currency: str | None = None,
                     amount: Decimal | None = None, description: str = "", due_date: date | None = None) -> Milestone:
    """Create a draft milestone on a contract. Raises ValidationFailed, Conflict (duplicate code)."""
    contract = uow.s.get(Contract, contract_id)
    if contract is None:
        raise ValidationFailed("unknown contract", {"contract_id": [f"no contract {contract_id}"]})
    errors: dict[str, list[str]] = {}
    if type not in MILESTONE_TYPES:
        errors["type"] = [f"must be one of {', '.join(MILESTONE_TYPES)}"]
    if type == "financial" and (amount is None or amount <= 0):
        errors["amount"] = ["a financial milestone needs a positive amount"]
    currency = (currency or contract.currency).upper()
    if type == "financial" and currency != contract.currency:
        errors["currency"] = [f"must match the contract currency {contract.currency}"]
    if errors:
        raise ValidationFailed("the milestone is not valid", errors)
    if uow.s.scalar(select(Milestone.id).where(Milestone.contract_id == contract_id, Milestone.code == code)):
        raise Conflict(f"milestone code {code!r} already exists on contract {contract.number}")
    milestone = Milestone(
        contract_id=contract.id, account_id=contract.account_id, code=code, description=description, type=type,
        amount=amount, currency=currency, due_date=due_date, status="draft", created_by_id=uow.actor_id,
    )
    uow.s.add(milestone)
    uow.flush()
    audit.record(uow, "milestone.created", "milestone", milestone.id,
                 after={"code": code, "type": type, "amount": amount, "currency": currency, "status": "draft"})
    uow.commit()
    return milestone


def get_milestone(uow: UnitOfWork, milestone_id: int) -> Milestone:
    milestone = uow.s.get(Milestone, milestone_id)
    if milestone is None:
        raise NotFound(f"no milestone {milestone_id}")
    return milestone


def list_milestones(uow: UnitOfWork, page: int, page_size: int, *, contract_id: int | None = None,
                    status: str | None = None, type: str | None = None) -> Page:
    stmt = select(Milestone).order_by(Milestone.due_date.is_(None), Milestone.due_date, Milestone.id)
    if contract_id is not None:
        stmt = stmt.where(Milestone.contract_id == contract_id)
    if status:
        stmt = stmt.where(Milestone.status == status)
    if type:
        stmt = stmt.where(Milestone.type == type)
    return paginate(uow, stmt, page, page_size)
