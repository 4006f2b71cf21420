"""HTTP resources for approval routing: groups, out of office, task handling, rounds and the audit trail."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from ..services import approvals, groups, out_of_office, routing
from .auth import current_user
from .context import command_uow, deployments, read_uow
from .notifications import me_blp
from .schemas import AuditOut, PageArgs, PageMeta, Strict, TaskOut

groups_blp = Blueprint("groups", __name__, url_prefix="/api/v1/groups",
                       description="Approval groups: members, lead, renames (administrators; leads manage members)")
task_actions_blp = Blueprint("task_actions", __name__, url_prefix="/api/v1/tasks",
                             description="Task handling: assign, delegate, comment, bulk completion")
milestone_trail_blp = Blueprint("milestone_trail", __name__, url_prefix="/api/v1/milestones",
                                description="A milestone's approval rounds and audit trail")

BLUEPRINTS = (groups_blp, task_actions_blp, milestone_trail_blp)
USERNAME = fields.String(required=True, validate=validate.Length(min=1, max=80))


# --------------------------------------------------------------------------- schemas
class GroupIn(Strict):
    name = fields.String(required=True, validate=validate.Length(min=1, max=120))
    description = fields.String(load_default="", validate=validate.Length(max=500))
    lead = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=80))
    members = fields.List(fields.String(validate=validate.Length(min=1, max=80)), load_default=list,
                          validate=validate.Length(max=500))


class GroupPatch(Strict):
    name = fields.String(validate=validate.Length(min=1, max=120))
    description = fields.String(validate=validate.Length(max=500))
    lead = fields.String(allow_none=True, validate=validate.Length(min=1, max=80),
                         metadata={"description": "a member's username; null clears the lead"})


class MemberIn(Strict):
    username = USERNAME


class GroupOut(Schema):
    id = fields.Integer()
    name = fields.String()
    description = fields.String()
    lead = fields.String(allow_none=True, metadata={"description": "the lead's username"})
    created_at = fields.DateTime()


class GroupSummary(GroupOut):
    member_count = fields.Integer()


class GroupDetail(GroupOut):
    members = fields.List(fields.String())
    former_names = fields.List(fields.String())


class GroupPage(PageMeta):
    items = fields.List(fields.Nested(GroupSummary))


class GroupListArgs(PageArgs):
    member = fields.String(load_default=None, metadata={"description": "only the groups of this username"})


class MembershipChange(Schema):
    group = fields.Nested(GroupDetail)
    changed_tasks = fields.List(fields.String(), metadata={"description": "open tasks re-projected by the change"})


class OutOfOfficeIn(Strict):
    substitute = USERNAME
    starts_at = fields.AwareDateTime(load_default=None, allow_none=True, metadata={"description": "default: now"})
    ends_at = fields.AwareDateTime(required=True)
    reason = fields.String(load_default="", validate=validate.Length(max=500))


class OutOfOfficeOut(Schema):
    id = fields.Integer()
    user = fields.Function(lambda p: p.user.username)
    substitute = fields.Function(lambda p: p.substitute.username)
    starts_at = fields.DateTime()
    ends_at = fields.DateTime()
    reason = fields.String()
    started_at = fields.DateTime(allow_none=True)
    ended_at = fields.DateTime(allow_none=True)
    cancelled_at = fields.DateTime(allow_none=True)


class OutOfOfficeList(Schema):
    items = fields.List(fields.Nested(OutOfOfficeOut))


class OutOfOfficeArgs(Strict):
    include_past = fields.Boolean(load_default=False)


class AssignmentIn(Strict):
    assignee = USERNAME
    comment = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=5000))


class DelegationIn(Strict):
    to = USERNAME
    comment = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=5000))


class CommentIn(Strict):
    body = fields.String(required=True, validate=validate.Length(min=1, max=10000))


class CommentOut(Schema):
    id = fields.Integer()
    task_id = fields.String()
    milestone_id = fields.Integer(allow_none=True)
    author = fields.Function(lambda c: c.author.username)
    body = fields.String()
    created_at = fields.DateTime()


class CommentList(Schema):
    items = fields.List(fields.Nested(CommentOut))


class BulkItemIn(Strict):
    task_id = fields.String(required=True, validate=validate.Length(min=1, max=36))
    decision = fields.String(load_default="approve", validate=validate.OneOf(["approve", "decline"]))
    comment = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=5000))


class BulkIn(Strict):
    items = fields.List(fields.Nested(BulkItemIn), required=True, validate=validate.Length(min=1, max=100))


class BulkItemOut(Schema):
    task_id = fields.String()
    status = fields.Integer(metadata={"description": "what a single completion would have answered"})
    task = fields.Nested(TaskOut, allow_none=True)
    problem = fields.Dict(allow_none=True)


class BulkOut(Schema):
    succeeded = fields.Integer()
    failed = fields.Integer()
    results = fields.List(fields.Nested(BulkItemOut))


class VoteOut(Schema):
    task_id = fields.String()
    seat = fields.Integer(allow_none=True)
    status = fields.String()
    decision = fields.String(allow_none=True)
    comment = fields.String(allow_none=True)
    decided_by = fields.String(allow_none=True)
    on_behalf_of = fields.String(allow_none=True)
    assignee = fields.String(allow_none=True)
    decided_at = fields.DateTime(allow_none=True)
    bpmn_id = fields.String()


class LevelOut(Schema):
    level = fields.Integer()
    group = fields.String()
    quorum = fields.String()
    on_decline = fields.String()
    required = fields.Integer(allow_none=True)
    seats = fields.Integer(allow_none=True)
    status = fields.String()
    approvals = fields.Integer()
    declines = fields.Integer()
    eligible = fields.List(fields.Dict())
    opened_at = fields.DateTime(allow_none=True)
    closed_at = fields.DateTime(allow_none=True)
    votes = fields.List(fields.Nested(VoteOut))


class RoundOut(Schema):
    round = fields.Integer()
    instance_id = fields.Integer()
    status = fields.String()
    outcome = fields.String()
    started_at = fields.DateTime()
    ended_at = fields.DateTime(allow_none=True)
    levels = fields.List(fields.Nested(LevelOut))
    decline_reasons = fields.List(fields.Dict())
    other_tasks = fields.List(fields.Nested(VoteOut))


class RoundList(Schema):
    milestone_id = fields.Integer()
    items = fields.List(fields.Nested(RoundOut))


class TrailOut(AuditOut):
    milestone_id = fields.Integer(allow_none=True)
    task_id = fields.String(allow_none=True)
    round = fields.Integer(allow_none=True)


class TrailPage(PageMeta):
    items = fields.List(fields.Nested(TrailOut))


class TrailArgs(PageArgs):
    page_size = fields.Integer(load_default=100, validate=validate.Range(min=1, max=100))
    action = fields.String(load_default=None, metadata={"description": "only this action, e.g. task.delegated"})
    round = fields.Integer(load_default=None)


# --------------------------------------------------------------------------- groups
def _detail(view: groups.GroupView) -> dict[str, Any]:
    group = view.group
    return {"id": group.id, "name": group.name, "description": group.description, "lead": _lead(group),
            "created_at": group.created_at, "members": [u.username for u in view.members],
            "former_names": view.aliases}


def _lead(group: Any) -> str | None:
    return group.lead.username if group.lead is not None else None


@groups_blp.route("")
class Groups(MethodView):
    @groups_blp.arguments(GroupListArgs, location="query")
    @groups_blp.response(200, GroupPage)
    def get(self, args: dict[str, Any]) -> Any:
        """Every group, with its lead and member count."""
        current_user()
        with read_uow() as uow:
            page = groups.list_groups(uow, page=args["page"], page_size=args["page_size"], member=args["member"])
            counts = groups.member_counts(uow, [g.id for g in page.items])
            items = [{"id": g.id, "name": g.name, "description": g.description, "lead": _lead(g),
                      "created_at": g.created_at, "member_count": counts.get(g.id, 0)} for g in page.items]
            return {"items": items, "page": page.page, "page_size": page.page_size, "total": page.total}

    @groups_blp.arguments(GroupIn)
    @groups_blp.response(201, GroupDetail)
    @groups_blp.alt_response(403, description="Administrators only")
    def post(self, body: dict[str, Any]) -> Any:
        """Create a group (optionally with members and a lead who is one of them)."""
        groups.require_admin(current_user())
        with command_uow() as uow:
            group = groups.create_group(uow, body["name"], description=body["description"], lead=body["lead"],
                                        members=body["members"])
            return _detail(groups.group_view(uow, group.id))


@groups_blp.route("/<int:group_id>")
class GroupById(MethodView):
    @groups_blp.response(200, GroupDetail)
    def get(self, group_id: int) -> Any:
        current_user()
        with read_uow() as uow:
            return _detail(groups.group_view(uow, group_id))

    @groups_blp.arguments(GroupPatch)
    @groups_blp.response(200, GroupDetail)
    def patch(self, body: dict[str, Any], group_id: int) -> Any:
        """Rename (the old name keeps working as a former name), describe, set or clear the lead."""
        groups.require_admin(current_user())
        with command_uow() as uow:
            groups.update_group(uow, group_id, name=body.get("name"), description=body.get("description"),
                                lead=body.get("lead"), clear_lead="lead" in body and body["lead"] is None)
            return _detail(groups.group_view(uow, group_id))


@groups_blp.route("/<int:group_id>/members")
class GroupMembers(MethodView):
    @groups_blp.arguments(MemberIn)
    @groups_blp.response(200, MembershipChange)
    def post(self, body: dict[str, Any], group_id: int) -> Any:
        """Add a member: they gain the group's open approval seats at once."""
        with command_uow() as uow:
            groups.require_member_manager(uow, current_user(), group_id)
            changed = groups.add_member(uow, group_id, body["username"])
            return {"group": _detail(groups.group_view(uow, group_id)), "changed_tasks": changed}


