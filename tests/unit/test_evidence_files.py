"""Content-type detection, local storage and file-name sanitizing, without a database or Flask."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from app import sniff
from app.config import Settings
from app.errors import PayloadTooLarge
from app.storage import LocalStorage, safe_filename


def _zip(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _ooxml(main: str, part: str) -> bytes:
    types = f'<Types><Override PartName="/{part}" ContentType="{main}"/></Types>'
    return _zip({"[Content_Types].xml": types, part: "<x/>"})


def _detect(data: bytes) -> str:
    return sniff.detect(data[:8192], lambda: io.BytesIO(data))


XLSX_MAIN = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"
DOCX_MAIN = "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"


@pytest.mark.parametrize(("data", "expected"), [
    (b"%PDF-1.7\n", sniff.PDF),
    (b"\x89PNG\r\n\x1a\n\x00\x00", sniff.PNG),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", sniff.JPEG),
    (b"GIF89a\x01\x00", sniff.GIF),
    (b"GIF87a\x01\x00", sniff.GIF),
    (_ooxml(DOCX_MAIN, "word/document.xml"), sniff.DOCX),
    (_ooxml(XLSX_MAIN, "xl/workbook.xml"), sniff.XLSX),
    (_ooxml(XLSX_MAIN, "word/document.xml"), sniff.ZIP),  # declares a workbook it does not contain
    (_ooxml("application/vnd.ms-word.document.macroEnabled.main+xml", "word/document.xml"), sniff.ZIP),
    (_zip({"a.txt": "hello"}), sniff.ZIP),
    (b"PK\x03\x04 truncated archive", sniff.OCTET_STREAM),
    ("plain UTF-8 text: naïve café ✓\n".encode(), sniff.TEXT),
    (b"\xef\xbb\xbfwith a BOM", sniff.TEXT),
    (b"text with a \x00 NUL", sniff.OCTET_STREAM),
    (b"latin-1 caf\xe9", sniff.OCTET_STREAM),
    (b"\x7fELF\x02\x01\x01\x00\x00", sniff.OCTET_STREAM),
    (b"", sniff.OCTET_STREAM),
], ids=lambda v: v if isinstance(v, str) else None)
def test_types_are_detected_from_the_bytes(data: bytes, expected: str) -> None:
    assert _detect(data) == expected


def test_text_is_checked_to_the_end_not_just_the_head() -> None:
    data = b"a" * 10_000 + b"\x00binary tail"
    assert sniff.detect(data[:8192]) == sniff.TEXT  # the head alone looks like text
    assert _detect(data) == sniff.OCTET_STREAM


def test_a_character_split_at_the_head_boundary_is_still_text() -> None:
    data = b"a" * 8191 + "é".encode() + b"more"
    assert sniff.detect(data[:8192]) == sniff.TEXT
    assert _detect(data) == sniff.TEXT


def test_allowed_types_accept_short_names_and_mime_types() -> None:
    assert sniff.parse_types(None) == sniff.DEFAULT_ALLOWED
    assert sniff.parse_types(" pdf, image/png ,pdf,") == (sniff.PDF, sniff.PNG)
    with pytest.raises(ValueError, match="exe"):
        sniff.parse_types("pdf, exe")


def test_settings_read_the_evidence_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MILESTONES_STORAGE_DIR", str(tmp_path / "files"))
    monkeypatch.setenv("MILESTONES_EVIDENCE_MAX_BYTES", "2048")
    monkeypatch.setenv("MILESTONES_EVIDENCE_TYPES", "pdf,txt")
    settings = Settings.from_env(database_url="sqlite://")
    assert settings.evidence_dir() == tmp_path / "files"
    assert settings.evidence_max_bytes == 2048
    assert settings.evidence_allowed_types == (sniff.PDF, sniff.TEXT)
    for name in ("MILESTONES_STORAGE_DIR", "MILESTONES_EVIDENCE_MAX_BYTES", "MILESTONES_EVIDENCE_TYPES"):
        monkeypatch.delenv(name)
    defaults = Settings.from_env(database_url="sqlite://", instance_dir=tmp_path / "inst")
    assert defaults.evidence_dir() == tmp_path / "inst" / "evidence"
    assert defaults.evidence_max_bytes == 10 * 1024 * 1024


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_local_storage_saves_under_generated_sharded_names(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    data = b"x" * 100_000
    stored = storage.save(io.BytesIO(data), max_bytes=len(data))
    assert stored.size == len(data) and len(stored.head) == 8192 and stored.head == data[:8192]
    assert _files(tmp_path) == [tmp_path / stored.key[:2] / stored.key]
    with storage.open(stored.key) as fh:
        assert fh.read() == data
    storage.delete(stored.key)
    storage.delete(stored.key)  # already gone: not an error
    assert _files(tmp_path) == []


def test_local_storage_refuses_oversize_and_leaves_no_temp_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    with pytest.raises(PayloadTooLarge):
        storage.save(io.BytesIO(b"x" * 200_001), max_bytes=200_000)
    assert _files(tmp_path) == []


@pytest.mark.parametrize("key", ["../../etc/passwd", "ab/../../x", "", "A" * 32, "0" * 31])
def test_local_storage_refuses_keys_it_did_not_make(tmp_path: Path, key: str) -> None:
    storage = LocalStorage(tmp_path)
    with pytest.raises(FileNotFoundError):
        storage.open(key)
    storage.delete(key)  # ignored


@pytest.mark.parametrize(("name", "expected"), [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\Windows\\win.ini", "win.ini"),
    ("/etc/shadow", "shadow"),
    ("Report Final (v2).PDF", "Report_Final_v2.pdf"),
    ("photo.jpeg", "photo.jpeg"),
    (".bashrc", "bashrc"),
    ("..", "evidence"),
    ("", "evidence"),
    (None, "evidence"),
    ("отчёт.pdf", "evidence.pdf"),
    ("a.<script>", "a"),
    ("archive.tar.gz", "archive.tar.gz"),
])
def test_client_file_names_are_sanitized(name: str | None, expected: str) -> None:
    assert safe_filename(name) == expected
