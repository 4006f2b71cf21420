"""HTTP resources under /api/v1. Each view parses, calls one service, and serializes the result."""

from __future__ import annotations

from datetime import date
from types import SimpleNamespace
from typing import Any

from flask import Response, stream_with_context
from flask.views import MethodView
from flask_smorest import Blueprint

from ..services import approvals, ledger, milestones, overview, records, transactions
from .auth import current_user
from .context import command_uow, deployments, read_uow
from .objectives import evidence_blp, objectives_blp
from .operations import BLUEPRINTS as OPERATIONS_BLUEPRINTS
from .schemas import (
    AccountIn,
    AccountOut,
    AccountPage,
    CompletionIn,
    ContactIn,
    ContactOut,
    ContactPage,
    ContractIn,
    ContractListArgs,
    ContractOut,
    ContractPage,
    MilestoneDetail,
    MilestoneFields,
    MilestoneFilterArgs,
    MilestoneIn,
    MilestoneListArgs,
    MilestoneOut,
    MilestonePage,
    MilestoneSummary,
    PageArgs,
    SubmissionOut,
    TaskListArgs,
    TaskOut,
    TaskPage,
    TransactionIn,
    TransactionLinkIn,
    TransactionListArgs,
    TransactionOut,
    TransactionPage,
)

accounts_blp = Blueprint("accounts", __name__, url_prefix="/api/v1/accounts", description="Customer accounts")
contracts_blp = Blueprint("contracts", __name__, url_prefix="/api/v1/contracts", description="Contracts")
milestones_blp = Blueprint("milestones", __name__, url_prefix="/api/v1/milestones",
                           description="Milestones and their approval workflow")
tasks_blp = Blueprint("tasks", __name__, url_prefix="/api/v1/tasks", description="Human tasks (inbox)")
transactions_blp = Blueprint("transactions", __name__, url_prefix="/api/v1/transactions",
                             description="Contract transactions and their milestone links")

BLUEPRINTS = (accounts_blp, contracts_blp, milestones_blp, tasks_blp, transactions_blp,
              objectives_blp, evidence_blp, *OPERATIONS_BLUEPRINTS)
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


@accounts_blp.route("/<int:account_id>/contacts")
class Contacts(MethodView):
    @accounts_blp.arguments(PageArgs, location="query")
    @accounts_blp.response(200, ContactPage)
    def get(self, args: dict[str, Any], account_id: int) -> Any:
        current_user()
        with read_uow() as uow:
            return _page(records.list_contacts(uow, account_id, args["page"], args["page_size"]))

    @accounts_blp.arguments(ContactIn)
    @accounts_blp.response(201, ContactOut)
    def post(self, body: dict[str, Any], account_id: int) -> Any:
        current_user()
        with command_uow() as uow:
            return records.create_contact(uow, account_id, **body)


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


@contracts_blp.route("/<int:contract_id>/milestones")
class ContractMilestones(MethodView):
    @contracts_blp.arguments(MilestoneFields)
    @contracts_blp.response(201, MilestoneOut)
    def post(self, body: dict[str, Any], contract_id: int) -> Any:
        """Create a milestone on this contract (linked to it and its account automatically)."""
        current_user()
        with command_uow() as uow:
            return milestones.create_milestone(uow, deployments(), contract_id, **body)


@contracts_blp.route("/<int:contract_id>/transactions")
class ContractTransactions(MethodView):
    @contracts_blp.arguments(TransactionListArgs, location="query")
    @contracts_blp.response(200, TransactionPage)
    def get(self, args: dict[str, Any], contract_id: int) -> Any:
        current_user()
        with read_uow() as uow:
            return _page(transactions.list_transactions(uow, contract_id, args["page"], args["page_size"],
                                                        args["milestone_id"]))

    @contracts_blp.arguments(TransactionIn)
    @contracts_blp.response(201, TransactionOut)
    def post(self, body: dict[str, Any], contract_id: int) -> Any:
        """Record a payment, invoice, retainage... optionally linked to a financial milestone."""
        current_user()
        with command_uow() as uow:
            return transactions.record_transaction(uow, contract_id, **body)


@transactions_blp.route("/<int:transaction_id>")
class TransactionById(MethodView):
    @transactions_blp.response(200, TransactionOut)
    def get(self, transaction_id: int) -> Any:
        current_user()
        with read_uow() as uow:
            return transactions.get_transaction(uow, transaction_id)


