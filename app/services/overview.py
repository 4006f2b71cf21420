"""The milestone overview across contracts: filters, sorting, counts and CSV export."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Select, and_, case, func, not_, select

from ..models import Contract, Milestone
from ..uow import UnitOfWork
from .csvstream import stream_rows
from .records import Page, paginate

CLOSED = ("completed", "cancelled")
SORTS = {
    "due_date": (Milestone.due_date.is_(None), Milestone.due_date),
    "-due_date": (Milestone.due_date.is_(None), Milestone.due_date.desc()),
    "amount": (Milestone.amount.is_(None), Milestone.amount),
    "-amount": (Milestone.amount.is_(None), Milestone.amount.desc()),
    "status": (Milestone.status,),
    "-status": (Milestone.status.desc(),),
    "code": (Milestone.code,),
    "created": (Milestone.created_at,),
}
CSV_COLUMNS = ("id", "code", "contract_number", "account_id", "type", "status", "published", "amount", "currency",
               "due_date", "primary_contact_id", "round", "description")


@dataclass
class MilestoneFilter:
    status: str | None = None
    type: str | None = None
    contract_id: int | None = None
    account_id: int | None = None
    primary_contact_id: int | None = None
    due_before: date | None = None
    due_after: date | None = None
    overdue: bool | None = None
    published: bool | None = None
    sort: str = "due_date"


def _overdue(today: date) -> Any:
    return and_(Milestone.due_date < today, Milestone.status.not_in(CLOSED))


def _filtered(f: MilestoneFilter, today: date, stmt: Select[Any]) -> Select[Any]:
    if f.status:
        stmt = stmt.where(Milestone.status == f.status)
    if f.type:
        stmt = stmt.where(Milestone.type == f.type)
    if f.contract_id is not None:
        stmt = stmt.where(Milestone.contract_id == f.contract_id)
    if f.account_id is not None:
        stmt = stmt.where(Milestone.account_id == f.account_id)
    if f.primary_contact_id is not None:
        stmt = stmt.where(Milestone.primary_contact_id == f.primary_contact_id)
    if f.due_before is not None:
        stmt = stmt.where(Milestone.due_date < f.due_before)
    if f.due_after is not None:
        stmt = stmt.where(Milestone.due_date > f.due_after)
    if f.overdue is not None:
        stmt = stmt.where(_overdue(today) if f.overdue else not_(_overdue(today)) | Milestone.due_date.is_(None))
    if f.published is not None:
        stmt = stmt.where(Milestone.published.is_(f.published))
    return stmt


def list_milestones(uow: UnitOfWork, f: MilestoneFilter, page: int, page_size: int, today: date) -> Page:
    stmt = _filtered(f, today, select(Milestone)).order_by(*SORTS[f.sort], Milestone.id)
    return paginate(uow, stmt, page, page_size)


def summary(uow: UnitOfWork, f: MilestoneFilter, today: date) -> dict[str, Any]:
    """Counts per status, and per due-date bucket for the open milestones, of the filtered list."""
    by_status = dict(uow.s.execute(
        _filtered(f, today, select(Milestone.status, func.count())).group_by(Milestone.status)).all())
    week_end = today + timedelta(days=6 - today.weekday())
    bucket = case(
        (Milestone.due_date.is_(None), "no_due_date"),
        (Milestone.due_date < today, "overdue"),
        (Milestone.due_date <= week_end, "this_week"),
        else_="later",
    )
    rows = uow.s.execute(
        _filtered(f, today, select(bucket, func.count())).where(Milestone.status.not_in(CLOSED)).group_by(bucket)
    ).all()
    by_due = {"overdue": 0, "this_week": 0, "later": 0, "no_due_date": 0}
    by_due.update({name: count for name, count in rows})
    return {"total": sum(by_status.values()), "by_status": by_status, "by_due": by_due,
            "as_of": today.isoformat(), "week_ends": week_end.isoformat()}


def export_csv(uow: UnitOfWork, f: MilestoneFilter, today: date) -> Iterator[str]:
    """The filtered list as CSV, produced row by row (the caller streams it)."""
    stmt = (_filtered(f, today, select(Milestone, Contract.number).join(Contract, Contract.id == Milestone.contract_id))
            .order_by(*SORTS[f.sort], Milestone.id).execution_options(yield_per=500))
    rows = ([milestone.id, milestone.code, number, milestone.account_id, milestone.type, milestone.status,
             str(milestone.published).lower(), "" if milestone.amount is None else f"{milestone.amount:.2f}",
             milestone.currency, milestone.due_date.isoformat() if milestone.due_date else "",
             milestone.primary_contact_id or "", milestone.round, milestone.description]
            for milestone, number in uow.s.execute(stmt))
    yield from stream_rows(CSV_COLUMNS, rows)  # a generator: the query runs when the stream starts


__all__ = ["MilestoneFilter", "export_csv", "list_milestones", "summary"]
