"""Append-only audit trail."""

from __future__ import annotations

from typing import Any

from ..models import AuditEvent
from ..uow import UnitOfWork


def record(uow: UnitOfWork, action: str, entity_type: str, entity_id: object, *,
           before: dict[str, Any] | None = None, after: dict[str, Any] | None = None,
           actor_id: int | None = None, milestone_id: int | None = None, task_id: str | None = None,
           round: int | None = None) -> AuditEvent:
    """Append one event. A milestone's own events, and task events given their milestone, are
    found by `milestone_id` (the per-milestone trail); task events also name their task and round."""
    if milestone_id is None and entity_type == "milestone":
        milestone_id = int(str(entity_id))
    if task_id is None and entity_type == "task":
        task_id = str(entity_id)
    event = AuditEvent(
        actor_id=actor_id if actor_id is not None else uow.actor_id,
        action=action,
        entity_type=entity_type,
        entity_id=str(entity_id),
        before=_jsonable(before),
        after=_jsonable(after),
        request_id=uow.request_id,
        milestone_id=milestone_id,
        task_id=task_id,
        round=round,
    )
    uow.s.add(event)
    return event


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    return str(value)
