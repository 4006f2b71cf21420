"""Schemas of objectives, questions, answers and evidence: shape and types only (rules: services.objectives)."""

from __future__ import annotations

from typing import Any

from flask_smorest.fields import Upload
from marshmallow import Schema, ValidationError, fields, validate

from ..models.objectives import ANSWER_TYPES
from .schemas import PageMeta, Strict


class StrictBoolean(fields.Boolean):
    """Only JSON true/false: marshmallow's Boolean would also take "yes", 1 or "on"."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean (true or false).")
        return value


def _username(attribute: str) -> fields.Function:
    return fields.Function(lambda obj: getattr(getattr(obj, attribute), "username", None))


# --------------------------------------------------------------------------- in
class ObjectiveIn(Strict):
    title = fields.String(required=True, validate=validate.Length(min=1, max=300))
    details = fields.String(load_default="", validate=validate.Length(max=10_000))
    required = StrictBoolean(load_default=True)
    evidence_required = StrictBoolean(load_default=False)


class ObjectiveMetIn(Strict):
    met = StrictBoolean(required=True)


class QuestionIn(Strict):
    text = fields.String(required=True, validate=validate.Length(min=1, max=2_000))
    answer_type = fields.String(required=True, validate=validate.OneOf(ANSWER_TYPES))
    choices = fields.List(fields.String(validate=validate.Length(min=1, max=200)), load_default=None,
                          allow_none=True, validate=validate.Length(min=1, max=100))
    required = StrictBoolean(load_default=True)


class AnswerIn(Strict):
    # Any JSON value; the service checks it against the question's answer type.
    value = fields.Raw(required=True, allow_none=False)


class EvidenceUploadIn(Strict):
    file = Upload(required=True)


# --------------------------------------------------------------------------- out
class AnswerOut(Schema):
    id = fields.Integer()
    question_id = fields.Integer()
    value = fields.Raw()
    answered_by = _username("answered_by")
    answered_at = fields.DateTime()


class AnswerPage(PageMeta):
    items = fields.List(fields.Nested(AnswerOut))


class QuestionOut(Schema):
    id = fields.Integer()
    objective_id = fields.Integer()
    position = fields.Integer()
    text = fields.String()
    answer_type = fields.String()
    choices = fields.List(fields.String(), allow_none=True)
    required = fields.Boolean()
    created_at = fields.DateTime()
    current_answer = fields.Nested(AnswerOut, allow_none=True)


class EvidenceOut(Schema):
    id = fields.Integer()
    objective_id = fields.Integer()
    milestone_id = fields.Integer()
    filename = fields.String()
    size = fields.Integer()
    sha256 = fields.String()
    content_type = fields.String()
    uploaded_by = _username("uploaded_by")
    uploaded_at = fields.DateTime()


class ObjectiveOut(Schema):
    id = fields.Integer()
    milestone_id = fields.Integer()
    position = fields.Integer()
    title = fields.String()
    details = fields.String()
    required = fields.Boolean()
    evidence_required = fields.Boolean()
    met = fields.Boolean()
    met_at = fields.DateTime(allow_none=True)
    met_by = _username("met_by")
    created_at = fields.DateTime()
    complete = fields.Boolean()
    questions = fields.List(fields.Nested(QuestionOut))
    evidence = fields.List(fields.Nested(EvidenceOut))


class MissingQuestionOut(Schema):
    question_id = fields.Integer()
    text = fields.String()


class MissingOut(Schema):
    objective_id = fields.Integer()
    title = fields.String()
    unanswered_questions = fields.List(fields.Nested(MissingQuestionOut))
    evidence_missing = fields.Boolean()


class ObjectiveList(Schema):
    items = fields.List(fields.Nested(ObjectiveOut))
    missing = fields.List(fields.Nested(MissingOut))
