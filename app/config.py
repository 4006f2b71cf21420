"""Settings, read from the environment once per app (nothing is read at import time)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .sniff import parse_types

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_database_url(instance_dir: Path) -> str:
    return f"sqlite:///{instance_dir / 'milestones.sqlite3'}"


@dataclass
class Settings:
    database_url: str
    redis_url: str | None = None
    bpmn_dirs: list[Path] = field(default_factory=lambda: [PROJECT_ROOT / "bpmn", PROJECT_ROOT / "dmn"])
    instance_dir: Path = field(default_factory=lambda: Path.cwd() / "instance")
    sql_echo: bool = False
    # Evidence files: None means <instance_dir>/evidence (see evidence_dir()).
    storage_dir: Path | None = None
    evidence_max_bytes: int = 10 * 1024 * 1024
    evidence_allowed_types: tuple[str, ...] = field(default_factory=lambda: parse_types(None))
    # Limits for diagram scripts that run in the sandbox process (those with loops or functions).
    script_time_seconds: float = 2.0
    script_memory_mb: int = 256

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        instance_dir = Path(os.environ.get("MILESTONES_INSTANCE_DIR", Path.cwd() / "instance"))
        url = os.environ.get("DATABASE_URL") or default_database_url(instance_dir)
        values: dict[str, object] = {
            "database_url": normalize_database_url(url),
            "redis_url": os.environ.get("REDIS_URL") or None,
            "instance_dir": instance_dir,
            "storage_dir": Path(os.environ["MILESTONES_STORAGE_DIR"]) if os.environ.get("MILESTONES_STORAGE_DIR")
            else None,
            "evidence_max_bytes": int(os.environ.get("MILESTONES_EVIDENCE_MAX_BYTES") or 10 * 1024 * 1024),
            "evidence_allowed_types": parse_types(os.environ.get("MILESTONES_EVIDENCE_TYPES")),
            "script_time_seconds": float(os.environ.get("MILESTONES_SCRIPT_TIME_SECONDS") or 2.0),
            "script_memory_mb": int(os.environ.get("MILESTONES_SCRIPT_MEMORY_MB") or 256),
        }
        values.update(overrides)
        if "database_url" in overrides:
            values["database_url"] = normalize_database_url(str(overrides["database_url"]))
        return cls(**values)  # type: ignore[arg-type]

    def evidence_dir(self) -> Path:
        return self.storage_dir if self.storage_dir is not None else self.instance_dir / "evidence"


def normalize_database_url(url: str) -> str:
    """Accept the usual `postgres://` / `postgresql://` spellings and use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url
