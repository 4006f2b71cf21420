"""HTTP resources for the funds ledger: balances and entries per contract and milestone, CSV, reversal."""

from __future__ import annotations

from typing import Any

from flask import Response, stream_with_context
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from ..services import ledger
from .auth import current_user
from .context import command_uow, read_uow
from .schemas import Strict

ledger_blp = Blueprint("ledger", __name__, url_prefix="/api/v1",
                       description="The funds ledger: held, released, retained, reversed (never rewritten)")
BLUEPRINTS = (ledger_blp,)
MONEY = {"places": 2, "as_string": True}


class BalanceOut(Schema):
    currency = fields.String(allow_none=True)
    linked = fields.Decimal(**MONEY)
    held = fields.Decimal(**MONEY)
    released = fields.Decimal(**MONEY)
    retained = fields.Decimal(**MONEY)
    reversed = fields.Decimal(**MONEY)
    cancelled = fields.Decimal(**MONEY)


class EntryOut(Schema):
    id = fields.Integer()
    created_at = fields.DateTime()
    contract_id = fields.Integer()
    milestone_id = fields.Integer()
    transaction_id = fields.Integer()
    objective_id = fields.Integer(allow_none=True)
    kind = fields.String()
    amount = fields.Decimal(**MONEY)
    currency = fields.String()
    round = fields.Integer(allow_none=True)
    actor = fields.Function(lambda e: e.actor.username if e.actor is not None else None)
    step = fields.String(allow_none=True, metadata={"description": "the workflow step that made it"})
    instance_id = fields.Integer(allow_none=True)
    reason = fields.String(allow_none=True)
    reverses_id = fields.Integer(allow_none=True)
    idempotency_key = fields.String()


class PartBalance(BalanceOut):
    id = fields.Integer()


class LedgerOut(Schema):
    balance = fields.Nested(BalanceOut)
    entries = fields.List(fields.Nested(EntryOut))
    milestones = fields.List(fields.Nested(PartBalance), metadata={"description": "per milestone (contract ledger)"})
    transactions = fields.List(fields.Nested(PartBalance),
                               metadata={"description": "per transaction (milestone ledger)"})


class ReversalIn(Strict):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=2000))


def _parts(balances: dict[int, ledger.Balance]) -> list[dict[str, Any]]:
    return [{"id": key, **b.as_dict()} for key, b in sorted(balances.items())]


@ledger_blp.route("/contracts/<int:contract_id>/ledger")
class ContractLedger(MethodView):
    @ledger_blp.response(200, LedgerOut)
    def get(self, contract_id: int) -> Any:
        """The contract's entries (oldest first), its balance and each milestone's."""
        current_user()
        with read_uow() as uow:
            result = ledger.contract_ledger(uow, contract_id)
            return {"balance": result.balance.as_dict(), "entries": result.entries,
                    "milestones": _parts(result.per_milestone), "transactions": []}


@ledger_blp.route("/contracts/<int:contract_id>/ledger.csv")
class ContractLedgerCsv(MethodView):
    @ledger_blp.response(200, description="CSV: every entry, then the balances", content_type="text/csv")
    def get(self, contract_id: int) -> Any:
        """The same as CSV: every entry, then a balance line per milestone and one for the contract."""
        current_user()
        uow = read_uow()  # request-scoped: closed after the stream is written
        ledger.contract_ledger(uow, contract_id)  # 404 before the stream starts
        rows = ledger.contract_ledger_csv(uow, contract_id)
        return Response(stream_with_context(rows), mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="contract-{contract_id}-ledger.csv"'})


@ledger_blp.route("/milestones/<int:milestone_id>/ledger")
class MilestoneLedger(MethodView):
    @ledger_blp.response(200, LedgerOut)
    def get(self, milestone_id: int) -> Any:
        """The milestone's entries, its balance and each linked transaction's."""
        current_user()
        with read_uow() as uow:
            result = ledger.milestone_ledger(uow, milestone_id)
            return {"balance": result.balance.as_dict(), "entries": result.entries, "milestones": [],
                    "transactions": _parts(result.per_transaction)}


@ledger_blp.route("/ledger-entries/<int:entry_id>/reversal")
class Reversal(MethodView):
    @ledger_blp.arguments(ReversalIn)
    @ledger_blp.response(201, EntryOut)
    @ledger_blp.alt_response(403, description="Administrators and members of `treasury` only")
    def post(self, body: dict[str, Any], entry_id: int) -> Any:
        """Reverse a release with a compensating entry (and a reversal instruction to the payment endpoint)."""
        user = current_user()
        with command_uow() as uow:
            return ledger.reverse(uow, user, entry_id, body["reason"])
