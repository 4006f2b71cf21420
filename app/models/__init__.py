"""SQLAlchemy 2.x typed models. Every table the service owns is declared here (one metadata)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Money = Numeric(18, 2, asdecimal=True)
# BigInteger ids on PostgreSQL, but SQLite only auto-increments INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer, "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python on every backend (SQLite stores the naive UTC value)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), Decimal: Money, date: Date(), dict[str, Any]: JSON}


# --------------------------------------------------------------------------- identity
class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str | None] = mapped_column(String(320))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="user", cascade="all, delete-orphan")


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    # The group lead assigns the group's tasks and is who `group_lead` escalations reach.
    lead_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    lead: Mapped[User | None] = relationship(foreign_keys=[lead_id])


class GroupAlias(Base):
    """A former name of a group: diagrams and tables deployed before a rename still reach it."""

    __tablename__ = "group_aliases"

    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Membership(Base):
    __tablename__ = "memberships"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User] = relationship(back_populates="memberships")
    group: Mapped[Group] = relationship()


class ApiToken(Base):
    """Bearer tokens, stored as SHA-256 of a 256-bit random secret (never the secret itself)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(120), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()

    user: Mapped[User] = relationship()


# --------------------------------------------------------------------------- domain
class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    external_ref: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class Contact(Base):
    """A person at an account; a milestone's primary contact is responsible for completing it."""

    __tablename__ = "contacts"
    __table_args__ = (UniqueConstraint("account_id", "email", name="uq_contacts_account_email"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(50))
    role: Mapped[str | None] = mapped_column(String(120))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Contract(Base):
    __tablename__ = "contracts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    number: Mapped[str] = mapped_column(String(80), unique=True)
    title: Mapped[str] = mapped_column(String(300))
    value: Mapped[Decimal | None] = mapped_column()
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20), default="active")
    start_date: Mapped[date | None] = mapped_column()
    end_date: Mapped[date | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    account: Mapped[Account] = relationship()


class Milestone(Base):
    __tablename__ = "milestones"
    __table_args__ = (
        UniqueConstraint("contract_id", "code", name="uq_milestones_contract_code"),
        Index("ix_milestones_status_due", "status", "due_date"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contract_id: Mapped[int] = mapped_column(ForeignKey("contracts.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    code: Mapped[str] = mapped_column(String(80))
    description: Mapped[str] = mapped_column(Text, default="")
    type: Mapped[str] = mapped_column(String(20))  # financial | non_financial
    amount: Mapped[Decimal | None] = mapped_column()
    # When set, `amount` was computed from it and the contract value at creation.
    percentage: Mapped[Decimal | None] = mapped_column(Numeric(7, 4))
    currency: Mapped[str] = mapped_column(String(3))
    due_date: Mapped[date | None] = mapped_column()
    external_refs: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    primary_contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), index=True)
    # Custom fields (e.g. {"risk": "high"}): inputs of the routing table like every other field.
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Money (app.services.ledger): the share of each linked transaction its approval releases (None: all),
    # the share of that kept back as retainage, and the milestone whose retention its approval releases.
    release_percentage: Mapped[Decimal | None] = mapped_column(Numeric(7, 4))
    retainage_percentage: Mapped[Decimal | None] = mapped_column(Numeric(7, 4))
    retention_of_id: Mapped[int | None] = mapped_column(ForeignKey("milestones.id"))
    # Written only by the lifecycle workflow's publish/unpublish steps.
    published: Mapped[bool] = mapped_column(Boolean, default=False)
    published_at: Mapped[datetime | None] = mapped_column()
    # Written only by the workflow's service steps (see app.services.runtime), never by the API.
    status: Mapped[str] = mapped_column(String(20), default="draft")
    round: Mapped[int] = mapped_column(Integer, default=0)
    submitted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}

    contract: Mapped[Contract] = relationship()
    submitted_by: Mapped[User | None] = relationship(foreign_keys=[submitted_by_id])
    primary_contact: Mapped[Contact | None] = relationship()


class ContractTransaction(Base):
    """A payment, invoice, retainage... on a contract, optionally linked to a financial milestone."""

    __tablename__ = "contract_transactions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contract_id: Mapped[int] = mapped_column(ForeignKey("contracts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    amount: Mapped[Decimal] = mapped_column()
    currency: Mapped[str] = mapped_column(String(3))
    external_ref: Mapped[str | None] = mapped_column(String(200))
    occurred_on: Mapped[date] = mapped_column()
    milestone_id: Mapped[int | None] = mapped_column(ForeignKey("milestones.id"), index=True)
    objective_id: Mapped[int | None] = mapped_column(ForeignKey("objectives.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class FundRelease(Base):
    """The record of the workflow's "release funds" step: one per milestone, ever. What it moved is in
    the ledger (`app.models.ledger.LedgerEntry`); `amount` is the total it released."""

    __tablename__ = "fund_releases"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    milestone_id: Mapped[int] = mapped_column(ForeignKey("milestones.id"), unique=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("workflow_instances.id"))
    task_id: Mapped[str] = mapped_column(String(36), unique=True)
    amount: Mapped[Decimal] = mapped_column()
    currency: Mapped[str] = mapped_column(String(3))
    round: Mapped[int] = mapped_column(Integer)
    released_at: Mapped[datetime] = mapped_column(default=utcnow)


# --------------------------------------------------------------------------- workflow
class DeploymentRecord(Base):
    """A deployed bundle of BPMN/DMN files, stored once, identified by its content hash."""

    __tablename__ = "deployments"

    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    files: Mapped[list[DeploymentFile]] = relationship(
        back_populates="deployment", cascade="all, delete-orphan", order_by="DeploymentFile.name"
    )


class DeploymentFile(Base):
    __tablename__ = "deployment_files"

    deployment_hash: Mapped[str] = mapped_column(ForeignKey("deployments.hash", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))

    deployment: Mapped[DeploymentRecord] = relationship(back_populates="files")


class WorkflowInstance(Base):
    """State of one workflow instance: a gzipped state-only blob plus the deployment it runs on."""

    __tablename__ = "workflow_instances"
    __table_args__ = (
        # One instance per milestone, process and round: two concurrent submissions cannot both start one.
        UniqueConstraint("milestone_id", "process_id", "round", name="uq_workflow_instances_milestone_round"),
        Index("ix_workflow_instances_next_timer", "status", "next_timer_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    milestone_id: Mapped[int | None] = mapped_column(ForeignKey("milestones.id"), index=True)
    round: Mapped[int] = mapped_column(Integer, default=1)
    process_id: Mapped[str] = mapped_column(String(120))
    deployment_hash: Mapped[str] = mapped_column(ForeignKey("deployments.hash"), index=True)
    serializer_version: Mapped[str] = mapped_column(String(40))
    state: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(20), default="running")  # running | completed | cancelled
    next_timer_at: Mapped[datetime | None] = mapped_column()
    # The messages the instance waits for (its allowed transitions), projected at every save.
    waiting_for: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column()
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}


class HumanTaskRow(Base):
    """Inbox projection: rewritten on every save of its instance, read without touching state."""

    __tablename__ = "human_tasks"
    __table_args__ = (
        Index("ix_human_tasks_status_created", "status", "created_at"),
        Index("ix_human_tasks_instance_status", "instance_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("workflow_instances.id"))
    milestone_id: Mapped[int | None] = mapped_column(ForeignKey("milestones.id"), index=True)
    process_id: Mapped[str] = mapped_column(String(120))
    bpmn_id: Mapped[str] = mapped_column(String(120))
    name: Mapped[str] = mapped_column(String(255))
    lane: Mapped[str | None] = mapped_column(String(120))
    documentation: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="open")  # open | completed | cancelled
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    due_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column()
    completed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    decision: Mapped[str | None] = mapped_column(String(20))
    comment: Mapped[str | None] = mapped_column(Text)
    # A seat of an approval level (app.services.routing): its level, seat number and group.
    level: Mapped[int | None] = mapped_column(Integer)
    seat: Mapped[int | None] = mapped_column(Integer)
    group_name: Mapped[str | None] = mapped_column(String(120))
    # Who handed the task to its assignee: the owner who delegated it, or the approver who is out
    # of office; the one who completed it on someone's behalf names that someone.
    delegated_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    substitute_for_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    on_behalf_of_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    candidates: Mapped[list[TaskCandidate]] = relationship(
        back_populates="task", cascade="all, delete-orphan", lazy="selectin"
    )
    assignee: Mapped[User | None] = relationship(foreign_keys=[assignee_id], lazy="joined")
    completed_by: Mapped[User | None] = relationship(foreign_keys=[completed_by_id])
    delegated_by: Mapped[User | None] = relationship(foreign_keys=[delegated_by_id])
    substitute_for: Mapped[User | None] = relationship(foreign_keys=[substitute_for_id])
    on_behalf_of: Mapped[User | None] = relationship(foreign_keys=[on_behalf_of_id])


class TaskCandidate(Base):
    __tablename__ = "task_candidates"
    __table_args__ = (Index("ix_task_candidates_kind_name", "kind", "name", "task_id"),)

    task_id: Mapped[str] = mapped_column(ForeignKey("human_tasks.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(5), primary_key=True)  # group | user
    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    # A user candidate who stands in for an approver who is out of office (that approver's name).
    substitute_for: Mapped[str | None] = mapped_column(String(80))

    task: Mapped[HumanTaskRow] = relationship(back_populates="candidates")


# --------------------------------------------------------------------------- audit, idempotency
class AuditEvent(Base):
    """Append-only: the service never updates or deletes these rows."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_entity", "entity_type", "entity_id", "id"),
        Index("ix_audit_events_milestone", "milestone_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(80))
    entity_type: Mapped[str] = mapped_column(String(40))
    entity_id: Mapped[str] = mapped_column(String(64))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    request_id: Mapped[str | None] = mapped_column(String(64))
    # Where it happened, so that a milestone's trail is one indexed read.
    milestone_id: Mapped[int | None] = mapped_column(BigId)
    task_id: Mapped[str | None] = mapped_column(String(36))
    round: Mapped[int | None] = mapped_column(Integer)

    actor: Mapped[User | None] = relationship(lazy="joined")


class IdempotencyRecord(Base):
    """The first successful answer to a POST with an Idempotency-Key, replayed on retries."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key", name="uq_idempotency_keys_user_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(500))
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[bytes] = mapped_column(LargeBinary)
    response_headers: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


from .ledger import LedgerEntry  # noqa: E402,F401  (one metadata)
from .notifications import (  # noqa: E402,F401  (one metadata)
    Delivery,
    Notification,
    NotificationPreference,
    OutboxMessage,
    SchedulerLease,
)
from .objectives import Answer, EvidenceFile, Objective, Question  # noqa: E402,F401  (one metadata)
from .operations import Incident  # noqa: E402,F401  (one metadata)
from .routing import ApprovalLevel, OutOfOffice, TaskComment  # noqa: E402,F401  (one metadata)
