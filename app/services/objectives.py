"""Objectives of a milestone: questions and their answers, evidence files, and the completeness gate.

Requirements (objectives, questions, answers, evidence) change only while the milestone is
draft, active or declined. Two locks keep that true against a concurrent submission:
- adding an objective or a question locks the milestone row and bumps its version, so a
  submission that checked completeness before the new requirement existed fails its versioned
  update (409) instead of submitting an incomplete milestone;
- answers, evidence and the met flag take a shared lock on the milestone row (PostgreSQL; on
  SQLite writers are serialized anyway), so they are either committed before a submission
  changes the status or see the new status and are refused.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, BinaryIO

from sqlalchemy import func, select

from .. import sniff
from ..config import Settings
from ..errors import Conflict, NotFound, UnsupportedMediaType, ValidationFailed
from ..models import Milestone, User, utcnow
from ..models.objectives import ANSWER_TYPES, CHOICE_TYPES, Answer, EvidenceFile, Objective, Question
from ..storage import Storage, safe_filename
from ..uow import UnitOfWork
from . import audit
from .records import Page, paginate

log = logging.getLogger(__name__)

EDITABLE_STATUSES = ("draft", "active", "declined")
# Objectives and questions are listed whole (no pagination), so their number is bounded.
MAX_OBJECTIVES = 100
MAX_QUESTIONS = 100
MAX_CHOICES = 100
MAX_TEXT_ANSWER = 10_000
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
MAX_NUMBER_EXPONENT = 20
MAX_NUMBER_DIGITS = 30


# --------------------------------------------------------------------------- visibility
def can_see_milestone(user: User, milestone: Milestone) -> bool:
    """Whether `user` may see `milestone` with its objectives, answers and evidence.

    Every authenticated user is internal today (there are no portal users yet), so this is
    always True; the portal's rule (say, published milestones of the user's account) goes here.
    Callers answer 404 when it is False, so an invisible milestone is indistinguishable from none.
    """
    return True


# --------------------------------------------------------------------------- views
@dataclass
class QuestionView:
    question: Question
    current_answer: Answer | None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "question":
            raise AttributeError(name)
        return getattr(self.question, name)


@dataclass
class ObjectiveView:
    objective: Objective
    questions: list[QuestionView]
    evidence: list[EvidenceFile]

    @property
    def complete(self) -> bool:
        """All required questions answered and, when evidence is required, at least one file."""
        unanswered = any(q.required and q.current_answer is None for q in self.questions)
        return not unanswered and not (self.objective.evidence_required and not self.evidence)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "objective":
            raise AttributeError(name)
        return getattr(self.objective, name)


def _views(uow: UnitOfWork, objectives: list[Objective]) -> list[ObjectiveView]:
    question_ids = [q.id for o in objectives for q in o.questions]
    current: dict[int, Answer] = {}
    if question_ids:
        latest = (select(func.max(Answer.id)).where(Answer.question_id.in_(question_ids))
                  .group_by(Answer.question_id))
        current = {a.question_id: a for a in uow.s.scalars(select(Answer).where(Answer.id.in_(latest)))}
    evidence: dict[int, list[EvidenceFile]] = {o.id: [] for o in objectives}
    if objectives:
        for row in uow.s.scalars(select(EvidenceFile).where(EvidenceFile.objective_id.in_(list(evidence)))
                                 .order_by(EvidenceFile.id)):
            evidence[row.objective_id].append(row)
    return [ObjectiveView(o, [QuestionView(q, current.get(q.id)) for q in o.questions], evidence[o.id])
            for o in objectives]


# --------------------------------------------------------------------------- loading and locking
def _visible_milestone(uow: UnitOfWork, user: User, milestone_id: int) -> Milestone:
    milestone = uow.s.get(Milestone, milestone_id)
    if milestone is None or not can_see_milestone(user, milestone):
        raise NotFound(f"no milestone {milestone_id}")
    return milestone


def _visible_objective(uow: UnitOfWork, user: User, objective_id: int) -> tuple[Objective, Milestone]:
    objective = uow.s.get(Objective, objective_id)
    if objective is None:
        raise NotFound(f"no objective {objective_id}")
    milestone = uow.s.get(Milestone, objective.milestone_id)
    if milestone is None or not can_see_milestone(user, milestone):
        raise NotFound(f"no objective {objective_id}")
    return objective, milestone


def _visible_question(uow: UnitOfWork, user: User, question_id: int) -> tuple[Question, Milestone]:
    question = uow.s.get(Question, question_id)
    if question is None:
        raise NotFound(f"no question {question_id}")
    objective = uow.s.get(Objective, question.objective_id)
    milestone = uow.s.get(Milestone, objective.milestone_id) if objective is not None else None
    if milestone is None or not can_see_milestone(user, milestone):
        raise NotFound(f"no question {question_id}")
    return question, milestone


def _lock_for_change(uow: UnitOfWork, milestone_id: int, *, structural: bool, what: str) -> Milestone:
    """The milestone, locked (see the module docstring), refused unless its requirements may change."""
    stmt = select(Milestone).where(Milestone.id == milestone_id).execution_options(populate_existing=True)
    # `of=`: eager joins (now or later) must not drag the lock onto an outer join's nullable side.
    stmt = stmt.with_for_update(of=Milestone) if structural else stmt.with_for_update(read=True, of=Milestone)
    milestone = uow.s.scalar(stmt)
    if milestone is None:
        raise NotFound(f"no milestone {milestone_id}")
    if milestone.status not in EDITABLE_STATUSES:
        raise Conflict(
            f"milestone {milestone.code} is {milestone.status}; {what} only while it is "
            + ", ".join(EDITABLE_STATUSES[:-1]) + f" or {EDITABLE_STATUSES[-1]}",
            current_state=milestone.status, editable_states=list(EDITABLE_STATUSES),
        )
    if structural:
        # A versioned UPDATE: a submission that read the old version now fails instead of
        # submitting without the requirement added here.
        milestone.updated_at = utcnow()
    return milestone


# --------------------------------------------------------------------------- objectives
def list_objectives(uow: UnitOfWork, user: User, milestone_id: int) -> list[ObjectiveView]:
    """The milestone's objectives in order, with questions, current answers and evidence. NotFound."""
    _visible_milestone(uow, user, milestone_id)
    objectives = list(uow.s.scalars(select(Objective).where(Objective.milestone_id == milestone_id)
                                    .order_by(Objective.position)))
    return _views(uow, objectives)


