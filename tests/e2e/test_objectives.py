"""Objectives, questions, answers and evidence through HTTP; the completeness gate through a unit of work."""

from __future__ import annotations

import hashlib
import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from werkzeug.datastructures import FileStorage
from werkzeug.test import EnvironBuilder, encode_multipart, run_wsgi_app

from app import create_app
from app.config import Settings
from app.errors import Conflict
from app.models import AuditEvent, Milestone
from app.models.objectives import Answer, EvidenceFile, Objective, Question
from app.services import objectives as objective_service
from app.uow import UnitOfWork

PROBLEM = "application/problem+json"


# --------------------------------------------------------------------------- sample files
def png_bytes() -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1×1, 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
            + chunk(b"IEND", b""))


PDF = b"%PDF-1.4\n1 0 obj <</Type /Catalog>> endobj\ntrailer <</Root 1 0 R>>\n%%EOF\n"
TEXT = "Site survey done ✓ — 12 photos attached.\n".encode()
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00" + b"\x00" * 44


def zip_bytes(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def docx_bytes() -> bytes:
    main = "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"
    return zip_bytes({
        "[Content_Types].xml": '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
                               f'content-types"><Override PartName="/word/document.xml" ContentType="{main}"/></Types>',
        "word/document.xml": "<w:document/>",
    })


# --------------------------------------------------------------------------- helpers
def _auth(api: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.token}"}


def _done(response: Any) -> Any:
    response.get_data()  # buffer the body, then release the request's streams (no ResourceWarning)
    response.close()
    return response


def put(api: Any, path: str, body: Any) -> Any:
    return _done(api.client.put("/api/v1" + path, json=body, headers=_auth(api)))


def upload(api: Any, objective_id: int, data: bytes, filename: str = "file.bin",
           content_type: str = "application/octet-stream", headers: dict[str, str] | None = None,
           **fields: Any) -> Any:
    form = {"file": (io.BytesIO(data), filename, content_type), **fields}
    return _done(api.client.post(f"/api/v1/objectives/{objective_id}/evidence", data=form,
                                 content_type="multipart/form-data", headers={**_auth(api), **(headers or {})}))


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    assert response.content_type == PROBLEM
    body = response.get_json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def storage_root(app: Any) -> Path:
    return app.extensions["milestones"].settings.evidence_dir().resolve()


def stored_files(app: Any) -> list[Path]:
    root = storage_root(app)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def snapshot(app: Any) -> tuple[Any, ...]:
    with app.extensions["milestones"].session_factory() as s:
        counts = tuple(s.scalar(select(func.count()).select_from(model))
                       for model in (Objective, Question, Answer, EvidenceFile, AuditEvent))
        version = tuple(s.scalars(select(Milestone.version).order_by(Milestone.id)))
    return counts, version, tuple(stored_files(app))


def set_status(app: Any, milestone_id: int, status: str) -> None:
    with app.extensions["milestones"].engine.begin() as conn:
        conn.execute(text("UPDATE milestones SET status = :s WHERE id = :id"), {"s": status, "id": milestone_id})


def audit_events(app: Any, entity_type: str, entity_id: int) -> list[AuditEvent]:
    with app.extensions["milestones"].session_factory() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.entity_type == entity_type,
                                                       AuditEvent.entity_id == str(entity_id))
                              .order_by(AuditEvent.id)))


@pytest.fixture
def alice(people: dict[str, Any]) -> Any:
    return people["alice"]


@pytest.fixture
def milestone(new_milestone: Any) -> dict[str, Any]:
    return new_milestone(type="non_financial", amount=None, activate=False)  # a draft


@pytest.fixture
def objective(alice: Any, milestone: dict[str, Any]) -> dict[str, Any]:
    response = alice.post(f"/milestones/{milestone['id']}/objectives", {"title": "Site survey"})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def add_question(api: Any, objective_id: int, answer_type: str, **extra: Any) -> dict[str, Any]:
    response = api.post(f"/objectives/{objective_id}/questions",
                        {"text": f"A {answer_type} question?", "answer_type": answer_type, **extra})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


