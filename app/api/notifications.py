"""HTTP resources: in-app notifications, the caller's notification preferences, and (for
administrators) deliveries with their dead letters and retries."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from ..services import notifications as service
from .auth import current_user
from .context import command_uow, read_uow
from .schemas import PageArgs, PageMeta, Strict

notifications_blp = Blueprint("notifications", __name__, url_prefix="/api/v1/notifications",
                              description="The caller's in-app notifications")
me_blp = Blueprint("me", __name__, url_prefix="/api/v1/me", description="The caller's own settings")
deliveries_blp = Blueprint("deliveries", __name__, url_prefix="/api/v1/deliveries",
                           description="Notification deliveries per channel (administrators): dead letters, retry")

BLUEPRINTS = (notifications_blp, me_blp, deliveries_blp)


# --------------------------------------------------------------------------- schemas
class NotificationOut(Schema):
    id = fields.Integer()
    event = fields.String()
    title = fields.String()
    body = fields.String()
    milestone_id = fields.Integer(allow_none=True)
    created_at = fields.DateTime()
    read_at = fields.DateTime(allow_none=True)


class NotificationPage(PageMeta):
    items = fields.List(fields.Nested(NotificationOut))


class NotificationListArgs(PageArgs):
    unread = fields.Boolean(load_default=None, metadata={"description": "only unread (true) or read (false) ones"})


CHANNELS = fields.List(fields.String(validate=validate.OneOf(service.PERSONAL_CHANNELS)),
                       validate=validate.Length(max=len(service.PERSONAL_CHANNELS)))


class PreferencesIn(Strict):
    events = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=80)), values=CHANNELS,
                         required=True, metadata={"description": "event → channels; events left out keep the "
                                                                 "default (every channel); [] silences one"})
    email = fields.Email(load_default=None, allow_none=True,
                         metadata={"description": "the address e-mails go to (your account's)"})


class PreferencesOut(Schema):
    events = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))
    channels = fields.List(fields.String())
    email = fields.String(allow_none=True)


class DeliveryOut(Schema):
    id = fields.Integer()
    outbox_id = fields.Integer()
    event = fields.String()
    channel = fields.String()
    recipient = fields.String()
    user_id = fields.Integer(allow_none=True)
    idempotency_key = fields.String()
    status = fields.String()
    attempts = fields.Integer()
    next_attempt_at = fields.DateTime()
    last_error = fields.String(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    delivered_at = fields.DateTime(allow_none=True)


class DeliveryPage(PageMeta):
    items = fields.List(fields.Nested(DeliveryOut))


class DeliveryListArgs(PageArgs):
    status = fields.String(load_default=None, validate=validate.OneOf(service.DELIVERY_STATUSES))
    channel = fields.String(load_default=None, validate=validate.OneOf(["email", "webhook", "in_app"]))
    event = fields.String(load_default=None)


def _page(result: Any) -> dict[str, Any]:
    return {"items": result.items, "page": result.page, "page_size": result.page_size, "total": result.total}


# --------------------------------------------------------------------------- in-app
@notifications_blp.route("")
class Notifications(MethodView):
    @notifications_blp.arguments(NotificationListArgs, location="query")
    @notifications_blp.response(200, NotificationPage)
    def get(self, args: dict[str, Any]) -> Any:
        """The caller's in-app notifications, newest first."""
        user = current_user()
        with read_uow() as uow:
            return _page(service.list_notifications(uow, user, page=args["page"], page_size=args["page_size"],
                                                    unread=args["unread"]))


@notifications_blp.route("/<int:notification_id>/read")
class NotificationRead(MethodView):
    @notifications_blp.response(200, NotificationOut)
    def post(self, notification_id: int) -> Any:
        """Mark it read (idempotent)."""
        user = current_user()
        with command_uow() as uow:
            return service.mark_read(uow, user, notification_id)


# --------------------------------------------------------------------------- preferences
@me_blp.route("/notification-preferences")
class Preferences(MethodView):
    @me_blp.response(200, PreferencesOut)
    def get(self) -> Any:
        """Channels per event (email, in_app) and the e-mail address they go to."""
        user = current_user()
        with read_uow() as uow:
            return service.get_preferences(uow, user)

    @me_blp.arguments(PreferencesIn)
    @me_blp.response(200, PreferencesOut)
    def put(self, body: dict[str, Any]) -> Any:
        """Replace the channels per event (and optionally the e-mail address)."""
        user = current_user()
        with command_uow() as uow:
            return service.set_preferences(uow, user, body["events"], email=body["email"])


# --------------------------------------------------------------------------- deliveries
@deliveries_blp.route("")
class Deliveries(MethodView):
    @deliveries_blp.arguments(DeliveryListArgs, location="query")
    @deliveries_blp.response(200, DeliveryPage)
    def get(self, args: dict[str, Any]) -> Any:
        """Deliveries, newest first (`status=dead`: given up after the last retry). Administrators only."""
        user = current_user()
        with read_uow() as uow:
            return _page(service.list_deliveries(uow, user, page=args["page"], page_size=args["page_size"],
                                                 status=args["status"], channel=args["channel"],
                                                 event=args["event"]))


@deliveries_blp.route("/<int:delivery_id>")
class DeliveryById(MethodView):
    @deliveries_blp.response(200, DeliveryOut)
    def get(self, delivery_id: int) -> Any:
        user = current_user()
        with read_uow() as uow:
            return service.get_delivery(uow, user, delivery_id)


@deliveries_blp.route("/<int:delivery_id>/retry")
class DeliveryRetry(MethodView):
    @deliveries_blp.response(200, DeliveryOut)
    @deliveries_blp.alt_response(409, description="The delivery is not dead")
    def post(self, delivery_id: int) -> Any:
        """Give a dead delivery a fresh set of attempts, due now (same idempotency key)."""
        user = current_user()
        with command_uow() as uow:
            return service.retry_delivery(uow, user, delivery_id)
