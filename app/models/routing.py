"""Approval routing: the levels of each round, out-of-office substitutes, task comments."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from . import Base, BigId, User, utcnow


class ApprovalLevel(Base):
    """One level of a round's approval chain, as the routing table decided it at submission.

    `eligible` is the electorate resolved when the level opened ([{"user", "for"}]: "for" names
    the out-of-office approver a substitute stands in for); `seats` is how many votes it holds.
    Written by the approval diagram's service steps only; no request can write it.
    """

    __tablename__ = "approval_levels"
    __table_args__ = (
        UniqueConstraint("instance_id", "level", name="uq_approval_levels_instance_level"),
        Index("ix_approval_levels_group_status", "group_name", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("workflow_instances.id"))
    milestone_id: Mapped[int] = mapped_column(ForeignKey("milestones.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    level: Mapped[int] = mapped_column(Integer)
    group_name: Mapped[str] = mapped_column(String(120))
    quorum: Mapped[str] = mapped_column(String(20))  # any | all | N, as the table said
    on_decline: Mapped[str] = mapped_column(String(20))  # first | impossible
    required: Mapped[int | None] = mapped_column(Integer)  # approvals needed, set when the level opens
    seats: Mapped[int | None] = mapped_column(Integer)
    eligible: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending | open | approved | declined | cancelled
    approvals: Mapped[int] = mapped_column(Integer, default=0)
    declines: Mapped[int] = mapped_column(Integer, default=0)
    opened_at: Mapped[datetime | None] = mapped_column()
    closed_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutOfOffice(Base):
    """A user away from `starts_at` to `ends_at`; `substitute` gets their approval tasks meanwhile.

    `started_at`/`ended_at` record when the service moved the open tasks (at the start) and
    gave the pools back (at the end), so each switch happens once.
    """

    __tablename__ = "out_of_office"
    __table_args__ = (Index("ix_out_of_office_user_period", "user_id", "starts_at", "ends_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    substitute_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    starts_at: Mapped[datetime] = mapped_column()
    ends_at: Mapped[datetime] = mapped_column()
    reason: Mapped[str] = mapped_column(String(500), default="")
    started_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()
    cancelled_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User] = relationship(foreign_keys=[user_id], lazy="joined")
    substitute: Mapped[User] = relationship(foreign_keys=[substitute_id], lazy="joined")


class TaskComment(Base):
    """A comment on a task: visible to the task's candidates and the milestone's owners."""

    __tablename__ = "task_comments"
    __table_args__ = (Index("ix_task_comments_task", "task_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("human_tasks.id"))
    milestone_id: Mapped[int | None] = mapped_column(ForeignKey("milestones.id"), index=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    author: Mapped[User] = relationship(lazy="joined")
