"""Content types detected from the bytes of a file; what a client claims is never consulted.

Only the types evidence may plausibly have are recognised. A ZIP container is an Office Open
XML document only when its `[Content_Types].xml` declares the main part of one (and the part
directory exists), so an arbitrary archive renamed `.docx` stays `application/zip`.
"""

from __future__ import annotations

import codecs
import zipfile
import zlib
from collections.abc import Callable, Iterable
from typing import BinaryIO

OCTET_STREAM = "application/octet-stream"
ZIP = "application/zip"
PDF = "application/pdf"
PNG = "image/png"
JPEG = "image/jpeg"
GIF = "image/gif"
TEXT = "text/plain"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

# Short names accepted in MILESTONES_EVIDENCE_TYPES (full MIME types are accepted too).
TYPE_ALIASES = {
    "pdf": PDF, "png": PNG, "jpeg": JPEG, "jpg": JPEG, "gif": GIF, "text": TEXT, "txt": TEXT,
    "docx": DOCX, "xlsx": XLSX, "zip": ZIP,
}
KNOWN_TYPES = frozenset(TYPE_ALIASES.values())
DEFAULT_ALLOWED = (PDF, PNG, JPEG, GIF, TEXT, DOCX, XLSX)

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", PDF),
    (b"\x89PNG\r\n\x1a\n", PNG),
    (b"\xff\xd8\xff", JPEG),
    (b"GIF87a", GIF),
    (b"GIF89a", GIF),
)
_ZIP_MAGIC = (b"PK\x03\x04",)
# Main-part content types in [Content_Types].xml, and the directory each lives in.
_OOXML_MAIN = (
    (b"application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml", "word/", DOCX),
    (b"application/vnd.ms-word.document.macroEnabled.main+xml", "word/", None),
    (b"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml", "xl/", XLSX),
    (b"application/vnd.ms-excel.sheet.macroEnabled.main+xml", "xl/", None),
)
# A hostile archive can declare a huge [Content_Types].xml; it is tiny in real documents.
_CONTENT_TYPES_LIMIT = 256 * 1024
_CHUNK = 64 * 1024


def parse_types(spec: str | None) -> tuple[str, ...]:
    """MIME types from a comma list of short names (`pdf, png`) or MIME types. ValueError if unknown."""
    if spec is None or not spec.strip():
        return DEFAULT_ALLOWED
    types: list[str] = []
    for item in (part.strip().lower() for part in spec.split(",")):
        if not item:
            continue
        mime = TYPE_ALIASES.get(item, item)
        if mime not in KNOWN_TYPES:
            known = ", ".join(sorted(TYPE_ALIASES))
            raise ValueError(f"unknown evidence type {item!r}; use one of {known} or their MIME types")
        if mime not in types:
            types.append(mime)
    return tuple(types)


def detect(head: bytes, open_full: Callable[[], BinaryIO] | None = None) -> str:
    """The content type of a file whose first bytes are `head`.

    `open_full` (a seekable binary file of the whole content) lets ZIP containers be inspected and
    text be checked to the end; without it only `head` is judged.
    """
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    if head.startswith(_ZIP_MAGIC):
        return _zip_kind(open_full) if open_full is not None else ZIP
    if not head:
        return OCTET_STREAM
    if open_full is None:
        return TEXT if _is_text_chunks([head], final=False) else OCTET_STREAM
    with open_full() as fh:
        return TEXT if _is_text_chunks(iter(lambda: fh.read(_CHUNK), b""), final=True) else OCTET_STREAM


def _is_text_chunks(chunks: Iterable[bytes], *, final: bool) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for chunk in chunks:
            if b"\0" in chunk:
                return False
            decoder.decode(chunk, final=False)
        decoder.decode(b"", final=final)
    except UnicodeDecodeError:
        return False
    return True


def _zip_kind(open_full: Callable[[], BinaryIO]) -> str:
    try:
        with open_full() as fh, zipfile.ZipFile(fh) as archive:
            names = archive.namelist()
            if "[Content_Types].xml" not in names:
                return ZIP
            with archive.open("[Content_Types].xml") as member:
                declared = member.read(_CONTENT_TYPES_LIMIT)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, RuntimeError, NotImplementedError, EOFError,
            ValueError, zlib.error):
        # An archive that cannot be read (broken, encrypted, exotic compression) is nothing we accept.
        return OCTET_STREAM
    for main, directory, mime in _OOXML_MAIN:
        if main in declared and any(name.startswith(directory) for name in names):
            return mime or ZIP
    return ZIP
