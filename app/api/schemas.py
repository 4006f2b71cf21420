"""Marshmallow schemas: shape and types only (rules live in services). Unknown fields are refused."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate


class Strict(Schema):
    class Meta:
        unknown = RAISE
        ordered = True


Money = fields.Decimal(places=2, as_string=True, allow_nan=False, validate=validate.Range(min=0))
CURRENCY = validate.Regexp(r"^[A-Za-z]{3}$", error="an ISO 4217 code such as EUR")


class PageArgs(Strict):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1))
    page_size = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))


class PageMeta(Schema):
    page = fields.Integer()
    page_size = fields.Integer()
    total = fields.Integer()


# --------------------------------------------------------------------------- accounts
class AccountIn(Strict):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    external_ref = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))


class AccountOut(Schema):
    id = fields.Integer()
    name = fields.String()
    external_ref = fields.String(allow_none=True)
    created_at = fields.DateTime()


class AccountPage(PageMeta):
    items = fields.List(fields.Nested(AccountOut))


# --------------------------------------------------------------------------- contracts
class ContactIn(Strict):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    email = fields.Email(required=True)
    phone = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=50))
    role = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=120))
    username = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=80),
                             metadata={"description": "link the contact to this user: their to-dos as primary "
                                                      "contact appear in that user's task list"})


class ContactOut(Schema):
    id = fields.Integer()
    account_id = fields.Integer()
    user_id = fields.Integer(allow_none=True)
    name = fields.String()
    email = fields.String()
    phone = fields.String(allow_none=True)
    role = fields.String(allow_none=True)
    created_at = fields.DateTime()


class ContactPage(PageMeta):
    items = fields.List(fields.Nested(ContactOut))


class ContractIn(Strict):
    account_id = fields.Integer(required=True, strict=True)
    number = fields.String(required=True, validate=validate.Length(min=1, max=80))
    title = fields.String(required=True, validate=validate.Length(min=1, max=300))
    value = fields.Decimal(places=2, as_string=True, allow_nan=False, validate=validate.Range(min=0),
                           load_default=None, allow_none=True)
    currency = fields.String(required=True, validate=CURRENCY)
    start_date = fields.Date(load_default=None, allow_none=True)
    end_date = fields.Date(load_default=None, allow_none=True)
    status = fields.String(load_default="active", validate=validate.OneOf(["draft", "active", "closed"]))


class ContractOut(Schema):
    id = fields.Integer()
    account_id = fields.Integer()
    number = fields.String()
    title = fields.String()
    value = fields.Decimal(places=2, as_string=True, allow_none=True)
    currency = fields.String()
    status = fields.String()
    start_date = fields.Date(allow_none=True)
    end_date = fields.Date(allow_none=True)
    created_at = fields.DateTime()


class ContractPage(PageMeta):
    items = fields.List(fields.Nested(ContractOut))


class ContractListArgs(PageArgs):
    account_id = fields.Integer(load_default=None)


# --------------------------------------------------------------------------- milestones
class ExternalRef(Strict):
    system = fields.String(required=True, validate=validate.Length(min=1, max=80))
    reference = fields.String(required=True, validate=validate.Length(min=1, max=200))


class MilestoneFields(Strict):
    code = fields.String(required=True, validate=validate.Length(min=1, max=80))
    description = fields.String(load_default="", validate=validate.Length(max=10000))
    type = fields.String(required=True, validate=validate.OneOf(["financial", "non_financial"]))
    amount = fields.Decimal(places=2, as_string=True, allow_nan=False,
                            validate=validate.Range(min=0, min_inclusive=False), load_default=None, allow_none=True)
    percentage = fields.Decimal(places=4, as_string=True, allow_nan=False,
                                validate=validate.Range(min=0, max=100, min_inclusive=False),
                                load_default=None, allow_none=True)
    currency = fields.String(load_default=None, allow_none=True, validate=CURRENCY)
    due_date = fields.Date(load_default=None, allow_none=True)
    external_refs = fields.List(fields.Nested(ExternalRef), load_default=list, validate=validate.Length(max=50))
    primary_contact_id = fields.Integer(load_default=None, allow_none=True, strict=True)
    # Custom fields, inputs of the routing table (e.g. {"risk": "high"}): scalar values only.
    attributes = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")),
                             values=fields.Raw(validate=lambda v: v is None or isinstance(v, (str, int, float, bool))
                                               and (not isinstance(v, str) or len(v) <= 500)),
                             load_default=dict, validate=validate.Length(max=50))
    # Money (see "The money model" in the README)
    release_percentage = fields.Decimal(places=4, as_string=True, allow_nan=False, load_default=None,
                                        allow_none=True, validate=validate.Range(min=0, max=100, min_inclusive=False),
                                        metadata={"description": "share of each linked transaction the approval "
                                                                 "releases (default 100)"})
    retainage_percentage = fields.Decimal(places=4, as_string=True, allow_nan=False, load_default=None,
                                          allow_none=True, validate=validate.Range(min=0, max=100, max_inclusive=False),
                                          metadata={"description": "share of each release kept back as retainage"})
    retention_of_id = fields.Integer(load_default=None, allow_none=True, strict=True,
                                     metadata={"description": "a milestone of the same contract whose retention "
                                                              "this one's approval releases (e.g. a warranty)"})


class MilestoneIn(MilestoneFields):
    contract_id = fields.Integer(required=True, strict=True)


class MilestoneOut(Schema):
    id = fields.Integer()
    contract_id = fields.Integer()
    account_id = fields.Integer()
    code = fields.String()
    description = fields.String()
    type = fields.String()
    amount = fields.Decimal(places=2, as_string=True, allow_none=True)
    percentage = fields.Decimal(as_string=True, allow_none=True)
    currency = fields.String()
    due_date = fields.Date(allow_none=True)
    external_refs = fields.List(fields.Dict())
    primary_contact_id = fields.Integer(allow_none=True)
    attributes = fields.Dict()
    release_percentage = fields.Decimal(as_string=True, allow_none=True)
    retainage_percentage = fields.Decimal(as_string=True, allow_none=True)
    retention_of_id = fields.Integer(allow_none=True)
    status = fields.String()
    published = fields.Boolean()
    published_at = fields.DateTime(allow_none=True)
    round = fields.Integer()
    version = fields.Integer()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class MilestonePage(PageMeta):
    items = fields.List(fields.Nested(MilestoneOut))


class MilestoneFilterArgs(Strict):
    status = fields.String(load_default=None, validate=validate.OneOf(
        ["draft", "active", "submitted", "approved", "declined", "completed", "cancelled"]))
    type = fields.String(load_default=None, validate=validate.OneOf(["financial", "non_financial"]))
    contract_id = fields.Integer(load_default=None)
    account_id = fields.Integer(load_default=None)
    primary_contact_id = fields.Integer(load_default=None)
    due_before = fields.Date(load_default=None)
    due_after = fields.Date(load_default=None)
    overdue = fields.Boolean(load_default=None)
    published = fields.Boolean(load_default=None)
    sort = fields.String(load_default="due_date", validate=validate.OneOf(
        ["due_date", "-due_date", "amount", "-amount", "status", "-status", "code", "created"]))


class MilestoneListArgs(MilestoneFilterArgs, PageArgs):
    pass


class MilestoneSummary(Schema):
    total = fields.Integer()
    by_status = fields.Dict(keys=fields.String(), values=fields.Integer())
    by_due = fields.Dict(keys=fields.String(), values=fields.Integer())
    as_of = fields.String()
    week_ends = fields.String()


class TransactionIn(Strict):
    kind = fields.String(required=True, validate=validate.OneOf(
        ["payment", "invoice", "retainage", "credit_note", "adjustment"]))
    amount = fields.Decimal(places=2, as_string=True, allow_nan=False, required=True,
                            validate=validate.Range(min=0, min_inclusive=False))
    currency = fields.String(required=True, validate=CURRENCY)
    occurred_on = fields.Date(required=True)
    external_ref = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    milestone_id = fields.Integer(load_default=None, allow_none=True, strict=True)
    objective_id = fields.Integer(load_default=None, allow_none=True, strict=True)


class TransactionLinkIn(Strict):
    milestone_id = fields.Integer(required=True, strict=True)
    objective_id = fields.Integer(load_default=None, allow_none=True, strict=True)


class TransactionOut(Schema):
    id = fields.Integer()
    contract_id = fields.Integer()
    kind = fields.String()
    amount = fields.Decimal(places=2, as_string=True)
    currency = fields.String()
    occurred_on = fields.Date()
    external_ref = fields.String(allow_none=True)
    milestone_id = fields.Integer(allow_none=True)
    objective_id = fields.Integer(allow_none=True)
    created_at = fields.DateTime()


class TransactionPage(PageMeta):
    items = fields.List(fields.Nested(TransactionOut))


class TransactionListArgs(PageArgs):
    milestone_id = fields.Integer(load_default=None)


# --------------------------------------------------------------------------- tasks
class TaskOut(Schema):
    id = fields.String()
    milestone_id = fields.Integer(allow_none=True)
    instance_id = fields.Integer()
    process_id = fields.String()
    bpmn_id = fields.String()
    name = fields.String()
    lane = fields.String(allow_none=True)
    documentation = fields.String(allow_none=True)
    status = fields.String()
    candidate_groups = fields.Method("_groups")
    candidate_users = fields.Method("_users")
    assignee = fields.Method("_assignee")
    due_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()
    completed_at = fields.DateTime(allow_none=True)
    decision = fields.String(allow_none=True)
    comment = fields.String(allow_none=True)
    level = fields.Integer(allow_none=True, metadata={"description": "the approval level this seat belongs to"})
    seat = fields.Integer(allow_none=True)
    group = fields.String(attribute="group_name", allow_none=True,
                          metadata={"description": "the group an approval seat is routed to"})
    substitutes = fields.Method("_substitutes", metadata={"description": "candidate -> the away approver they stand in for"})
    delegated_by = fields.Method("_delegated_by")
    substitute_for = fields.Method("_substitute_for")
    completed_by = fields.Method("_completed_by")
    on_behalf_of = fields.Method("_on_behalf_of")

    def _groups(self, task):  # type: ignore[no-untyped-def]
        return sorted(c.name for c in task.candidates if c.kind == "group")

    def _users(self, task):  # type: ignore[no-untyped-def]
        return sorted(c.name for c in task.candidates if c.kind == "user")

    def _substitutes(self, task):  # type: ignore[no-untyped-def]
        return {c.name: c.substitute_for for c in task.candidates if c.kind == "user" and c.substitute_for}

    def _assignee(self, task):  # type: ignore[no-untyped-def]
        return task.assignee.username if task.assignee is not None else None

    def _delegated_by(self, task):  # type: ignore[no-untyped-def]
        return task.delegated_by.username if task.delegated_by is not None else None

    def _substitute_for(self, task):  # type: ignore[no-untyped-def]
        return task.substitute_for.username if task.substitute_for is not None else None

    def _completed_by(self, task):  # type: ignore[no-untyped-def]
        return task.completed_by.username if task.completed_by is not None else None

    def _on_behalf_of(self, task):  # type: ignore[no-untyped-def]
        return task.on_behalf_of.username if task.on_behalf_of is not None else None


class TaskPage(PageMeta):
    items = fields.List(fields.Nested(TaskOut))


class TaskListArgs(PageArgs):
    state = fields.String(load_default="open", validate=validate.OneOf(["open", "completed", "cancelled", "any"]))
    group = fields.String(load_default=None)
    milestone_id = fields.Integer(load_default=None)


class CompletionIn(Strict):
    decision = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(["approve", "decline"]))
    comment = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=5000))
    data = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=100)), load_default=None,
                       allow_none=True)


class SubmissionOut(Schema):
    milestone = fields.Nested(MilestoneOut)
    instance_id = fields.Integer()
    round = fields.Integer()
    resumed = fields.Boolean()
    open_tasks = fields.List(fields.Nested(TaskOut))


class AuditOut(Schema):
    id = fields.Integer()
    at = fields.DateTime()
    actor = fields.Method("_actor")
    action = fields.String()
    entity_type = fields.String()
    entity_id = fields.String()
    before = fields.Raw(allow_none=True)
    after = fields.Raw(allow_none=True)
    request_id = fields.String(allow_none=True)

    def _actor(self, event):  # type: ignore[no-untyped-def]
        return event.actor.username if event.actor is not None else None


class ReleaseOut(Schema):
    id = fields.Integer()
    amount = fields.Decimal(places=2, as_string=True)
    currency = fields.String()
    round = fields.Integer()
    task_id = fields.String()
    released_at = fields.DateTime()


class MoneyOut(Schema):
    currency = fields.String(allow_none=True)
    linked = fields.Decimal(places=2, as_string=True)
    held = fields.Decimal(places=2, as_string=True)
    released = fields.Decimal(places=2, as_string=True)
    retained = fields.Decimal(places=2, as_string=True)
    reversed = fields.Decimal(places=2, as_string=True)
    cancelled = fields.Decimal(places=2, as_string=True)


class MilestoneDetail(MilestoneOut):
    allowed_actions = fields.List(fields.String())
    money = fields.Nested(MoneyOut, metadata={"description": "the ledger's balances for this milestone"})
    open_tasks = fields.List(fields.Nested(TaskOut))
    decisions = fields.List(fields.Nested(TaskOut))
    history = fields.List(fields.Nested(AuditOut))
    release = fields.Nested(ReleaseOut, allow_none=True)