# --------------------------------------------------------------------------- objectives
def test_objectives_are_appended_in_order(app, alice, people, milestone, monkeypatch):
    def version() -> int:
        with app.extensions["milestones"].session_factory() as s:
            return s.get(Milestone, milestone["id"]).version

    path = f"/milestones/{milestone['id']}/objectives"
    titles = ["Survey", "Foundations", "Handover"]
    start = version()
    created = [alice.post(path, {"title": t}).get_json() for t in titles]
    assert [o["position"] for o in created] == [1, 2, 3]
    assert created[0]["required"] is True and created[0]["evidence_required"] is False
    assert created[0]["met"] is False and created[0]["questions"] == [] and created[0]["evidence"] == []
    listed = alice.get(path).get_json()
    assert [o["title"] for o in listed["items"]] == titles
    assert listed["missing"] == []
    # Any internal user sees them (can_see_milestone).
    assert people["eve"].get(f"/objectives/{created[1]['id']}").get_json()["title"] == "Foundations"
    # A new requirement bumps the milestone's version (a racing submission fails); an answer does not.
    assert version() == start + 3
    question = add_question(alice, created[0]["id"], "text")
    assert version() == start + 4
    assert put(alice, f"/questions/{question['id']}/answer", {"value": "done"}).status_code == 200
    assert version() == start + 4
    monkeypatch.setattr(objective_service, "MAX_OBJECTIVES", 3)
    before = snapshot(app)
    assert "3 objectives" in problem(alice.post(path, {"title": "Too many"}), 409)["detail"]
    assert snapshot(app) == before


def test_met_and_not_met_are_audited(app, alice, objective):
    path = f"/objectives/{objective['id']}/met"
    met = alice.post(path, {"met": True})
    assert met.status_code == 200, met.get_json()
    assert met.get_json()["met"] is True and met.get_json()["met_by"] == "alice" and met.get_json()["met_at"]
    unmet = alice.post(path, {"met": False}).get_json()
    assert unmet["met"] is False and unmet["met_by"] is None and unmet["met_at"] is None
    assert alice.post(path, {"met": False}).status_code == 200  # already not met: nothing to record
    events = [e for e in audit_events(app, "objective", objective["id"]) if e.action.startswith("objective.")]
    assert [e.action for e in events] == ["objective.added", "objective.met", "objective.unmet"]
    assert events[1].before["met"] is False and events[1].after["met"] is True
    assert events[1].after["met_by"] == "alice" and events[1].actor.username == "alice"
    assert events[2].before["met"] is True and events[2].before["met_by"] == "alice"
    assert events[2].after["met"] is False
    before = snapshot(app)
    for bad in ({"met": "yes"}, {"met": 1}, {}, {"met": True, "by": "bob"}):
        assert "errors" in problem(alice.post(path, bad), 422)
    assert snapshot(app) == before


# --------------------------------------------------------------------------- questions and answers
ANSWER_CASES = [
    # (answer_type, choices, [(valid value, stored value)], [invalid values])
    ("text", None, [("All good", "All good")], ["", "   ", 5, ["a"], True]),
    ("number", None, [(12, "12"), (12.5, "12.5"), ("0.10", "0.10"), ("-3", "-3"), ("1e3", "1000")],
     ["abc", True, "NaN", "Infinity", "1e999999999", "0e-999999", [1], "1_000", ""]),
    ("date", None, [("2026-03-31", "2026-03-31")], ["2026-02-30", "31/03/2026", "20260331", 20260331, "2026-W13-2"]),
    ("boolean", None, [(True, True), (False, False)], ["true", 1, 0, "yes"]),
    ("single_choice", ["red", "green", "blue"], [("green", "green")], ["purple", ["green"], 1, "GREEN"]),
    ("multiple_choice", ["red", "green", "blue"], [(["blue", "red"], ["red", "blue"]), (["green"], ["green"])],
     [[], "red", ["red", "red"], ["red", "purple"], [1]]),
]


def test_answers_are_checked_against_the_answer_type(app, alice, objective):
    for answer_type, choices, valid, invalid in ANSWER_CASES:
        question = add_question(alice, objective["id"], answer_type, **({"choices": choices} if choices else {}))
        assert question["choices"] == choices and question["current_answer"] is None
        path = f"/questions/{question['id']}/answer"
        for value, stored in valid:
            answered = put(alice, path, {"value": value})
            assert answered.status_code == 200, (answer_type, value, answered.get_json())
            assert answered.get_json()["value"] == stored, (answer_type, value)
            assert answered.get_json()["answered_by"] == "alice"
        before = snapshot(app)
        for value in invalid:
            body = problem(put(alice, path, {"value": value}), 422)
            assert list(body["errors"]) == ["value"], (answer_type, value, body)
        assert snapshot(app) == before
    questions = alice.get(f"/objectives/{objective['id']}").get_json()["questions"]
    assert [q["answer_type"] for q in questions] == [case[0] for case in ANSWER_CASES]
    assert [q["current_answer"]["value"] for q in questions] == [case[2][-1][1] for case in ANSWER_CASES]


