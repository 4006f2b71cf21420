"""The funds ledger: money of contract transactions linked to milestones, held until approval,
released exactly once by the approval diagram, never rewritten.

- Linking a transaction to a financial milestone holds its amount (`hold`); unlinking before any
  release cancels the hold (`cancel`).
- The approval diagram's release step (`release_for_milestone`, after the last level approved)
  releases what is held: a transaction tied to an objective only if that objective is met (else
  it stays held, with the reason); the milestone's `release_percentage` of each (the rest stays
  held); its `retainage_percentage` of that is kept back (`retain`). A later milestone whose
  `retention_of_id` names this one releases, when *it* is approved, the retention
  (`retention_release`) and what is still held and may go now (`release`, objectives met since).
- A release can only be undone by a compensating `reversal` entry, by an administrator or a member
  of `treasury`, with a reason.
- Every money movement writes a payment instruction to the outbox in the same transaction
  ("pay/reverse this amount for this transaction", with the entry's idempotency key), which the
  workers deliver to the configured payment endpoint until it answers 2xx.
- Entries are only ever inserted. Each movement has a unique `release_key`, so a retried step, a
  crashed worker run again, or two racing completions can never move the same money twice:
  the insert is `ON CONFLICT DO NOTHING` and the existing entry is the answer.
Balances (linked, held, released, retained, reversed, cancelled) are sums over the entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import func, select

from ..errors import Conflict, Forbidden, NotFound, ValidationFailed
from ..models import Contract, ContractTransaction, Group, Membership, Milestone, User, utcnow
from ..models.ledger import LedgerEntry
from ..models.objectives import Objective
from ..uow import UnitOfWork
from . import audit
from .csvstream import stream_rows
from .notifications import notify

CENT = Decimal("0.01")
TREASURY = "treasury"
KINDS = ("hold", "cancel", "release", "retain", "retention_release", "reversal")
# Which balances each kind moves: (from, to); "linked" grows with holds and shrinks with cancels.
MOVES = {
    "hold": (None, "held"),
    "cancel": ("held", "cancelled"),
    "release": ("held", "released"),
    "retain": ("held", "retained"),
    "retention_release": ("retained", "released"),
    "reversal": ("released", "reversed"),
}


# --------------------------------------------------------------------------- balances
@dataclass
class Balance:
    currency: str | None = None
    linked: Decimal = Decimal("0.00")
    held: Decimal = Decimal("0.00")
    released: Decimal = Decimal("0.00")
    retained: Decimal = Decimal("0.00")
    reversed: Decimal = Decimal("0.00")
    cancelled: Decimal = Decimal("0.00")

    def add(self, kind: str, amount: Decimal, currency: str) -> None:
        if self.currency is None:
            self.currency = currency
        elif currency != self.currency:
            raise Conflict(f"the ledger mixes currencies ({self.currency} and {currency}); that is refused",
                           currencies=[self.currency, currency])
        source, target = MOVES[kind]
        if kind == "hold":
            self.linked += amount
        elif kind == "cancel":
            self.linked -= amount
        if source is not None:
            setattr(self, source, getattr(self, source) - amount)
        setattr(self, target, getattr(self, target) + amount)

    def as_dict(self) -> dict[str, Any]:
        return {"currency": self.currency, "linked": self.linked, "held": self.held, "released": self.released,
                "retained": self.retained, "reversed": self.reversed, "cancelled": self.cancelled}


def balance_of(entries: Iterable[LedgerEntry]) -> Balance:
    balance = Balance()
    for entry in entries:
        balance.add(entry.kind, entry.amount, entry.currency)
    return balance


def _entries(uow: UnitOfWork, *where: Any) -> list[LedgerEntry]:
    return list(uow.s.scalars(select(LedgerEntry).where(*where).order_by(LedgerEntry.id)))


def _pair_balances(uow: UnitOfWork, milestone_id: int,
                   entries: dict[int, list[LedgerEntry]] | None = None) -> dict[int, Balance]:
    """Balance per transaction for one milestone's entries (which `entries` receives, per transaction)."""
    out: dict[int, Balance] = {}
    for entry in _entries(uow, LedgerEntry.milestone_id == milestone_id):
        out.setdefault(entry.transaction_id, Balance()).add(entry.kind, entry.amount, entry.currency)
        if entries is not None:
            entries.setdefault(entry.transaction_id, []).append(entry)
    return out