def get_objective(uow: UnitOfWork, user: User, objective_id: int) -> ObjectiveView:
    objective, _ = _visible_objective(uow, user, objective_id)
    return _views(uow, [objective])[0]


def add_objective(uow: UnitOfWork, user: User, milestone_id: int, title: str, details: str = "",
                  required: bool = True, evidence_required: bool = False) -> ObjectiveView:
    """Append an objective to the milestone (next position).

    Raises NotFound, ValidationFailed (blank title), Conflict (milestone not editable, too many
    objectives, or a concurrent change).
    """
    _visible_milestone(uow, user, milestone_id)
    milestone = _lock_for_change(uow, milestone_id, structural=True, what="objectives can be added")
    if not title.strip():
        raise ValidationFailed("the objective needs a title", {"title": ["must not be blank"]})
    count, last = uow.s.execute(select(func.count(Objective.id), func.max(Objective.position))
                                .where(Objective.milestone_id == milestone_id)).one()
    if count >= MAX_OBJECTIVES:
        raise Conflict(f"milestone {milestone.code} already has {MAX_OBJECTIVES} objectives, the most allowed")
    objective = Objective(milestone_id=milestone_id, position=(last or 0) + 1, title=title.strip(),
                          details=details, required=required, evidence_required=evidence_required,
                          created_by_id=user.id)
    uow.s.add(objective)
    uow.flush()
    audit.record(uow, "objective.added", "objective", objective.id, actor_id=user.id, after={
        "milestone_id": milestone_id, "position": objective.position, "title": objective.title,
        "required": required, "evidence_required": evidence_required})
    uow.commit()
    return ObjectiveView(objective, [], [])