def test_malformed_questions_and_answers_are_refused(app, alice, objective):
    path = f"/objectives/{objective['id']}/questions"
    question = add_question(alice, objective["id"], "text")
    before = snapshot(app)
    cases = [
        ({"text": "Colour?", "answer_type": "single_choice"}, "choices"),
        ({"text": "Colour?", "answer_type": "multiple_choice", "choices": []}, "choices"),
        ({"text": "Colour?", "answer_type": "single_choice", "choices": ["a", "a"]}, "choices"),
        ({"text": "Colour?", "answer_type": "single_choice", "choices": ["a", "  "]}, "choices"),
        ({"text": "Colour?", "answer_type": "single_choice", "choices": "a,b"}, "choices"),
        ({"text": "How many?", "answer_type": "number", "choices": ["1", "2"]}, "choices"),
        ({"text": "What?", "answer_type": "essay"}, "answer_type"),
        ({"text": "   ", "answer_type": "text"}, "text"),
        ({"text": "What?", "answer_type": "text", "required": "no"}, "required"),
        ({"text": "What?", "answer_type": "text", "weight": 3}, "weight"),
        ({"answer_type": "text"}, "text"),
    ]
    for body, field in cases:
        errors = problem(alice.post(path, body), 422)["errors"]
        assert field in errors, (body, errors)
    for body, field in (({}, "value"), ({"value": None}, "value"), ({"value": "x", "comment": "why"}, "comment")):
        assert field in problem(put(alice, f"/questions/{question['id']}/answer", body), 422)["errors"]
    assert snapshot(app) == before
    second = add_question(alice, objective["id"], "boolean", required=False)
    assert (question["position"], second["position"]) == (1, 2) and second["required"] is False


def test_answer_history_is_kept(app, alice, people, objective):
    question = add_question(alice, objective["id"], "text")
    path = f"/questions/{question['id']}/answer"
    first = put(alice, path, {"value": "draft findings"}).get_json()
    second = put(people["bob"], path, {"value": "final findings"}).get_json()
    again = put(people["bob"], path, {"value": "final findings"}).get_json()
    assert again["id"] == second["id"]  # the same answer again is not a change
    history = alice.get(f"/questions/{question['id']}/answers").get_json()
    assert history["total"] == 2
    assert [(a["value"], a["answered_by"]) for a in history["items"]] == [
        ("final findings", "bob"), ("draft findings", "alice")]
    assert alice.get(f"/questions/{question['id']}/answers?page=2&page_size=1").get_json()["items"][0]["id"] \
        == first["id"]
    shown = alice.get(f"/objectives/{objective['id']}").get_json()["questions"][0]["current_answer"]
    assert shown["id"] == second["id"] and shown["value"] == "final findings"
    events = [e for e in audit_events(app, "question", question["id"]) if e.action == "question.answered"]
    assert [(e.before, e.after["value"]) for e in events] == [
        (None, "draft findings"), ({"value": "draft findings", "answer_id": first["id"]}, "final findings")]
    assert "page_size" in problem(alice.get(f"/questions/{question['id']}/answers?page_size=1000"), 422)["errors"]


