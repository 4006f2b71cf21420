"""HTTP resources for objectives, questions, answers and evidence files (under /api/v1)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from flask import current_app, g, request, send_file
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE

from ..errors import ValidationFailed
from ..services import objectives
from ..storage import LocalStorage, Storage
from .auth import current_user
from .context import command_uow, read_uow, state
from .objective_schemas import (
    AnswerIn,
    AnswerOut,
    AnswerPage,
    EvidenceOut,
    EvidenceUploadIn,
    ObjectiveIn,
    ObjectiveList,
    ObjectiveMetIn,
    ObjectiveOut,
    QuestionIn,
    QuestionOut,
)
from .schemas import PageArgs

objectives_blp = Blueprint("objectives", __name__, url_prefix="/api/v1",
                           description="Objectives of a milestone, their questions and answers")
evidence_blp = Blueprint("evidence", __name__, url_prefix="/api/v1", description="Evidence files of objectives")

# Room for the multipart envelope (boundaries, part headers) around a file of the maximum size.
MULTIPART_OVERHEAD = 16 * 1024
STORAGE_KEY = "milestones.storage"


def storage() -> Storage:
    """The app's evidence storage (built on first use from the settings; tests may put their own)."""
    existing: Storage | None = current_app.extensions.get(STORAGE_KEY)
    if existing is None:
        root = state().settings.evidence_dir().resolve()
        static = current_app.static_folder
        if static and root.is_relative_to(Path(static).resolve()):
            raise RuntimeError(f"the evidence directory {root} must not be inside the static folder {static}")
        existing = current_app.extensions[STORAGE_KEY] = LocalStorage(root)
    return existing


# --------------------------------------------------------------------------- objectives
@objectives_blp.route("/milestones/<int:milestone_id>/objectives")
class MilestoneObjectives(MethodView):
    @objectives_blp.response(200, ObjectiveList)
    def get(self, milestone_id: int) -> Any:
        """The objectives in order, and what keeps the milestone from being complete (`missing`)."""
        user = current_user()
        with read_uow() as uow:
            items = objectives.list_objectives(uow, user, milestone_id)
            return {"items": items, "missing": objectives.missing_requirements(uow, milestone_id)}

    @objectives_blp.arguments(ObjectiveIn)
    @objectives_blp.response(201, ObjectiveOut)
    @objectives_blp.alt_response(409, description="The milestone is not draft, active or declined")
    def post(self, body: dict[str, Any], milestone_id: int) -> Any:
        """Append an objective (while the milestone is draft, active or declined)."""
        user = current_user()
        with command_uow() as uow:
            return objectives.add_objective(uow, user, milestone_id, **body)


@objectives_blp.route("/objectives/<int:objective_id>")
class ObjectiveById(MethodView):
    @objectives_blp.response(200, ObjectiveOut)
    def get(self, objective_id: int) -> Any:
        user = current_user()
        with read_uow() as uow:
            return objectives.get_objective(uow, user, objective_id)


@objectives_blp.route("/objectives/<int:objective_id>/met")
class ObjectiveMet(MethodView):
    @objectives_blp.arguments(ObjectiveMetIn)
    @objectives_blp.response(200, ObjectiveOut)
    def post(self, body: dict[str, Any], objective_id: int) -> Any:
        """Mark the objective met (`true`) or not met (`false`); audited."""
        user = current_user()
        with command_uow() as uow:
            return objectives.set_objective_met(uow, user, objective_id, body["met"])


@objectives_blp.route("/objectives/<int:objective_id>/questions")
class ObjectiveQuestions(MethodView):
    @objectives_blp.arguments(QuestionIn)
    @objectives_blp.response(201, QuestionOut)
    def post(self, body: dict[str, Any], objective_id: int) -> Any:
        """Append a question; `choices` are required for single_choice and multiple_choice only."""
        user = current_user()
        with command_uow() as uow:
            return objectives.add_question(uow, user, objective_id, **body)


@objectives_blp.route("/questions/<int:question_id>/answer")
class QuestionAnswer(MethodView):
    @objectives_blp.arguments(AnswerIn)
    @objectives_blp.response(200, AnswerOut)
    def put(self, body: dict[str, Any], question_id: int) -> Any:
        """Answer (or change the answer); each change is a new answer, the earlier ones stay in the history."""
        user = current_user()
        with command_uow() as uow:
            return objectives.answer_question(uow, user, question_id, body["value"])


