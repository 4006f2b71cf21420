"""Settings, read from the environment once per app (nothing is read at import time)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

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

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        instance_dir = Path(os.environ.get("MILESTONES_INSTANCE_DIR", Path.cwd() / "instance"))
        url = os.environ.get("DATABASE_URL") or default_database_url(instance_dir)
        values: dict[str, object] = {
            "database_url": normalize_database_url(url),
            "redis_url": os.environ.get("REDIS_URL") or None,
            "instance_dir": instance_dir,
        }
        values.update(overrides)
        if "database_url" in overrides:
            values["database_url"] = normalize_database_url(str(overrides["database_url"]))
        return cls(**values)  # type: ignore[arg-type]


def normalize_database_url(url: str) -> str:
    """Accept the usual `postgres://` / `postgresql://` spellings and use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url
