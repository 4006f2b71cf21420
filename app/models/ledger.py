"""The funds ledger: every change of a linked transaction's money is a new row, never an update."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from . import Base, BigId, User, utcnow


class LedgerEntry(Base):
    """One movement of a contract transaction's money for a milestone (append-only).

    kinds (amount is always positive; the kind says which balances it moves):
      hold              linked → held (the transaction was linked to the milestone)
      cancel            held → cancelled (unlinked before any release)
      release           held → released (the approval diagram's release step)
      retain            held → retained (the retainage share, kept at release)
      retention_release retained → released (a later, separate approval)
      reversal          released → reversed (a compensating entry by finance, with a reason)

    `release_key` makes money movements unique: "release:T:M", "retain:T:M", "retention_release:T:M",
    "hold:T:M:n", "cancel:T:M:n", "reversal:E" — a retried step cannot move the same money twice.
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (
        Index("ix_ledger_entries_milestone", "milestone_id", "id"),
        Index("ix_ledger_entries_contract", "contract_id", "id"),
        Index("ix_ledger_entries_transaction", "transaction_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contract_id: Mapped[int] = mapped_column(ForeignKey("contracts.id"))
    milestone_id: Mapped[int] = mapped_column(ForeignKey("milestones.id"))
    transaction_id: Mapped[int] = mapped_column(ForeignKey("contract_transactions.id"))
    objective_id: Mapped[int | None] = mapped_column(ForeignKey("objectives.id"))
    kind: Mapped[str] = mapped_column(String(20))
    amount: Mapped[Decimal] = mapped_column()
    currency: Mapped[str] = mapped_column(String(3))
    round: Mapped[int | None] = mapped_column(Integer)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    # The workflow step that made it: "<bpmn id>:<task id>" of the instance `instance_id`.
    step: Mapped[str | None] = mapped_column(String(200))
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("workflow_instances.id"))
    reason: Mapped[str | None] = mapped_column(Text)
    reverses_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_entries.id"))
    release_key: Mapped[str] = mapped_column(String(120), unique=True)
    # Sent with the payment instruction; the receiver applies each key once.
    idempotency_key: Mapped[str] = mapped_column(String(80), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    actor: Mapped[User | None] = relationship(lazy="joined")
