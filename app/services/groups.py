"""Approval groups as data: create, rename, members, lead. Every change re-projects open approvals.

A group is what a BPMN lane, a `camunda:candidateGroups` attribute or a routing-table row names.
Renaming keeps the old name as an alias, so diagrams and tables deployed before the rename still
reach the group; open tasks are rewritten to the new name in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, update

from ..errors import Conflict, Forbidden, NotFound, ValidationFailed
from ..models import ApprovalLevel, Group, GroupAlias, HumanTaskRow, Membership, TaskCandidate, User
from ..uow import UnitOfWork
from . import audit, routing
from .identity import user_named
from .records import Page, paginate

GROUP_NAME_MAX = 120


@dataclass
class GroupView:
    group: Group
    members: list[User]
    aliases: list[str]


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > GROUP_NAME_MAX or "," in name:
        raise ValidationFailed("invalid group name", {"name": [f"1 to {GROUP_NAME_MAX} characters, no commas"]})
    return name


def _name_taken(uow: UnitOfWork, name: str, *, except_group: int | None = None) -> bool:
    group_id = uow.s.scalar(select(Group.id).where(Group.name == name))
    alias_of = uow.s.scalar(select(GroupAlias.group_id).where(GroupAlias.name == name))
    return any(i is not None and i != except_group for i in (group_id, alias_of))


def require_admin(user: User) -> None:
    """Creating, renaming and leading groups is for administrators. Raises Forbidden."""
    if not user.is_admin:
        raise Forbidden("only administrators manage groups")


def require_member_manager(uow: UnitOfWork, user: User, group_id: int) -> None:
    """Members are managed by administrators and the group's lead. Raises NotFound, Forbidden."""
    if not user.is_admin and get_group(uow, group_id).lead_id != user.id:
        raise Forbidden("only administrators and the group's lead manage its members")


def get_group(uow: UnitOfWork, group_id: int) -> Group:
    group = uow.s.get(Group, group_id)
    if group is None:
        raise NotFound(f"no group {group_id}")
    return group


def group_view(uow: UnitOfWork, group_id: int) -> GroupView:
    group = get_group(uow, group_id)
    members = list(uow.s.scalars(select(User).join(Membership, Membership.user_id == User.id)
                                 .where(Membership.group_id == group.id).order_by(User.username)))
    aliases = list(uow.s.scalars(select(GroupAlias.name).where(GroupAlias.group_id == group.id).order_by(GroupAlias.name)))
    return GroupView(group, members, aliases)


def list_groups(uow: UnitOfWork, *, page: int, page_size: int, member: str | None = None) -> Page:
    stmt = select(Group).order_by(Group.name)
    if member:
        stmt = stmt.where(Group.id.in_(select(Membership.group_id).join(User, User.id == Membership.user_id)
                                       .where(User.username == member)))
    return paginate(uow, stmt, page, page_size)


def member_counts(uow: UnitOfWork, group_ids: list[int]) -> dict[int, int]:
    if not group_ids:
        return {}
    return {k: v for k, v in uow.s.execute(select(Membership.group_id, func.count()).where(Membership.group_id.in_(group_ids))
                              .group_by(Membership.group_id))}


def create_group(uow: UnitOfWork, name: str, *, description: str = "", lead: str | None = None,
                 members: list[str] | None = None) -> Group:
    """Create a group (with members and a lead). Raises Conflict (name or a former name taken),
    ValidationFailed (bad name, unknown users, a lead who is not a member)."""
    name = _clean_name(name)
    if _name_taken(uow, name):
        raise Conflict(f"group name {name!r} is taken (by a group or as a former name)", field="name")
    group = Group(name=name, description=description or "")
    uow.s.add(group)
    uow.flush()
    audit.record(uow, "group.created", "group", group.id, after={"name": name, "description": group.description})
    for username in dict.fromkeys(members or []):
        _add(uow, group, user_named(uow, username, "members"))
    if lead is not None:
        _set_lead(uow, group, lead)
    uow.flush()
    routing.reproject_levels(uow, routing.open_levels_of_groups(uow, [group.name]), reason="group created")
    uow.commit()
    return group