def quantize(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


# --------------------------------------------------------------------------- writing entries
def _insert(uow: UnitOfWork, values: dict[str, Any]) -> tuple[LedgerEntry, bool]:
    """Insert one entry unless its release_key exists; returns (entry, created). One statement: the unique
    key decides between racing writers, and nothing is read first."""
    values = {**values, "created_at": utcnow()}
    values.setdefault("idempotency_key", "pay_" + values["release_key"].replace(":", "_"))
    entry_id = uow.insert_unless_exists(LedgerEntry, values, LedgerEntry.id)
    created = entry_id is not None
    if not created:
        entry_id = uow.s.scalar(select(LedgerEntry.id).where(LedgerEntry.release_key == values["release_key"]))
    entry = uow.s.get(LedgerEntry, entry_id)
    assert entry is not None
    return entry, created


def _instruction(uow: UnitOfWork, entry: LedgerEntry, milestone: Milestone, transaction: ContractTransaction) -> None:
    """The payment instruction for a money movement, in the movement's own transaction (the outbox)."""
    action = {"release": "pay", "retention_release": "pay", "reversal": "reverse"}.get(entry.kind)
    if action is None:
        return
    notify(uow, "payment.instruction", recipients={"payment": ["endpoint"]}, milestone=milestone,
           context={"action": action, "entry_id": entry.id, "kind": entry.kind, "amount": str(entry.amount),
                    "currency": entry.currency, "transaction_id": transaction.id,
                    "transaction_ref": transaction.external_ref, "contract_id": entry.contract_id,
                    "payment_key": entry.idempotency_key, "reverses_entry_id": entry.reverses_id})


def hold(uow: UnitOfWork, transaction: ContractTransaction, milestone: Milestone) -> LedgerEntry:
    """Hold a newly linked transaction's amount for the milestone (one hold per link)."""
    if transaction.currency != milestone.currency:
        raise ValidationFailed("mismatched currency", {"milestone_id": [f"the milestone is in {milestone.currency}"]})
    links = uow.s.scalar(select(func.count()).select_from(LedgerEntry).where(
        LedgerEntry.transaction_id == transaction.id, LedgerEntry.milestone_id == milestone.id,
        LedgerEntry.kind == "hold")) or 0
    entry, _ = _insert(uow, {
        "contract_id": transaction.contract_id, "milestone_id": milestone.id, "transaction_id": transaction.id,
        "objective_id": transaction.objective_id, "kind": "hold", "amount": transaction.amount,
        "currency": transaction.currency, "round": milestone.round, "actor_id": uow.actor_id,
        "release_key": f"hold:{transaction.id}:{milestone.id}:{links + 1}"})
    audit.record(uow, "ledger.held", "milestone", milestone.id,
                 after={"entry_id": entry.id, "transaction_id": transaction.id, "amount": entry.amount,
                        "currency": entry.currency})
    return entry


def cancel_hold(uow: UnitOfWork, transaction: ContractTransaction, milestone: Milestone) -> LedgerEntry | None:
    """The transaction is unlinked: what it still has held for the milestone is cancelled. Conflict if
    any of it was released or retained (the ledger would no longer add up)."""
    balance = _pair_balances(uow, milestone.id).get(transaction.id)
    if balance is None or balance.held == 0:
        return None
    if balance.released or balance.retained or balance.reversed:
        raise Conflict(f"transaction {transaction.id} has money released for milestone {milestone.code}; "
                       "it cannot be unlinked", released=str(balance.released), retained=str(balance.retained))
    cancels = uow.s.scalar(select(func.count()).select_from(LedgerEntry).where(
        LedgerEntry.transaction_id == transaction.id, LedgerEntry.milestone_id == milestone.id,
        LedgerEntry.kind == "cancel")) or 0
    entry, _ = _insert(uow, {
        "contract_id": transaction.contract_id, "milestone_id": milestone.id, "transaction_id": transaction.id,
        "objective_id": transaction.objective_id, "kind": "cancel", "amount": balance.held,
        "currency": transaction.currency, "round": milestone.round, "actor_id": uow.actor_id,
        "reason": "unlinked", "release_key": f"cancel:{transaction.id}:{milestone.id}:{cancels + 1}"})
    audit.record(uow, "ledger.cancelled", "milestone", milestone.id,
                 after={"entry_id": entry.id, "transaction_id": transaction.id, "amount": entry.amount})
    return entry


@dataclass
class ReleaseResult:
    released: list[LedgerEntry] = field(default_factory=list)
    retained: list[LedgerEntry] = field(default_factory=list)
    retention_released: list[LedgerEntry] = field(default_factory=list)
    withheld: list[dict[str, Any]] = field(default_factory=list)
    repeated: bool = False  # every movement already existed: a retried step

    def as_dict(self) -> dict[str, Any]:
        def ids(entries: list[LedgerEntry]) -> list[int]:
            return [e.id for e in entries]

        return {"released": ids(self.released), "retained": ids(self.retained),
                "retention_released": ids(self.retention_released), "withheld": self.withheld,
                "released_total": str(sum((e.amount for e in self.released + self.retention_released), Decimal("0"))),
                "retained_total": str(sum((e.amount for e in self.retained), Decimal("0"))),
                "repeated": self.repeated}


def release_for_milestone(uow: UnitOfWork, milestone: Milestone, *, step: str, instance_id: int | None,
                          round: int | None = None) -> ReleaseResult:
    """The release step of an approved milestone. Idempotent: run again (a retried job, a restarted
    worker) it moves nothing more and answers what it moved the first time.

    Raises Conflict when a movement would exceed what is held (the numbers are in the problem).
    """
    result = ReleaseResult()
    created_any = False
    by_transaction: dict[int, list[LedgerEntry]] = {}
    balances = _pair_balances(uow, milestone.id, by_transaction)
    transactions = {t.id: t for t in uow.s.scalars(select(ContractTransaction).where(
        ContractTransaction.id.in_(list(balances) or [0])).order_by(ContractTransaction.id))}
    percentage = milestone.release_percentage if milestone.release_percentage is not None else Decimal("100")
    retainage = milestone.retainage_percentage or Decimal("0")
    for transaction_id, balance in sorted(balances.items()):
        transaction = transactions[transaction_id]
        existing = {e.kind: e for e in by_transaction.get(transaction_id, []) if e.kind in ("release", "retain")}
        if existing:  # released before: the same answer, no new money
            result.released += [existing["release"]] if "release" in existing else []
            result.retained += [existing["retain"]] if "retain" in existing else []
            continue
        if balance.held <= 0:
            continue
        if transaction.milestone_id != milestone.id:
            continue  # unlinked since (its hold was cancelled)
        if transaction.objective_id is not None:
            objective = uow.s.get(Objective, transaction.objective_id)
            if objective is None or not objective.met:
                title = objective.title if objective is not None else transaction.objective_id
                result.withheld.append({"transaction_id": transaction_id, "amount": str(balance.held),
                                        "reason": f"objective {title!r} is not met"})
                continue
        share = quantize(balance.held * percentage / 100)
        kept = quantize(share * retainage / 100)
        paid = share - kept
        if paid + kept > balance.held:
            raise Conflict(f"releasing {paid + kept} {balance.currency} of transaction {transaction_id} would exceed "
                           f"the {balance.held} {balance.currency} held", held=str(balance.held),
                           requested=str(paid + kept), linked=str(balance.linked))
        common = {"contract_id": transaction.contract_id, "milestone_id": milestone.id, "transaction_id": transaction_id,
                  "objective_id": transaction.objective_id, "currency": balance.currency,
                  "round": round if round is not None else milestone.round, "step": step,
                  "instance_id": instance_id}
        if paid > 0:
            entry, created = _insert(uow, {**common, "kind": "release", "amount": paid,
                                           "release_key": f"release:{transaction_id}:{milestone.id}"})
            result.released.append(entry)
            if created:
                created_any = True
                _instruction(uow, entry, milestone, transaction)
        if kept > 0:
            entry, created = _insert(uow, {**common, "kind": "retain", "amount": kept,
                                           "reason": f"retainage {retainage}%",
                                           "release_key": f"retain:{transaction_id}:{milestone.id}"})
            result.retained.append(entry)
            created_any = created_any or created
        if share < balance.held:
            result.withheld.append({"transaction_id": transaction_id, "amount": str(balance.held - share),
                                    "reason": f"the milestone releases {percentage}% of its linked amount"})
    if milestone.retention_of_id is not None:
        created_any = _release_retention(uow, milestone, result, step=step, instance_id=instance_id,
                                         round=round) or created_any
    result.repeated = not created_any and bool(result.released or result.retained or result.retention_released)
    return result


def _release_retention(uow: UnitOfWork, milestone: Milestone, result: ReleaseResult, *, step: str,
                       instance_id: int | None, round: int | None) -> bool:
    """This milestone's approval releases what another, approved one kept: its retention (e.g. after a
    warranty period) and what its own release step withheld that can go now (an objective met since, the
    part beyond its release_percentage). Each once: `retention_release:T:M`, `release:T:M:by:<this>`."""
    original = uow.s.get(Milestone, milestone.retention_of_id)
    if original is None or original.status not in ("approved", "completed"):
        return False  # money of a milestone that was never approved is never released
    created_any = False
    transactions = {t.id: t for t in uow.s.scalars(select(ContractTransaction).where(
        ContractTransaction.milestone_id == original.id))}
    keys = {e.release_key: e for e in _entries(uow, LedgerEntry.milestone_id == original.id)}
    common = {"contract_id": original.contract_id, "milestone_id": original.id, "step": step,
              "instance_id": instance_id, "round": round if round is not None else milestone.round}
    for transaction_id, balance in sorted(_pair_balances(uow, original.id).items()):
        transaction = transactions.get(transaction_id) or uow.s.get(ContractTransaction, transaction_id)
        assert transaction is not None
        moves: list[tuple[str, str, Decimal, str]] = []
        retention_key = f"retention_release:{transaction_id}:{original.id}"
        if retention_key in keys:
            result.retention_released.append(keys[retention_key])
        elif balance.retained > 0:
            moves.append(("retention_release", retention_key, balance.retained,
                          f"retention released by the approval of milestone {milestone.code}"))
        remainder_key = f"release:{transaction_id}:{original.id}:by:{milestone.id}"
        if remainder_key in keys:
            result.released.append(keys[remainder_key])
        elif balance.held > 0 and transaction.milestone_id == original.id:
            objective = uow.s.get(Objective, transaction.objective_id) if transaction.objective_id else None
            if transaction.objective_id is not None and (objective is None or not objective.met):
                result.withheld.append({"transaction_id": transaction_id, "amount": str(balance.held),
                                        "reason": f"objective {objective.title if objective else ''!r} is not met"})
            else:
                moves.append(("release", remainder_key, balance.held,
                              f"withheld at milestone {original.code}'s release, released by the approval of "
                              f"milestone {milestone.code}"))
        for kind, key, amount, reason in moves:
            entry, created = _insert(uow, {**common, "transaction_id": transaction_id,
                                           "objective_id": transaction.objective_id, "kind": kind, "amount": amount,
                                           "currency": balance.currency, "reason": reason, "release_key": key})
            (result.retention_released if kind == "retention_release" else result.released).append(entry)
            if created:
                created_any = True
                _instruction(uow, entry, original, transaction)
                audit.record(uow, "funds.retention_released" if kind == "retention_release" else
                             "funds.withheld_released", "milestone", original.id,
                             after={"entry_id": entry.id, "kind": kind, "amount": entry.amount,
                                    "by_milestone": milestone.id})
    return created_any


# --------------------------------------------------------------------------- reversal
def _require_treasury(uow: UnitOfWork, user: User) -> None:
    if user.is_admin:
        return
    member = uow.s.scalar(select(Membership.user_id).join(Group, Group.id == Membership.group_id).where(
        Membership.user_id == user.id, Group.name == TREASURY))
    if member is None:
        raise Forbidden(f"only administrators and members of {TREASURY!r} reverse releases")


def reverse(uow: UnitOfWork, user: User, entry_id: int, reason: str) -> LedgerEntry:
    """Undo a release with a compensating entry (the release itself stays). Raises Forbidden (not
    treasury), NotFound, ValidationFailed (no reason), Conflict (not a release, or already reversed)."""
    _require_treasury(uow, user)
    entry = uow.s.get(LedgerEntry, entry_id)
    if entry is None:
        raise NotFound(f"no ledger entry {entry_id}")
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed("a reversal needs a reason", {"reason": ["must not be empty"]})
    if entry.kind not in ("release", "retention_release"):
        raise Conflict(f"entry {entry_id} is a {entry.kind}, not a release: only releases are reversed",
                       kind=entry.kind)
    reversal, created = _insert(uow, {
        "contract_id": entry.contract_id, "milestone_id": entry.milestone_id, "transaction_id": entry.transaction_id,
        "objective_id": entry.objective_id, "kind": "reversal", "amount": entry.amount, "currency": entry.currency,
        "round": entry.round, "actor_id": user.id, "reason": reason, "reverses_id": entry.id,
        "release_key": f"reversal:{entry.id}"})
    if not created:
        raise Conflict(f"release {entry_id} was already reversed (entry {reversal.id})", reversal_id=reversal.id)
    milestone = uow.s.get(Milestone, entry.milestone_id)
    transaction = uow.s.get(ContractTransaction, entry.transaction_id)
    assert milestone is not None and transaction is not None
    _instruction(uow, reversal, milestone, transaction)
    audit.record(uow, "ledger.reversed", "milestone", milestone.id,
                 after={"entry_id": reversal.id, "reverses": entry.id, "amount": entry.amount, "reason": reason,
                        "by": user.username})
    uow.commit()
    return reversal


# --------------------------------------------------------------------------- reports
@dataclass
class Ledger:
    balance: Balance
    entries: list[LedgerEntry]
    per_milestone: dict[int, Balance] = field(default_factory=dict)
    per_transaction: dict[int, Balance] = field(default_factory=dict)


def milestone_ledger(uow: UnitOfWork, milestone_id: int) -> Ledger:
    if uow.s.get(Milestone, milestone_id) is None:
        raise NotFound(f"no milestone {milestone_id}")
    entries = _entries(uow, LedgerEntry.milestone_id == milestone_id)
    per_transaction: dict[int, Balance] = {}
    for e in entries:
        per_transaction.setdefault(e.transaction_id, Balance()).add(e.kind, e.amount, e.currency)
    return Ledger(balance_of(entries), entries, per_transaction=per_transaction)


def milestone_money(uow: UnitOfWork, milestone: Milestone) -> dict[str, Any]:
    """The milestone's money at a glance (for its detail view)."""
    balance = balance_of(_entries(uow, LedgerEntry.milestone_id == milestone.id))
    if balance.currency is None:
        balance.currency = milestone.currency
    return balance.as_dict()


def contract_ledger(uow: UnitOfWork, contract_id: int) -> Ledger:
    if uow.s.get(Contract, contract_id) is None:
        raise NotFound(f"no contract {contract_id}")
    entries = _entries(uow, LedgerEntry.contract_id == contract_id)
    per_milestone: dict[int, Balance] = {}
    for e in entries:
        per_milestone.setdefault(e.milestone_id, Balance()).add(e.kind, e.amount, e.currency)
    return Ledger(balance_of(entries), entries, per_milestone=per_milestone)


CSV_COLUMNS = ("entry_id", "created_at", "contract_id", "milestone_id", "milestone_code", "transaction_id",
               "objective_id", "kind", "amount", "currency", "round", "actor", "step", "reason", "reverses_id",
               "idempotency_key")


def contract_ledger_csv(uow: UnitOfWork, contract_id: int) -> Iterator[str]:
    """The contract's entries as CSV, then one balance line per milestone and a total, so that a reviewer
    can reconcile it by hand (held = holds - cancels - releases - retains; released = releases +
    retention releases - reversals)."""
    ledger = contract_ledger(uow, contract_id)
    codes = dict(uow.s.execute(select(Milestone.id, Milestone.code).where(Milestone.contract_id == contract_id)).all())

    def rows() -> Iterator[list[Any]]:
        for e in ledger.entries:
            yield [e.id, e.created_at.isoformat(), e.contract_id, e.milestone_id, codes.get(e.milestone_id),
                   e.transaction_id, e.objective_id, e.kind, e.amount, e.currency, e.round,
                   e.actor.username if e.actor else None, e.step, e.reason, e.reverses_id, e.idempotency_key]
        yield []
        yield ["balance", "milestone_id", "milestone_code", "currency", "linked", "held", "released", "retained",
               "reversed", "cancelled"]
        for milestone_id, b in sorted(ledger.per_milestone.items()):
            yield ["milestone", milestone_id, codes.get(milestone_id), b.currency, b.linked, b.held, b.released,
                   b.retained, b.reversed, b.cancelled]
        t = ledger.balance
        yield ["contract", "", "", t.currency, t.linked, t.held, t.released, t.retained, t.reversed, t.cancelled]

    yield from stream_rows(CSV_COLUMNS, rows())  # a generator: nothing is read before the stream starts