# --------------------------------------------------------------------------- evidence
EVIDENCE_CASES = [
    # (bytes, client file name, what the client claims, what the bytes are)
    (png_bytes(), "photo.png", "text/plain", "image/png"),
    (PDF, "report.pdf", "image/png", "application/pdf"),
    (TEXT, "notes.txt", "application/pdf", "text/plain"),
    (docx_bytes(), "minutes.bin", "application/octet-stream",
     "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
]


def test_evidence_is_stored_with_type_detected_from_the_bytes(app, alice, objective, tmp_path):
    uploaded = []
    for data, filename, claimed, detected in EVIDENCE_CASES:
        created = upload(alice, objective["id"], data, filename, claimed)
        assert created.status_code == 201, created.get_json()
        meta = created.get_json()
        assert meta["content_type"] == detected, filename
        assert meta["size"] == len(data) and meta["sha256"] == hashlib.sha256(data).hexdigest()
        assert meta["filename"] == filename and meta["uploaded_by"] == "alice" and meta["uploaded_at"]
        assert alice.get(f"/evidence/{meta['id']}").get_json() == meta
        with alice.client.get(f"/api/v1/evidence/{meta['id']}/content", headers=_auth(alice)) as download:
            assert download.status_code == 200
            assert download.data == data
            assert download.mimetype == detected
            assert download.headers["Content-Disposition"] == f"attachment; filename={filename}"
            assert download.headers["X-Content-Type-Options"] == "nosniff"
            assert download.headers["Content-Length"] == str(len(data))
        uploaded.append(meta)
    assert alice.get(f"/objectives/{objective['id']}").get_json()["evidence"] == uploaded
    stored = stored_files(app)
    assert sorted(p.read_bytes() for p in stored) == sorted(case[0] for case in EVIDENCE_CASES)
    # Generated names inside the storage root, never the client's.
    assert all(len(p.name) == 32 and p.parent.parent == storage_root(app) for p in stored)

    # A client's path is reduced to a harmless name, only ever sent back in Content-Disposition.
    traversal = upload(alice, objective["id"], TEXT, "../../etc/passwd", "text/plain")
    assert traversal.status_code == 201 and traversal.get_json()["filename"] == "passwd"
    assert upload(alice, objective["id"], TEXT, "..\\..\\boot.ini").get_json()["filename"] == "boot.ini"
    assert all(p.is_relative_to(storage_root(app)) and len(p.name) == 32 for p in stored_files(app))
    assert len(stored_files(app)) == len(EVIDENCE_CASES) + 2
    assert not any(p.name in ("passwd", "boot.ini") for p in tmp_path.rglob("*"))
    with alice.client.get(f"/api/v1/evidence/{traversal.get_json()['id']}/content", headers=_auth(alice)) as r:
        assert r.headers["Content-Disposition"] == "attachment; filename=passwd" and r.data == TEXT


class CountingStream(io.RawIOBase):
    """A request body that counts what the server reads from it."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._data.readinto(buffer)
        self.read_bytes += n
        return n


def test_oversize_upload_is_413_while_streaming_and_stores_nothing(app, alice, objective):
    limit = app.extensions["milestones"].settings.evidence_max_bytes = 1024
    before = snapshot(app)
    # Just over the limit: the multipart envelope fits the request limit, the copy loop stops.
    assert problem(upload(alice, objective["id"], b"a" * (limit + 1), "big.txt"), 413)["max_bytes"] == limit
    # Far over, declared (Content-Length) or not (a chunked body): refused without reading it all.
    boundary, body = encode_multipart({"file": FileStorage(io.BytesIO(b"a" * 4 * 1024 * 1024), "huge.txt")})
    for declared in (True, False):
        environ = EnvironBuilder(path=f"/api/v1/objectives/{objective['id']}/evidence", method="POST",
                                 headers=_auth(alice), data=body,
                                 content_type=f"multipart/form-data; boundary={boundary}").get_environ()
        stream = environ["wsgi.input"] = CountingStream(body)
        if not declared:  # as a server passes on a chunked request body
            del environ["CONTENT_LENGTH"]
            environ["wsgi.input_terminated"] = True
        app_iter, status, headers = run_wsgi_app(app, environ, buffered=True)
        assert status.startswith("413"), b"".join(app_iter)
        assert headers["Content-Type"] == PROBLEM
        assert stream.read_bytes == 0 if declared else stream.read_bytes < 256 * 1024, stream.read_bytes
    assert snapshot(app) == before
    assert stored_files(app) == []
    assert upload(alice, objective["id"], b"a" * limit, "exact.txt").status_code == 201


REFUSED_TYPES = [
    (ELF, "application/octet-stream"),
    (zip_bytes({"hello.txt": "hi"}), "application/zip"),
    (zip_bytes({"[Content_Types].xml": "<Types/>", "word/document.xml": "<x/>"}), "application/zip"),
    (b"\x00\x01binary\xff", "application/octet-stream"),
    (b"caf\xe9 latin-1 text", "application/octet-stream"),
]


def test_disallowed_empty_and_malformed_uploads_are_refused_and_store_nothing(app, alice, objective):
    before = snapshot(app)
    for data, detected in REFUSED_TYPES:
        body = problem(upload(alice, objective["id"], data, "innocent.pdf", "application/pdf"), 415)
        assert body["content_type"] == detected and "application/pdf" in body["allowed"]
    assert "file" in problem(upload(alice, objective["id"], b"", "empty.txt"), 422)["errors"]
    no_file = _done(alice.client.post(f"/api/v1/objectives/{objective['id']}/evidence", data={"note": "x"},
                                      content_type="multipart/form-data", headers=_auth(alice)))
    assert "file" in problem(no_file, 422)["errors"]
    assert "note" in problem(upload(alice, objective["id"], TEXT, "a.txt", note="hello"), 422)["errors"]
    extra_file = _done(alice.client.post(
        f"/api/v1/objectives/{objective['id']}/evidence", content_type="multipart/form-data", headers=_auth(alice),
        data={"file": (io.BytesIO(TEXT), "a.txt"), "other": (io.BytesIO(TEXT), "b.txt")}))
    assert "other" in problem(extra_file, 422)["errors"]
    two_files = _done(alice.client.post(
        f"/api/v1/objectives/{objective['id']}/evidence", content_type="multipart/form-data", headers=_auth(alice),
        data={"file": [(io.BytesIO(TEXT), "a.txt"), (io.BytesIO(TEXT), "b.txt")]}))
    assert "file" in problem(two_files, 422)["errors"]
    as_json = alice.post(f"/objectives/{objective['id']}/evidence", {"file": "aGVsbG8="})
    assert as_json.status_code == 422 and as_json.content_type == PROBLEM
    unauthenticated = _done(app.test_client().post(f"/api/v1/objectives/{objective['id']}/evidence",
                                                   data={"file": (io.BytesIO(TEXT), "a.txt")},
                                                   content_type="multipart/form-data"))
    problem(unauthenticated, 401)
    assert snapshot(app) == before


def test_a_failed_transaction_leaves_no_stored_file(app, alice, objective, monkeypatch):
    boundary, body = encode_multipart({"file": FileStorage(io.BytesIO(PDF), "r.pdf")})

    def send(key: str) -> Any:
        return _done(alice.client.post(f"/api/v1/objectives/{objective['id']}/evidence", data=body,
                                       content_type=f"multipart/form-data; boundary={boundary}",
                                       headers={**_auth(alice), "Idempotency-Key": key}))

    first = send("upload-1")
    assert first.status_code == 201, first.get_json()
    replay = send("upload-1")
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.get_json() == first.get_json()
    assert len(stored_files(app)) == 1
    before = snapshot(app)
    with monkeypatch.context() as patch:  # the transaction fails inside the service
        patch.setattr(objective_service.audit, "record", _raise(RuntimeError("audit store down")))
        problem(upload(alice, objective["id"], TEXT, "a.txt"), 500)
    assert snapshot(app) == before
    # With an Idempotency-Key the real commit comes after the view; when it fails, the bytes go too.
    monkeypatch.setattr(UnitOfWork, "commit_now", _raise(Conflict("simulated lost race at commit")))
    problem(send("upload-2"), 409)
    assert snapshot(app) == before


def _raise(error: Exception) -> Any:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    return fail


def test_unknown_ids_and_fields_are_refused_and_change_nothing(app, alice, milestone, objective):
    before = snapshot(app)
    for response in (
        alice.get("/objectives/999999"),
        alice.get("/milestones/999999/objectives"),
        alice.post("/milestones/999999/objectives", {"title": "x"}),
        alice.post("/objectives/999999/met", {"met": True}),
        alice.post("/objectives/999999/questions", {"text": "x", "answer_type": "text"}),
        put(alice, "/questions/999999/answer", {"value": "x"}),
        alice.get("/questions/999999/answers"),
        upload(alice, 999999, TEXT, "a.txt"),
        alice.get("/evidence/999999"),
        alice.get("/evidence/999999/content"),
    ):
        problem(response, 404)
    path = f"/milestones/{milestone['id']}/objectives"
    assert problem(alice.post(path, {"title": "x", "status": "met"}), 422)["errors"] == {"status": ["Unknown field."]}
    errors = problem(alice.post(path, {"title": 5, "required": "yes", "evidence_required": 1, "details": []}),
                     422)["errors"]
    assert set(errors) == {"title", "required", "evidence_required", "details"}
    assert "title" in problem(alice.post(path, {"title": "   "}), 422)["errors"]
    assert "title" in problem(alice.post(path, {}), 422)["errors"]
    assert snapshot(app) == before


def test_requirements_change_only_while_draft_active_or_declined(app, alice, objective, milestone):
    question = add_question(alice, objective["id"], "text")
    for status in ("submitted", "approved", "completed", "cancelled"):
        set_status(app, milestone["id"], status)
        before = snapshot(app)
        for response in (
            alice.post(f"/milestones/{milestone['id']}/objectives", {"title": "late"}),
            alice.post(f"/objectives/{objective['id']}/questions", {"text": "late?", "answer_type": "text"}),
            alice.post(f"/objectives/{objective['id']}/met", {"met": True}),
            put(alice, f"/questions/{question['id']}/answer", {"value": "late"}),
            upload(alice, objective["id"], TEXT, "late.txt"),
        ):
            body = problem(response, 409)
            assert body["current_state"] == status and status in body["detail"], body
        assert snapshot(app) == before
        assert alice.get(f"/objectives/{objective['id']}").status_code == 200  # reading is still fine
    for status in ("draft", "declined", "active"):
        set_status(app, milestone["id"], status)
        assert put(alice, f"/questions/{question['id']}/answer", {"value": f"while {status}"}).status_code == 200


# --------------------------------------------------------------------------- the completeness gate
def test_completeness_gate_lists_exactly_what_is_missing(app, alice, milestone):
    mid = milestone["id"]

    def objective(title: str, **flags: Any) -> int:
        response = alice.post(f"/milestones/{mid}/objectives", {"title": title, **flags})
        assert response.status_code == 201, response.get_json()
        return response.get_json()["id"]

    def question(objective_id: int, required: bool = True) -> dict[str, Any]:
        return add_question(alice, objective_id, "text", required=required)

    survey = objective("Survey", evidence_required=True)
    answered, open_1, optional, open_2 = question(survey), question(survey), question(survey, False), question(survey)
    put(alice, f"/questions/{answered['id']}/answer", {"value": "yes"})
    photos = objective("Photos", evidence_required=True)
    optional_objective = objective("Nice to have", required=False, evidence_required=True)
    question(optional_objective)
    done = objective("Done", evidence_required=True)
    put(alice, f"/questions/{question(done)['id']}/answer", {"value": "ok"})
    assert upload(alice, done, PDF, "done.pdf").status_code == 201

    expected = [
        {"objective_id": survey, "title": "Survey", "evidence_missing": True, "unanswered_questions": [
            {"question_id": open_1["id"], "text": open_1["text"]},
            {"question_id": open_2["id"], "text": open_2["text"]}]},
        {"objective_id": photos, "title": "Photos", "evidence_missing": True, "unanswered_questions": []},
    ]
    factory = app.extensions["milestones"].session_factory
    with UnitOfWork(factory) as uow:
        assert objective_service.missing_requirements(uow, mid) == expected
        with pytest.raises(Conflict) as refused:
            objective_service.raise_if_incomplete(uow, uow.s.get(Milestone, mid))
    assert refused.value.extra["missing"] == expected
    assert refused.value.detail.startswith(f"milestone {milestone['code']} is incomplete: ")
    assert "'Survey' has 2 unanswered required questions and no evidence" in refused.value.detail
    assert alice.get(f"/milestones/{mid}/objectives").get_json()["missing"] == expected
    assert optional["required"] is False

    for question_id in (open_1["id"], open_2["id"]):
        put(alice, f"/questions/{question_id}/answer", {"value": "answered"})
    upload(alice, survey, TEXT, "survey.txt")
    with UnitOfWork(factory) as uow:
        assert objective_service.missing_requirements(uow, mid) == [expected[1]]
    upload(alice, photos, png_bytes(), "photo.png")
    with UnitOfWork(factory) as uow:
        assert objective_service.missing_requirements(uow, mid) == []
        objective_service.raise_if_incomplete(uow, uow.s.get(Milestone, mid))  # complete: no error


def test_objective_endpoints_are_documented(tmp_path):
    app = create_app(Settings.from_env(database_url="sqlite://", instance_dir=tmp_path))  # no database needed
    paths = app.test_client().get("/api/v1/openapi.json").get_json()["paths"]
    assert {"get", "post"} <= set(paths["/api/v1/milestones/{milestone_id}/objectives"])
    assert "put" in paths["/api/v1/questions/{question_id}/answer"]
    upload_doc = paths["/api/v1/objectives/{objective_id}/evidence"]["post"]
    assert "multipart/form-data" in upload_doc["requestBody"]["content"]
    assert "get" in paths["/api/v1/evidence/{evidence_id}/content"]
