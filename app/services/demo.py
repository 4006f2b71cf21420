"""A small demo: one account, one contract, three milestones, four approval groups, four users."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from sqlalchemy import select

from ..models import Account, User
from ..uow import UnitOfWork
from . import identity, records

DEMO_USERS = {
    "alice": ["contract-managers"],
    "bob": ["finance", "finance-managers"],
    "carol": ["finance-managers", "executive-board"],
    "dave": ["project-managers"],
}


def load_demo(uow: UnitOfWork) -> dict[str, str]:
    """Create the demo records once (idempotent) and issue a fresh token per demo user."""
    for name, groups in DEMO_USERS.items():
        if uow.s.scalar(select(User).where(User.username == name)) is None:
            identity.create_user(uow, name, groups)
    if uow.s.scalar(select(Account).where(Account.name == "Acme Construction")) is None:
        alice = identity.get_user(uow, "alice")
        uow.actor_id = alice.id
        account = records.create_account(uow, "Acme Construction", external_ref="CRM-1001")
        contract = records.create_contract(uow, account.id, "C-2026-001", "Office tower, phase 1", "EUR",
                                           Decimal("250000.00"))
        today = date.today()
        records.create_milestone(uow, contract.id, "M1", "financial", amount=Decimal("50000.00"),
                                 description="Foundations poured and inspected", due_date=today + timedelta(days=14))
        records.create_milestone(uow, contract.id, "M2", "non_financial",
                                 description="Site safety plan signed off", due_date=today + timedelta(days=7))
        records.create_milestone(uow, contract.id, "M3", "financial", amount=Decimal("5000.00"),
                                 description="Permit fees reimbursed", due_date=today + timedelta(days=30))
        uow.actor_id = None
    tokens = {name: identity.issue_token(uow, identity.get_user(uow, name), name="demo") for name in DEMO_USERS}
    uow.commit()
    return tokens