def update_group(uow: UnitOfWork, group_id: int, *, name: str | None = None, description: str | None = None,
                 lead: str | None = None, clear_lead: bool = False) -> Group:
    """Rename, describe, or set/clear the lead. A rename keeps the old name as an alias and rewrites
    open tasks and levels to the new name. Raises NotFound, Conflict, ValidationFailed."""
    group = get_group(uow, group_id)
    if name is not None:
        new = _clean_name(name)
        old = group.name
        if new != old:
            if _name_taken(uow, new, except_group=group.id):
                raise Conflict(f"group name {new!r} is taken (by a group or as a former name)", field="name")
            uow.s.execute(GroupAlias.__table__.delete().where(GroupAlias.name == new))  # taking back a former name
            uow.s.add(GroupAlias(name=old, group_id=group.id))
            group.name = new
            _rename_in_open_work(uow, old, new)
            audit.record(uow, "group.renamed", "group", group.id, before={"name": old}, after={"name": new})
    if description is not None and description != group.description:
        audit.record(uow, "group.described", "group", group.id, before={"description": group.description},
                     after={"description": description})
        group.description = description
    if clear_lead and group.lead_id is not None:
        before = uow.s.get(User, group.lead_id)
        group.lead_id = None
        audit.record(uow, "group.lead_changed", "group", group.id,
                     before={"lead": before.username if before else None}, after={"lead": None})
    elif lead is not None:
        _set_lead(uow, group, lead)
    uow.commit()
    return group


def _rename_in_open_work(uow: UnitOfWork, old: str, new: str) -> None:
    open_tasks = select(HumanTaskRow.id).where(HumanTaskRow.status == "open")
    uow.s.execute(update(TaskCandidate).where(TaskCandidate.kind == "group", TaskCandidate.name == old,
                                              TaskCandidate.task_id.in_(open_tasks))
                  .values(name=new).execution_options(synchronize_session=False))
    uow.s.execute(update(HumanTaskRow).where(HumanTaskRow.status == "open", HumanTaskRow.group_name == old)
                  .values(group_name=new).execution_options(synchronize_session=False))
    uow.s.execute(update(ApprovalLevel).where(ApprovalLevel.status.in_(("pending", "open")),
                                              ApprovalLevel.group_name == old)
                  .values(group_name=new).execution_options(synchronize_session=False))
    uow.s.expire_all()



def _set_lead(uow: UnitOfWork, group: Group, username: str) -> None:
    user = user_named(uow, username, "lead")
    if uow.s.get(Membership, (user.id, group.id)) is None:
        raise ValidationFailed(f"{username} is not a member of {group.name}", {"lead": ["the lead must be a member"]})
    if group.lead_id == user.id:
        return
    before = uow.s.get(User, group.lead_id) if group.lead_id else None
    group.lead_id = user.id
    audit.record(uow, "group.lead_changed", "group", group.id,
                 before={"lead": before.username if before else None}, after={"lead": username})


def _add(uow: UnitOfWork, group: Group, user: User) -> bool:
    if uow.s.get(Membership, (user.id, group.id)) is not None:
        return False
    uow.s.add(Membership(user_id=user.id, group_id=group.id))
    audit.record(uow, "membership.added", "group", group.id, after={"user": user.username, "group": group.name})
    return True


def add_member(uow: UnitOfWork, group_id: int, username: str) -> list[str]:
    """Add a member; they gain the group's open approval seats at once. Returns the changed task ids."""
    group = get_group(uow, group_id)
    user = user_named(uow, username, "username")
    changed: list[str] = []
    if _add(uow, group, user):
        uow.flush()
        changed = routing.reproject_levels(uow, routing.open_levels_of_groups(uow, [group.name]),
                                           reason=f"{username} joined {group.name}")
    uow.commit()
    return changed


def remove_member(uow: UnitOfWork, group_id: int, username: str) -> list[str]:
    """Remove a member; they lose the group's open approval seats at once (a seat they held goes
    back to the pool) and the lead role. Returns the changed task ids."""
    group = get_group(uow, group_id)
    user = user_named(uow, username, "username")
    membership = uow.s.get(Membership, (user.id, group.id))
    if membership is None:
        raise NotFound(f"{username} is not a member of {group.name}")
    uow.s.delete(membership)
    audit.record(uow, "membership.removed", "group", group.id, before={"user": username, "group": group.name})
    if group.lead_id == user.id:
        group.lead_id = None
        audit.record(uow, "group.lead_changed", "group", group.id, before={"lead": username}, after={"lead": None})
    uow.flush()
    changed = routing.reproject_levels(uow, routing.open_levels_of_groups(uow, [group.name]),
                                       reason=f"{username} left {group.name}")
    uow.commit()
    return changed


def group_by_name(uow: UnitOfWork, name: str) -> Group:
    group = routing.resolve_group(uow, name)
    if group is None:
        raise NotFound(f"no group {name!r}")
    return group
