"""Domain errors raised by services. The API maps each class to one HTTP status (app.api.problems)."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status = 400
    title = "Bad request"

    def __init__(self, detail: str, **extra: Any):
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class ValidationFailed(DomainError):
    """Input that is well-formed but breaks a rule; `errors` maps field names to messages."""

    status = 422
    title = "Validation failed"

    def __init__(self, detail: str, errors: dict[str, list[str]] | None = None, **extra: Any):
        super().__init__(detail, **extra)
        self.errors = errors or {}


class Unauthenticated(DomainError):
    status = 401
    title = "Authentication required"


class Forbidden(DomainError):
    status = 403
    title = "Forbidden"


class NotFound(DomainError):
    status = 404
    title = "Not found"


class Conflict(DomainError):
    """The request lost a race or does not fit the current state; retrying may succeed."""

    status = 409
    title = "Conflict"


class InvalidTransition(Conflict):
    title = "Invalid state transition"

    def __init__(self, detail: str, current: str, allowed: list[str] | None = None, **extra: Any):
        super().__init__(detail, current_state=current, allowed=allowed or [], **extra)


class PayloadTooLarge(DomainError):
    status = 413
    title = "Payload too large"


class UnsupportedMediaType(DomainError):
    status = 415
    title = "Unsupported media type"


class WorkflowIncident(Conflict):
    """A step failed: nothing of the request was kept, and the instance now waits in an open incident
    (extra: incident_id, instance_id, element_id, file) until an operator retries it."""

    title = "Workflow incident"


class WorkflowFailure(DomainError):
    """A step of the process definition failed (script, decision or service); nothing was saved."""

    status = 500
    title = "Workflow step failed"


class Unroutable(Conflict):
    """The routing table gives no approval chain that can be worked (no rule matched, an unknown
    group, a quorum the group cannot reach); nothing was submitted."""

    title = "No approval route"