@objectives_blp.route("/questions/<int:question_id>/answers")
class QuestionAnswers(MethodView):
    @objectives_blp.arguments(PageArgs, location="query")
    @objectives_blp.response(200, AnswerPage)
    def get(self, args: dict[str, Any], question_id: int) -> Any:
        """The answer history, newest (current) first."""
        user = current_user()
        with read_uow() as uow:
            page = objectives.answer_history(uow, user, question_id, args["page"], args["page_size"])
            return {"items": page.items, "page": page.page, "page_size": page.page_size, "total": page.total}


# --------------------------------------------------------------------------- evidence
@evidence_blp.before_request
def _limit_upload_size() -> None:
    # Set before anything reads the body, so werkzeug refuses an oversize upload (413) from its
    # Content-Length or while streaming it, instead of parsing it whole first.
    if request.endpoint == f"{evidence_blp.name}.{EvidenceUpload.__name__}":
        request.max_content_length = state().settings.evidence_max_bytes + MULTIPART_OVERHEAD
        request._get_file_stream = _tracked_file_stream(request._get_file_stream)  # type: ignore[method-assign]


def _tracked_file_stream(make: Callable[..., IO[bytes]]) -> Callable[..., IO[bytes]]:
    # A 413 raised in the middle of parsing leaves the part being spooled out of request.files,
    # so request.close() never closes it: remember every spool and close them all at teardown.
    def make_tracked(*args: Any, **kwargs: Any) -> IO[bytes]:
        stream = make(*args, **kwargs)
        g.setdefault("upload_spools", []).append(stream)
        return stream

    return make_tracked


@evidence_blp.teardown_request
def _release_upload_resources(_exc: BaseException | None) -> None:
    for spool in g.pop("upload_spools", []):
        spool.close()
    # With an Idempotency-Key the real commit happens after the view returned (with the stored
    # answer); when it fails, the bytes saved by the view must go too.
    for store, key, committed in g.pop("evidence_pending", []):
        if not committed:  # filled by an after-commit callback
            store.delete(key)


@evidence_blp.route("/objectives/<int:objective_id>/evidence")
class EvidenceUpload(MethodView):
    @evidence_blp.arguments(EvidenceUploadIn, location="files", unknown=RAISE)  # webargs would EXCLUDE
    @evidence_blp.response(201, EvidenceOut)
    @evidence_blp.alt_response(413, description="The file is larger than the limit")
    @evidence_blp.alt_response(415, description="The type detected from the bytes is not allowed")
    def post(self, files: dict[str, Any], objective_id: int) -> Any:
        """Upload a file (multipart field `file`) as evidence; its type is detected from the bytes."""
        user = current_user()
        errors = {name: ["Unknown field."] for name in request.form}
        if len(request.files.getlist("file")) > 1:
            errors["file"] = ["send one file per request"]
        if errors:
            raise ValidationFailed("the request does not match the schema; see errors", errors)
        upload = files["file"]
        store = storage()
        with command_uow() as uow:
            evidence = objectives.add_evidence(uow, store, user, objective_id, upload.filename, upload.stream,
                                               state().settings)
            if uow.defer_commit:
                committed: list[bool] = []
                uow.after_commit(lambda: committed.append(True))
                g.setdefault("evidence_pending", []).append((store, evidence.storage_key, committed))
            return evidence


@evidence_blp.route("/evidence/<int:evidence_id>")
class EvidenceById(MethodView):
    @evidence_blp.response(200, EvidenceOut)
    def get(self, evidence_id: int) -> Any:
        user = current_user()
        with read_uow() as uow:
            return objectives.get_evidence(uow, user, evidence_id)


@evidence_blp.route("/evidence/<int:evidence_id>/content")
class EvidenceContent(MethodView):
    @evidence_blp.response(200, {"type": "string", "format": "binary"}, content_type="application/octet-stream",
                           description="The bytes, as an attachment with the detected Content-Type")
    def get(self, evidence_id: int) -> Any:
        """Download the file (streamed from storage)."""
        user = current_user()
        with read_uow() as uow:
            evidence, handle = objectives.open_evidence(uow, storage(), user, evidence_id)
            response = send_file(handle, mimetype=evidence.content_type, as_attachment=True,
                                 download_name=evidence.filename, conditional=False, etag=False)
            response.content_length = evidence.size
        response.headers["X-Content-Type-Options"] = "nosniff"
        # Even if a browser were talked into rendering it, the file gets no scripts and no origin.
        response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
        response.headers["Cache-Control"] = "private, no-store"
        return response
