"""HTTP resources under /api/v1. Each view parses, calls one service, and serializes the result."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from ..services import approvals, records
from .auth import current_user
from .context import command_uow, deployments, read_uow
from .schemas import (
    AccountIn,
    AccountOut,
    AccountPage,
    CompletionIn,
    ContractIn,
    ContractListArgs,
    ContractOut,
    ContractPage,
    MilestoneDetail,
    MilestoneIn,
    MilestoneListArgs,
    MilestoneOut,
    MilestonePage,
    PageArgs,
    SubmissionOut,
    TaskListArgs,
    TaskOut,
    TaskPage,
)

accounts_blp = Blueprint("accounts", __name__, url_prefix="/api/v1/accounts", description="Customer accounts")
contracts_blp = Blueprint("contracts", __name__, url_prefix="/api/v1/contracts", description="Contracts")
milestones_blp = Blueprint("milestones", __name__, url_prefix="/api/v1/milestones",
                           description="Milestones and their approval workflow")
tasks_blp = Blueprint("tasks", __name__, url_prefix="/api/v1/tasks", description="Human tasks (inbox)")

BLUEPRINTS = (accounts_blp, contracts_blp, milestones_blp, tasks_blp)
ERRORS = (401, 403, 404, 409, 422)


def _page(result: records.Page) -> dict[str, Any]:
    return {"items": result.items, "page": result.page, "page_size": result.page_size, "total": result.total}


# --------------------------------------------------------------------------- accounts
@accounts_blp.route("")
class Accounts(MethodView):
    @accounts_blp.arguments(PageArgs, location="query")
    @accounts_blp.response(200, AccountPage)
    def get(self, args: dict[str, Any]) -> Any:
        current_user()
        with read_uow() as uow:
            return _page(records.list_accounts(uow, args["page"], args["page_size"]))

    @accounts_blp.arguments(AccountIn)
    @accounts_blp.response(201, AccountOut)
    @accounts_blp.alt_response(409, description="An account with this name exists")
    def post(self, body: dict[str, Any]) -> Any:
        current_user()
        with command_uow() as uow:
            return records.create_account(uow, **body)


@accounts_blp.route("/<int:account_id>")
class AccountById(MethodView):
    @accounts_blp.response(200, AccountOut)
    def get(self, account_id: int) -> Any:
        current_user()
        with read_uow() as uow:
            return records.get_account(uow, account_id)


# --------------------------------------------------------------------------- contracts
@contracts_blp.route("")
class Contracts(MethodView):
    @contracts_blp.arguments(ContractListArgs, location="query")
    @contracts_blp.response(200, ContractPage)
    def get(self, args: dict[str, Any]) -> Any:
        current_user()
        with read_uow() as uow:
            return _page(records.list_contracts(uow, args["page"], args["page_size"], args["account_id"]))

    @contracts_blp.arguments(ContractIn)
    @contracts_blp.response(201, ContractOut)
    def post(self, body: dict[str, Any]) -> Any:
        current_user()
        with command_uow() as uow:
            return records.create_contract(uow, **body)


@contracts_blp.route("/<int:contract_id>")
class ContractById(MethodView):
    @contracts_blp.response(200, ContractOut)
    def get(self, contract_id: int) -> Any:
        current_user()
        with read_uow() as uow:
            return records.get_contract(uow, contract_id)


# --------------------------------------------------------------------------- milestones
@milestones_blp.route("")
class Milestones(MethodView):
    @milestones_blp.arguments(MilestoneListArgs, location="query")
    @milestones_blp.response(200, MilestonePage)
    def get(self, args: dict[str, Any]) -> Any:
        current_user()
        with read_uow() as uow:
            return _page(records.list_milestones(uow, args["page"], args["page_size"],
                                                 contract_id=args["contract_id"], status=args["status"],
                                                 type=args["type"]))

    @milestones_blp.arguments(MilestoneIn)
    @milestones_blp.response(201, MilestoneOut)
    def post(self, body: dict[str, Any]) -> Any:
        current_user()
        with command_uow() as uow:
            return records.create_milestone(uow, **body)


@milestones_blp.route("/<int:milestone_id>")
class MilestoneById(MethodView):
    @milestones_blp.response(200, MilestoneDetail)
    def get(self, milestone_id: int) -> Any:
        current_user()
        with read_uow() as uow:
            view = approvals.milestone_view(uow, milestone_id)
            detail = SimpleNamespace(**{c: getattr(view.milestone, c) for c in MilestoneOut().fields})
            detail.open_tasks = view.open_tasks
            detail.decisions = view.decisions
            detail.history = view.history
            detail.release = view.release
            return detail


@milestones_blp.route("/<int:milestone_id>/submission")
class Submission(MethodView):
    @milestones_blp.response(201, SubmissionOut)
    def post(self, milestone_id: int) -> Any:
        """Start the approval workflow (round 1) or resume a declined milestone (next round)."""
        user = current_user()
        with command_uow() as uow:
            return approvals.submit_milestone(uow, deployments(), user, milestone_id)


# --------------------------------------------------------------------------- tasks
@tasks_blp.route("")
class Tasks(MethodView):
    @tasks_blp.arguments(TaskListArgs, location="query")
    @tasks_blp.response(200, TaskPage)
    def get(self, args: dict[str, Any]) -> Any:
        """The caller's candidate tasks, read from the projection only."""
        user = current_user()
        with read_uow() as uow:
            status = None if args["state"] == "any" else args["state"]
            return _page(approvals.list_tasks(uow, user, page=args["page"], page_size=args["page_size"],
                                              status=status, group=args["group"],
                                              milestone_id=args["milestone_id"]))


@tasks_blp.route("/<task_id>")
class TaskById(MethodView):
    @tasks_blp.response(200, TaskOut)
    def get(self, task_id: str) -> Any:
        user = current_user()
        with read_uow() as uow:
            return approvals.get_task(uow, user, task_id)


@tasks_blp.route("/<task_id>/claim")
class Claim(MethodView):
    @tasks_blp.response(200, TaskOut)
    def post(self, task_id: str) -> Any:
        user = current_user()
        with command_uow() as uow:
            return approvals.claim_task(uow, user, task_id)


@tasks_blp.route("/<task_id>/unclaim")
class Unclaim(MethodView):
    @tasks_blp.response(200, TaskOut)
    def post(self, task_id: str) -> Any:
        user = current_user()
        with command_uow() as uow:
            return approvals.unclaim_task(uow, user, task_id)


@tasks_blp.route("/<task_id>/completion")
class Completion(MethodView):
    @tasks_blp.arguments(CompletionIn)
    @tasks_blp.response(200, TaskOut)
    def post(self, body: dict[str, Any], task_id: str) -> Any:
        """Approve or decline (decline needs a comment); the workflow runs on in the same transaction."""
        user = current_user()
        with command_uow() as uow:
            return approvals.complete_task(uow, deployments(), user, task_id, **body)
