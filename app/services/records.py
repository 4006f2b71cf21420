"""Accounts, their contacts, contracts; milestone lookup. (Milestone creation: services.milestones.)"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from ..errors import Conflict, NotFound, ValidationFailed
from ..models import Account, Contact, Contract, Milestone, User
from ..uow import UnitOfWork
from . import audit


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


# --------------------------------------------------------------------------- contacts
def create_contact(uow: UnitOfWork, account_id: int, name: str, email: str, phone: str | None = None,
                   role: str | None = None, username: str | None = None) -> Contact:
    """Add a contact to an account, linked to the user `username` when given (their to-dos as a
    milestone's primary contact go to that user). Raises NotFound, Conflict, ValidationFailed."""
    if uow.s.get(Account, account_id) is None:
        raise NotFound(f"no account {account_id}")
    email = email.strip().lower()
    if uow.s.scalar(select(Contact.id).where(Contact.account_id == account_id, Contact.email == email)):
        raise Conflict(f"a contact with e-mail {email} already exists on this account", field="email")
    user_id = None
    if username is not None:
        user_id = uow.s.scalar(select(User.id).where(User.username == username))
        if user_id is None:
            raise ValidationFailed("unknown user", {"username": [f"no user {username!r}"]})
    contact = Contact(account_id=account_id, name=name, email=email, phone=phone, role=role, user_id=user_id)
    uow.s.add(contact)
    uow.flush()
    audit.record(uow, "contact.created", "account", account_id,
                 after={"contact_id": contact.id, "name": name, "user": username})
    uow.commit()
    return contact


def list_contacts(uow: UnitOfWork, account_id: int, page: int, page_size: int) -> Page:
    get_account(uow, account_id)
    return paginate(uow, select(Contact).where(Contact.account_id == account_id).order_by(Contact.id), page, page_size)


# --------------------------------------------------------------------------- contracts
def create_contract(uow: UnitOfWork, account_id: int, number: str, title: str, currency: str,
                    value: Decimal | None = None, start_date: date | None = None,
                    end_date: date | None = None, status: str = "active") -> Contract:
    if uow.s.get(Account, account_id) is None:
        raise ValidationFailed("unknown account", {"account_id": [f"no account {account_id}"]})
    if start_date and end_date and end_date < start_date:
        raise ValidationFailed("the contract ends before it starts", {"end_date": ["must not be before start_date"]})
    if uow.s.scalar(select(Contract.id).where(Contract.number == number)) is not None:
        raise Conflict(f"contract number {number!r} is already used", field="number")
    contract = Contract(account_id=account_id, number=number, title=title, currency=currency.upper(),
                        value=value, start_date=start_date, end_date=end_date, status=status,
                        created_by_id=uow.actor_id)
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
def get_milestone(uow: UnitOfWork, milestone_id: int) -> Milestone:
    milestone = uow.s.get(Milestone, milestone_id)
    if milestone is None:
        raise NotFound(f"no milestone {milestone_id}")
    return milestone