def set_objective_met(uow: UnitOfWork, user: User, objective_id: int, met: bool) -> ObjectiveView:
    """Mark the objective met or not met (audited; setting the current state changes nothing).

    Raises NotFound, Conflict (milestone not editable).
    """
    _, milestone = _visible_objective(uow, user, objective_id)
    _lock_for_change(uow, milestone.id, structural=False, what="objectives can be changed")
    # Locked too, so two concurrent toggles audit what each really changed.
    objective = uow.s.scalars(select(Objective).where(Objective.id == objective_id)
                              .with_for_update(of=Objective).execution_options(populate_existing=True)).one()
    if objective.met != met:
        before = {"met": objective.met, "met_at": objective.met_at,
                  "met_by": objective.met_by.username if objective.met_by else None}
        objective.met = met
        objective.met_at = utcnow() if met else None
        objective.met_by_id = user.id if met else None
        audit.record(uow, "objective.met" if met else "objective.unmet", "objective", objective.id,
                     actor_id=user.id, before=before,
                     after={"met": met, "met_at": objective.met_at, "met_by": user.username if met else None,
                            "milestone_id": milestone.id})
        uow.commit()
        uow.s.refresh(objective)
    return _views(uow, [objective])[0]


# --------------------------------------------------------------------------- questions and answers
def add_question(uow: UnitOfWork, user: User, objective_id: int, text: str, answer_type: str,
                 choices: list[str] | None = None, required: bool = True) -> QuestionView:
    """Append a question to the objective.

    Raises NotFound, ValidationFailed (blank text, unknown type, choices missing for a choice
    question, given for another, blank or repeated), Conflict (milestone not editable, too many).
    """
    objective, milestone = _visible_objective(uow, user, objective_id)
    _lock_for_change(uow, milestone.id, structural=True, what="questions can be added")
    errors: dict[str, list[str]] = {}
    if not text.strip():
        errors["text"] = ["must not be blank"]
    if answer_type not in ANSWER_TYPES:
        errors["answer_type"] = [f"must be one of {', '.join(ANSWER_TYPES)}"]
    clean_choices: list[str] | None = None
    if answer_type in CHOICE_TYPES:
        clean_choices = [c.strip() for c in choices or []]
        if not clean_choices:
            errors["choices"] = [f"a {answer_type} question needs choices"]
        elif len(clean_choices) > MAX_CHOICES:
            errors["choices"] = [f"at most {MAX_CHOICES} choices"]
        elif not all(clean_choices):
            errors["choices"] = ["choices must not be blank"]
        elif len(set(clean_choices)) != len(clean_choices):
            errors["choices"] = ["choices must be distinct"]
    elif choices is not None:
        errors["choices"] = ["only single_choice and multiple_choice questions have choices"]
    if errors:
        raise ValidationFailed("the question is not valid", errors)
    count, last = uow.s.execute(select(func.count(Question.id), func.max(Question.position))
                                .where(Question.objective_id == objective_id)).one()
    if count >= MAX_QUESTIONS:
        raise Conflict(f"objective {objective_id} already has {MAX_QUESTIONS} questions, the most allowed")
    question = Question(objective_id=objective_id, position=(last or 0) + 1, text=text.strip(),
                        answer_type=answer_type, choices=clean_choices, required=required, created_by_id=user.id)
    uow.s.add(question)
    uow.flush()
    audit.record(uow, "question.added", "question", question.id, actor_id=user.id, after={
        "objective_id": objective_id, "milestone_id": milestone.id, "position": question.position,
        "text": question.text, "answer_type": answer_type, "choices": clean_choices, "required": required})
    uow.commit()
    return QuestionView(question, None)


