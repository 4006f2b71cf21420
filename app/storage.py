"""Where evidence bytes live: a small interface and a local-directory implementation.

Keys are generated here (never derived from client input), so a stored object's location can
never be chosen by a client. A save either produces a complete object under its final name or
nothing at all: bytes go to a temporary file in the destination directory, which is renamed
into place only once every byte is written and counted.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from werkzeug.utils import secure_filename

from .errors import PayloadTooLarge

CHUNK = 64 * 1024
HEAD = 8 * 1024
_KEY = re.compile(r"^[0-9a-f]{32}$")
_EXTENSION = re.compile(r"^[A-Za-z0-9]{1,16}$")
FALLBACK_NAME = "evidence"


def safe_filename(name: str | None, fallback: str = FALLBACK_NAME) -> str:
    """A client's file name reduced to a harmless ASCII base name that keeps its extension.

    Only the last path component counts (either separator), so `../../etc/passwd` becomes
    `passwd`; what is left goes through werkzeug's `secure_filename`; an empty result becomes
    `fallback`. The name is only ever shown and sent back, never used as a path.
    """
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    stem, dot, extension = base.rpartition(".")
    if not dot or not stem.strip("."):
        stem, extension = base, ""
    extension = extension if _EXTENSION.match(extension) else ""
    safe_stem = secure_filename(stem)[:120].strip("._") or fallback
    return f"{safe_stem}.{extension.lower()}" if extension else safe_stem


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str
    head: bytes  # the first 8 KiB, for content-type detection


class Storage(Protocol):
    def save(self, stream: BinaryIO, *, max_bytes: int) -> StoredObject:
        """Copy `stream` to a new object. Raises PayloadTooLarge (and keeps nothing) beyond `max_bytes`."""
        ...

    def open(self, key: str) -> BinaryIO:
        """The object's bytes. Raises FileNotFoundError for an unknown key."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; an unknown key is not an error."""
        ...


class LocalStorage:
    """Objects as files `<root>/<k[:2]>/<key>` named by a random uuid (hex)."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise FileNotFoundError(f"not a storage key: {key!r}")
        return self.root / key[:2] / key

    def save(self, stream: BinaryIO, *, max_bytes: int) -> StoredObject:
        key = uuid.uuid4().hex
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        head = bytearray()
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", suffix=".tmp", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"the file is larger than the limit of {max_bytes} bytes",
                                              max_bytes=max_bytes)
                    if len(head) < HEAD:
                        head += chunk[: HEAD - len(head)]
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, final)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return StoredObject(key=key, size=size, sha256=digest.hexdigest(), head=bytes(head))

    def open(self, key: str) -> BinaryIO:
        return self.path(key).open("rb")

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink(missing_ok=True)
        except FileNotFoundError:
            pass
