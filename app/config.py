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
    notifications: NotificationSettings = field(default_factory=lambda: NotificationSettings.from_env())
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


@dataclass
class NotificationSettings:
    """Channels, delivery retries and the schedulers' periods (MILESTONES_* variables, see the README)."""

    smtp_host: str | None = None  # None: e-mails go to the log and <instance>/mail.log
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    mail_from: str = "milestones@localhost"
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_timeout: float = 10.0
    # Payment instructions (app.services.ledger): POSTed, HMAC-signed, to this endpoint until it answers
    # 2xx; None: written to <instance>/payments.log (the embedded default).
    payment_url: str | None = None
    payment_secret: str | None = None
    max_attempts: int = 5
    backoff_seconds: float = 30.0  # attempt n waits backoff * 2**(n-1)
    lease_seconds: float = 120.0  # longer than one send can take (SMTP and webhook timeouts)
    scheduler_interval: float = 2.0  # embedded scheduler: seconds between rounds
    timer_period: float = 30.0  # celery beat: fire due timers
    sweep_period: float = 15.0  # celery beat: re-ring the outbox and due deliveries

    @classmethod
    def from_env(cls) -> NotificationSettings:
        env = os.environ

        def number(name: str, default: float) -> float:
            return float(env.get(name) or default)

        return cls(
            smtp_host=env.get("MILESTONES_SMTP_HOST") or None,
            smtp_port=int(env.get("MILESTONES_SMTP_PORT") or 25),
            smtp_user=env.get("MILESTONES_SMTP_USER") or None,
            smtp_password=env.get("MILESTONES_SMTP_PASSWORD") or None,
            smtp_starttls=(env.get("MILESTONES_SMTP_STARTTLS") or "").lower() in ("1", "true", "yes"),
            mail_from=env.get("MILESTONES_MAIL_FROM") or "milestones@localhost",
            webhook_url=env.get("MILESTONES_WEBHOOK_URL") or None,
            webhook_secret=env.get("MILESTONES_WEBHOOK_SECRET") or None,
            webhook_timeout=number("MILESTONES_WEBHOOK_TIMEOUT", 10.0),
            payment_url=env.get("MILESTONES_PAYMENT_URL") or None,
            payment_secret=env.get("MILESTONES_PAYMENT_SECRET") or None,
            max_attempts=int(env.get("MILESTONES_DELIVERY_ATTEMPTS") or 5),
            backoff_seconds=number("MILESTONES_DELIVERY_BACKOFF", 30.0),
            lease_seconds=number("MILESTONES_DELIVERY_LEASE", 120.0),
            scheduler_interval=number("MILESTONES_SCHEDULER_INTERVAL", 2.0),
            timer_period=number("MILESTONES_TIMER_PERIOD", 30.0),
            sweep_period=number("MILESTONES_SWEEP_PERIOD", 15.0),
        )