def normalize_answer(question: Question, value: Any) -> Any:
    """The stored form of `value` as an answer to `question`; ValidationFailed (field `value`) if it does not fit.

    number → a decimal string (exact, never a float), date → `YYYY-MM-DD`, boolean → true/false,
    text → a non-blank string, single_choice → one of the choices, multiple_choice → a non-empty
    list of distinct choices, in the order of the question's choices.
    """
    kind = question.answer_type

    def bad(message: str) -> ValidationFailed:
        return ValidationFailed(f"the answer does not fit a {kind} question", {"value": [message]})

    if kind == "text":
        if not isinstance(value, str) or not value.strip():
            raise bad("must be a non-blank string")
        if len(value) > MAX_TEXT_ANSWER:
            raise bad(f"at most {MAX_TEXT_ANSWER} characters")
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad("must be a number")
        literal = repr(value) if isinstance(value, float) else str(value).strip()
        if not _NUMBER.match(literal):
            raise bad("must be a finite number")
        try:
            number = Decimal(literal)
        except InvalidOperation:
            raise bad("must be a number") from None
        # Checked before formatting: "1e999999999" would otherwise expand to a billion digits.
        exponent = number.as_tuple().exponent
        if not isinstance(exponent, int) or exponent < -MAX_NUMBER_EXPONENT \
                or number.adjusted() > MAX_NUMBER_EXPONENT:
            raise bad(f"out of range (below 1e{MAX_NUMBER_EXPONENT + 1}, at most {MAX_NUMBER_EXPONENT} decimals)")
        if len(number.as_tuple().digits) > MAX_NUMBER_DIGITS:
            raise bad(f"at most {MAX_NUMBER_DIGITS} significant digits")
        return format(number, "f")
    if kind == "date":
        if not isinstance(value, str) or not _ISO_DATE.match(value):
            raise bad("must be an ISO date (YYYY-MM-DD)")
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            raise bad("must be an ISO date (YYYY-MM-DD)") from None
    if kind == "boolean":
        if not isinstance(value, bool):
            raise bad("must be true or false")
        return value
    choices = question.choices or []
    if kind == "single_choice":
        if not isinstance(value, str) or value not in choices:
            raise bad(f"must be one of {choices}")
        return value
    if kind == "multiple_choice":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise bad("must be a non-empty list of choices")
        unknown = [v for v in value if v not in choices]
        if unknown:
            raise bad(f"not among the choices: {unknown}")
        if len(set(value)) != len(value):
            raise bad("a choice is repeated")
        return [c for c in choices if c in value]
    raise bad(f"unknown answer type {kind}")


def _current_answer(uow: UnitOfWork, question_id: int) -> Answer | None:
    return uow.s.scalar(select(Answer).where(Answer.question_id == question_id).order_by(Answer.id.desc()).limit(1))


def answer_question(uow: UnitOfWork, user: User, question_id: int, value: Any) -> Answer:
    """Record an answer as a new row (the history is kept); the same value again changes nothing.

    Raises NotFound, ValidationFailed (the value does not fit the answer type), Conflict
    (milestone not editable).
    """
    question, milestone = _visible_question(uow, user, question_id)
    _lock_for_change(uow, milestone.id, structural=False, what="questions can be answered")
    normalized = normalize_answer(question, value)
    current = _current_answer(uow, question_id)
    if current is not None and current.value == normalized and type(current.value) is type(normalized):
        return current
    answer = Answer(question_id=question_id, value=normalized, answered_by_id=user.id, answered_at=utcnow())
    uow.s.add(answer)
    uow.flush()
    audit.record(uow, "question.answered", "question", question_id, actor_id=user.id,
                 before={"value": current.value, "answer_id": current.id} if current is not None else None,
                 after={"value": normalized, "answer_id": answer.id, "milestone_id": milestone.id})
    uow.commit()
    return answer


def answer_history(uow: UnitOfWork, user: User, question_id: int, page: int = 1, page_size: int = 20) -> Page:
    """Every answer the question received, newest (the current one) first. NotFound."""
    _visible_question(uow, user, question_id)
    stmt = select(Answer).where(Answer.question_id == question_id).order_by(Answer.id.desc())
    return paginate(uow, stmt, page, page_size)


# --------------------------------------------------------------------------- evidence
def add_evidence(uow: UnitOfWork, storage: Storage, user: User, objective_id: int, filename: str | None,
                 stream: BinaryIO, settings: Settings) -> EvidenceFile:
    """Store an uploaded file as evidence of the objective.

    The bytes are stored first (under a generated key), then the row; if anything fails before
    the commit, the stored object is deleted again. Raises NotFound, Conflict (milestone not
    editable), PayloadTooLarge (over `settings.evidence_max_bytes`), ValidationFailed (empty),
    UnsupportedMediaType (the type detected from the bytes is not allowed).
    """
    objective, milestone = _visible_objective(uow, user, objective_id)
    _lock_for_change(uow, milestone.id, structural=False, what="evidence can be added")
    stored = storage.save(stream, max_bytes=settings.evidence_max_bytes)
    try:
        if stored.size == 0:
            raise ValidationFailed("the file is empty", {"file": ["must not be empty"]})
        content_type = sniff.detect(stored.head, lambda: storage.open(stored.key))
        if content_type not in settings.evidence_allowed_types:
            raise UnsupportedMediaType(
                f"{content_type} files are not accepted as evidence (detected from the content)",
                content_type=content_type, allowed=list(settings.evidence_allowed_types))
        evidence = EvidenceFile(
            objective_id=objective.id, milestone_id=milestone.id, storage_key=stored.key,
            filename=safe_filename(filename), size=stored.size, sha256=stored.sha256,
            content_type=content_type, uploaded_by_id=user.id, uploaded_at=utcnow(),
        )
        uow.s.add(evidence)
        uow.flush()
        audit.record(uow, "evidence.added", "evidence", evidence.id, actor_id=user.id, after={
            "objective_id": objective.id, "milestone_id": milestone.id, "filename": evidence.filename,
            "size": stored.size, "sha256": stored.sha256, "content_type": content_type})
        uow.commit()
    except BaseException:
        storage.delete(stored.key)
        raise
    return evidence