@transactions_blp.route("/<int:transaction_id>/link")
class TransactionLink(MethodView):
    @transactions_blp.arguments(TransactionLinkIn)
    @transactions_blp.response(200, TransactionOut)
    def post(self, body: dict[str, Any], transaction_id: int) -> Any:
        """Link to a financial milestone of the same contract (and optionally one of its objectives)."""
        current_user()
        with command_uow() as uow:
            return transactions.link_transaction(uow, transaction_id, **body)

    @transactions_blp.response(200, TransactionOut)
    def delete(self, transaction_id: int) -> Any:
        current_user()
        with command_uow() as uow:
            return transactions.unlink_transaction(uow, transaction_id)


# --------------------------------------------------------------------------- milestones
def _filter(args: dict[str, Any]) -> overview.MilestoneFilter:
    names = overview.MilestoneFilter.__dataclass_fields__
    return overview.MilestoneFilter(**{k: v for k, v in args.items() if k in names})


@milestones_blp.route("")
class Milestones(MethodView):
    @milestones_blp.arguments(MilestoneListArgs, location="query")
    @milestones_blp.response(200, MilestonePage)
    def get(self, args: dict[str, Any]) -> Any:
        """Every milestone across contracts: filter, sort, paginate."""
        current_user()
        with read_uow() as uow:
            return _page(overview.list_milestones(uow, _filter(args), args["page"], args["page_size"], date.today()))

    @milestones_blp.arguments(MilestoneIn)
    @milestones_blp.response(201, MilestoneOut)
    def post(self, body: dict[str, Any]) -> Any:
        current_user()
        with command_uow() as uow:
            return milestones.create_milestone(uow, deployments(), body.pop("contract_id"), **body)


@milestones_blp.route("/summary")
class MilestoneSummaryView(MethodView):
    @milestones_blp.arguments(MilestoneFilterArgs, location="query")
    @milestones_blp.response(200, MilestoneSummary)
    def get(self, args: dict[str, Any]) -> Any:
        """Counts per status and per due-date bucket (overdue, this week, later) of the filtered list."""
        current_user()
        with read_uow() as uow:
            return overview.summary(uow, _filter(args), date.today())


@milestones_blp.route("/export.csv")
class MilestoneExport(MethodView):
    @milestones_blp.arguments(MilestoneFilterArgs, location="query")
    @milestones_blp.response(200, description="CSV of the filtered list, streamed")
    def get(self, args: dict[str, Any]) -> Any:
        current_user()
        uow = read_uow()
        rows = overview.export_csv(uow, _filter(args), date.today())
        response = Response(stream_with_context(rows), mimetype="text/csv")
        response.headers["Content-Disposition"] = f'attachment; filename="milestones-{date.today()}.csv"'
        return response


@milestones_blp.route("/<int:milestone_id>")
class MilestoneById(MethodView):
    @milestones_blp.response(200, MilestoneDetail)
    def get(self, milestone_id: int) -> Any:
        current_user()
        with read_uow() as uow:
            view = approvals.milestone_view(uow, milestone_id)
            detail = SimpleNamespace(**{c: getattr(view.milestone, c) for c in MilestoneOut().fields})
            detail.allowed_actions = milestones.allowed_actions(uow, view.milestone)
            detail.open_tasks = view.open_tasks
            detail.decisions = view.decisions
            detail.history = view.history
            detail.release = view.release
            detail.money = ledger.milestone_money(uow, view.milestone)
            return detail


def _transition(milestone_id: int, action: str) -> Any:
    user = current_user()
    with command_uow() as uow:
        return milestones.transition(uow, deployments(), user, milestone_id, action)


@milestones_blp.route("/<int:milestone_id>/activation")
class Activation(MethodView):
    @milestones_blp.response(200, MilestoneOut)
    def post(self, milestone_id: int) -> Any:
        """Draft → active (ready for its objectives to be worked on)."""
        return _transition(milestone_id, "activate")


@milestones_blp.route("/<int:milestone_id>/publication")
class Publication(MethodView):
    @milestones_blp.response(200, MilestoneOut)
    def post(self, milestone_id: int) -> Any:
        """Publish an active milestone to the external portal (audited)."""
        return _transition(milestone_id, "publish")

    @milestones_blp.response(200, MilestoneOut)
    def delete(self, milestone_id: int) -> Any:
        """Withdraw it from the portal (audited)."""
        return _transition(milestone_id, "unpublish")


@milestones_blp.route("/<int:milestone_id>/cancellation")
class Cancellation(MethodView):
    @milestones_blp.response(200, MilestoneOut)
    def post(self, milestone_id: int) -> Any:
        """Cancel from any open state; running approval rounds are cancelled and leave every inbox."""
        return _transition(milestone_id, "cancel")


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