@groups_blp.route("/<int:group_id>/members/<username>")
class GroupMember(MethodView):
    @groups_blp.response(200, MembershipChange)
    def delete(self, group_id: int, username: str) -> Any:
        """Remove a member: they lose the group's open approval seats at once."""
        with command_uow() as uow:
            groups.require_member_manager(uow, current_user(), group_id)
            changed = groups.remove_member(uow, group_id, username)
            return {"group": _detail(groups.group_view(uow, group_id)), "changed_tasks": changed}


# --------------------------------------------------------------------------- out of office
@me_blp.route("/out-of-office")
class MyOutOfOffice(MethodView):
    @me_blp.arguments(OutOfOfficeArgs, location="query")
    @me_blp.response(200, OutOfOfficeList)
    def get(self, args: dict[str, Any]) -> Any:
        """The caller's out-of-office periods (current and coming; include_past for all)."""
        user = current_user()
        with read_uow() as uow:
            return {"items": out_of_office.list_out_of_office(uow, user, include_past=args["include_past"])}

    @me_blp.arguments(OutOfOfficeIn)
    @me_blp.response(201, OutOfOfficeOut)
    def post(self, body: dict[str, Any]) -> Any:
        """Name a substitute for a period: open tasks move when it starts, new ones go to the substitute."""
        user = current_user()
        with command_uow() as uow:
            return out_of_office.set_out_of_office(uow, user, body["substitute"], body["starts_at"],
                                                   body["ends_at"], reason=body["reason"])