def get_evidence(uow: UnitOfWork, user: User, evidence_id: int) -> EvidenceFile:
    evidence = uow.s.get(EvidenceFile, evidence_id)
    if evidence is None:
        raise NotFound(f"no evidence {evidence_id}")
    milestone = uow.s.get(Milestone, evidence.milestone_id)
    if milestone is None or not can_see_milestone(user, milestone):
        raise NotFound(f"no evidence {evidence_id}")
    return evidence


def open_evidence(uow: UnitOfWork, storage: Storage, user: User, evidence_id: int) -> tuple[EvidenceFile, BinaryIO]:
    """The evidence row and its bytes (the caller closes the file). NotFound, also when the bytes are gone."""
    evidence = get_evidence(uow, user, evidence_id)
    try:
        return evidence, storage.open(evidence.storage_key)
    except FileNotFoundError:
        log.error("evidence %s: object %s is missing from storage", evidence.id, evidence.storage_key)
        raise NotFound(f"the content of evidence {evidence_id} is missing from storage") from None


# --------------------------------------------------------------------------- completeness gate
def missing_requirements(uow: UnitOfWork, milestone_id: int) -> list[dict[str, Any]]:
    """What keeps the milestone from being complete, per required objective, in objective order.

    An entry {"objective_id", "title", "unanswered_questions": [{"question_id", "text"}],
    "evidence_missing"} for each required objective with a required question never answered or,
    when it requires evidence, without any file. Empty when complete.
    """
    objectives = list(uow.s.scalars(select(Objective).where(Objective.milestone_id == milestone_id,
                                                            Objective.required.is_(True))
                                    .order_by(Objective.position)))
    if not objectives:
        return []
    ids = [o.id for o in objectives]
    questions = list(uow.s.scalars(select(Question).where(Question.objective_id.in_(ids),
                                                          Question.required.is_(True))
                                   .order_by(Question.objective_id, Question.position)))
    # Answers are never removed and always valid, so "has a current answer" is "has any answer".
    answered = set(uow.s.scalars(select(Answer.question_id).distinct()
                                 .where(Answer.question_id.in_([q.id for q in questions])))) if questions else set()
    with_evidence = set(uow.s.scalars(select(EvidenceFile.objective_id).distinct()
                                      .where(EvidenceFile.objective_id.in_(ids))))
    missing = []
    for objective in objectives:
        unanswered = [{"question_id": q.id, "text": q.text} for q in questions
                      if q.objective_id == objective.id and q.id not in answered]
        evidence_missing = objective.evidence_required and objective.id not in with_evidence
        if unanswered or evidence_missing:
            missing.append({"objective_id": objective.id, "title": objective.title,
                            "unanswered_questions": unanswered, "evidence_missing": evidence_missing})
    return missing


def raise_if_incomplete(uow: UnitOfWork, milestone: Milestone) -> None:
    """Raise Conflict (409, with `missing` as in missing_requirements) unless the milestone is complete."""
    missing = missing_requirements(uow, milestone.id)
    if not missing:
        return
    parts = []
    for entry in missing:
        gaps = []
        if entry["unanswered_questions"]:
            n = len(entry["unanswered_questions"])
            gaps.append(f"{n} unanswered required question{'s' if n > 1 else ''}")
        if entry["evidence_missing"]:
            gaps.append("no evidence")
        parts.append(f"objective {entry['title']!r} has {' and '.join(gaps)}")
    raise Conflict(f"milestone {milestone.code} is incomplete: " + "; ".join(parts), missing=missing)
