"""A small demo: one account, one contract, three active milestones, four approval groups (one with a
lead), four users."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from sqlalchemy import select

from ..models import Account, Group, User
from ..uow import UnitOfWork
from . import identity, milestones, records, transactions
from .runtime import DeploymentCache

DEMO_USERS = {
    "alice": ["contract-managers"],
    "bob": ["finance", "finance-managers"],
    "carol": ["finance-managers", "executive-board"],
    "dave": ["project-managers"],
}
DEMO_LEADS = {"finance-managers": "carol"}


def load_demo(uow: UnitOfWork, cache: DeploymentCache) -> dict[str, str]:
    """Create the demo records once (idempotent) and issue a fresh token per demo user."""
    for name, groups in DEMO_USERS.items():
        if uow.s.scalar(select(User).where(User.username == name)) is None:
            identity.create_user(uow, name, groups)
    for group_name, lead in DEMO_LEADS.items():
        group = uow.s.scalar(select(Group).where(Group.name == group_name))
        user = uow.s.scalar(select(User).where(User.username == lead))
        if group is not None and user is not None and group.lead_id is None:
            group.lead_id = user.id  # assigns the group's tasks (POST /tasks/{id}/assignment)
    if uow.s.scalar(select(Account).where(Account.name == "Acme Construction")) is None:
        alice = identity.get_user(uow, "alice")
        uow.actor_id = alice.id
        account = records.create_account(uow, "Acme Construction", external_ref="CRM-1001")
        contract = records.create_contract(uow, account.id, "C-2026-001", "Office tower, phase 1", "EUR",
                                           Decimal("250000.00"))
        # The supplier's site manager: primary contact of every milestone. Without a user account her
        # to-dos go to alice (who created the milestones) and her reminders to her e-mail address.
        contact = records.create_contact(uow, account.id, "Erin Example", "erin@acme.example", role="Site manager")
        today = date.today()
        specs = [
            ("M1", "financial", Decimal("50000.00"), "Foundations poured and inspected", 14),
            # due in 5 days: the policy's first reminder (7 days before) is due at once
            ("M2", "non_financial", None, "Site safety plan signed off", 5),
            ("M3", "financial", Decimal("5000.00"), "Permit fees reimbursed", 30),
        ]
        # The money the milestones hold until approved: M1's two invoices (5 % retainage kept at release),
        # M3's one (GET /contracts/1/ledger, or its .csv, to reconcile by hand).
        invoices = {"M1": [("INV-101", Decimal("30000.00")), ("INV-102", Decimal("20000.00"))],
                    "M3": [("INV-103", Decimal("5000.00"))]}
        for code, type_, amount, description, days in specs:
            milestone = milestones.create_milestone(uow, cache, contract.id, code, type_, amount=amount,
                                                    description=description, due_date=today + timedelta(days=days),
                                                    primary_contact_id=contact.id,
                                                    retainage_percentage=Decimal("5") if code == "M1" else None)
            for ref, value in invoices.get(code, []):
                transactions.record_transaction(uow, contract.id, kind="invoice", amount=value, currency="EUR",
                                                occurred_on=today, external_ref=ref, milestone_id=milestone.id)
            milestones.transition(uow, cache, alice, milestone.id, "activate")
        uow.actor_id = None
    tokens = {name: identity.issue_token(uow, identity.get_user(uow, name), name="demo") for name in DEMO_USERS}
    uow.commit()
    return tokens
