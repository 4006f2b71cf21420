"""Objectives of a milestone, their questions and answers, and evidence files.

Answers are append-only: a changed answer is a new row and the current answer of a question is
its latest row (highest id), so the history is the rows themselves.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from . import Base, BigId, User, utcnow

ANSWER_TYPES = ("text", "number", "date", "boolean", "single_choice", "multiple_choice")
CHOICE_TYPES = ("single_choice", "multiple_choice")


class Objective(Base):
    __tablename__ = "objectives"
    __table_args__ = (UniqueConstraint("milestone_id", "position", name="uq_objectives_milestone_position"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    milestone_id: Mapped[int] = mapped_column(ForeignKey("milestones.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(300))
    details: Mapped[str] = mapped_column(Text, default="")
    required: Mapped[bool] = mapped_column(Boolean, default=True)
    evidence_required: Mapped[bool] = mapped_column(Boolean, default=False)
    met: Mapped[bool] = mapped_column(Boolean, default=False)
    met_at: Mapped[datetime | None] = mapped_column()
    met_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    met_by: Mapped[User | None] = relationship(foreign_keys=[met_by_id], lazy="joined")
    questions: Mapped[list[Question]] = relationship(order_by="Question.position", lazy="selectin",
                                                     back_populates="objective")


class Question(Base):
    __tablename__ = "questions"
    __table_args__ = (UniqueConstraint("objective_id", "position", name="uq_questions_objective_position"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    objective_id: Mapped[int] = mapped_column(ForeignKey("objectives.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    answer_type: Mapped[str] = mapped_column(String(20))  # one of ANSWER_TYPES
    choices: Mapped[list[str] | None] = mapped_column(JSON)  # required for CHOICE_TYPES, else None
    required: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    objective: Mapped[Objective] = relationship(back_populates="questions")


class Answer(Base):
    """Append-only: never updated or deleted; the latest row of a question is its current answer."""

    __tablename__ = "answers"
    __table_args__ = (Index("ix_answers_question_id_id", "question_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    question_id: Mapped[int] = mapped_column(ForeignKey("questions.id"))
    value: Mapped[Any] = mapped_column(JSON)
    answered_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    answered_at: Mapped[datetime] = mapped_column(default=utcnow)

    answered_by: Mapped[User | None] = relationship(lazy="joined")


class EvidenceFile(Base):
    """Metadata of an uploaded file; the bytes are in storage under `storage_key`."""

    __tablename__ = "evidence_files"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    objective_id: Mapped[int] = mapped_column(ForeignKey("objectives.id"), index=True)
    milestone_id: Mapped[int] = mapped_column(ForeignKey("milestones.id"), index=True)
    storage_key: Mapped[str] = mapped_column(String(64), unique=True)
    filename: Mapped[str] = mapped_column(String(255))  # sanitized
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(100))  # detected from the bytes
    uploaded_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    uploaded_at: Mapped[datetime] = mapped_column(default=utcnow)

    uploaded_by: Mapped[User | None] = relationship(lazy="joined")