@me_blp.route("/out-of-office/<int:period_id>")
class MyOutOfOfficePeriod(MethodView):
    @me_blp.response(200, OutOfOfficeOut)
    def delete(self, period_id: int) -> Any:
        """End a period now (or cancel one that has not started)."""
        user = current_user()
        with command_uow() as uow:
            return out_of_office.end_out_of_office(uow, user, period_id)


# --------------------------------------------------------------------------- task handling
@task_actions_blp.route("/<task_id>/assignment")
class Assignment(MethodView):
    @task_actions_blp.arguments(AssignmentIn)
    @task_actions_blp.response(200, TaskOut)
    def post(self, body: dict[str, Any], task_id: str) -> Any:
        """Assign or reassign to a candidate: the group's lead, an administrator, or the assignee handing over."""
        user = current_user()
        with command_uow() as uow:
            return approvals.assign_task(uow, user, task_id, body["assignee"], comment=body["comment"])


@task_actions_blp.route("/<task_id>/delegation")
class Delegation(MethodView):
    @task_actions_blp.arguments(DelegationIn)
    @task_actions_blp.response(200, TaskOut)
    def post(self, body: dict[str, Any], task_id: str) -> Any:
        """Delegate a task you hold (or could claim): the delegate completes it on your behalf."""
        user = current_user()
        with command_uow() as uow:
            return approvals.delegate_task(uow, user, task_id, body["to"], comment=body["comment"])


@task_actions_blp.route("/<task_id>/comments")
class Comments(MethodView):
    @task_actions_blp.response(200, CommentList)
    def get(self, task_id: str) -> Any:
        user = current_user()
        with read_uow() as uow:
            return {"items": approvals.list_comments(uow, user, task_id)}

    @task_actions_blp.arguments(CommentIn)
    @task_actions_blp.response(201, CommentOut)
    def post(self, body: dict[str, Any], task_id: str) -> Any:
        """Comment on a task: visible to its candidates and the milestone's owners."""
        user = current_user()
        with command_uow() as uow:
            return approvals.add_comment(uow, user, task_id, body["body"])


@task_actions_blp.route("/bulk-completion")
class BulkCompletion(MethodView):
    @task_actions_blp.arguments(BulkIn)
    @task_actions_blp.response(200, BulkOut)
    def post(self, body: dict[str, Any]) -> Any:
        """Approve (or decline) several tasks; each in its own transaction, with a result per item."""
        user = current_user()
        with command_uow() as uow:
            results = approvals.bulk_complete(uow, deployments(), user, body["items"])
            ok = sum(1 for r in results if r.status == 200)
            return {"succeeded": ok, "failed": len(results) - ok, "results": results}


# --------------------------------------------------------------------------- rounds and audit
@milestone_trail_blp.route("/<int:milestone_id>/rounds")
class Rounds(MethodView):
    @milestone_trail_blp.response(200, RoundList)
    def get(self, milestone_id: int) -> Any:
        """Every approval round: its levels, quorum, and each vote (who, what, when, why, for whom)."""
        current_user()
        with read_uow() as uow:
            approvals.milestone_or_404(uow, milestone_id)
            return {"milestone_id": milestone_id, "items": routing.rounds(uow, milestone_id)}


@milestone_trail_blp.route("/<int:milestone_id>/audit-events")
class Trail(MethodView):
    @milestone_trail_blp.arguments(TrailArgs, location="query")
    @milestone_trail_blp.response(200, TrailPage)
    def get(self, args: dict[str, Any], milestone_id: int) -> Any:
        """The milestone's audit trail: claims, assignments, delegations, decisions, comments,
        substitutions, routing, status changes; oldest first."""
        current_user()
        with read_uow() as uow:
            page = approvals.milestone_trail(uow, milestone_id, page=args["page"], page_size=args["page_size"],
                                             action=args["action"], round=args["round"])
            return {"items": page.items, "page": page.page, "page_size": page.page_size, "total": page.total}
