"""HTTP resources for analysts and operators: deployments (validate, deploy, versions, files, diff),
incidents (list, show, retry) and the migration of running instances to another version."""

from __future__ import annotations

from typing import Any

from flask import Response, url_for
from flask.views import MethodView
from flask_smorest import Blueprint
from flask_smorest.fields import Upload
from marshmallow import Schema, fields, validate

from ..errors import ValidationFailed
from ..services import deployments as deployment_service
from ..services import incidents as incident_service
from .auth import current_user
from .context import command_uow, deployments, read_uow
from .schemas import PageArgs, PageMeta, Strict

deployments_blp = Blueprint("deployments", __name__, url_prefix="/api/v1/deployments",
                            description="Process definitions (BPMN/DMN bundles): validate, deploy, versions, diff")
incidents_blp = Blueprint("incidents", __name__, url_prefix="/api/v1/incidents",
                          description="Failed workflow steps held for an operator")
instances_blp = Blueprint("instances", __name__, url_prefix="/api/v1/instances",
                          description="Workflow instances: migration to another deployment version")

BLUEPRINTS = (deployments_blp, incidents_blp, instances_blp)


# --------------------------------------------------------------------------- schemas
class BundleIn(Strict):
    files = fields.List(Upload(), required=True, validate=validate.Length(min=1, max=50),
                        metadata={"description": "the .bpmn and .dmn files of the bundle (repeat the field)"})


class ProblemOut(Schema):
    message = fields.String()
    file = fields.String(allow_none=True)
    element_id = fields.String(allow_none=True)
    line = fields.Integer(allow_none=True)


class ValidationOut(Schema):
    valid = fields.Boolean()
    problems = fields.List(fields.Nested(ProblemOut))


class DeploymentFileOut(Schema):
    name = fields.String()
    size = fields.Integer()
    sha256 = fields.String()


class DeploymentOut(Schema):
    version = fields.Integer()
    hash = fields.String()
    created_at = fields.DateTime()
    created_by = fields.String(allow_none=True)
    files = fields.List(fields.Nested(DeploymentFileOut))
    processes = fields.List(fields.String())
    created = fields.Boolean(metadata={"description": "POST only: false when an identical bundle was deployed"})


class DeploymentPage(PageMeta):
    items = fields.List(fields.Nested(DeploymentOut))


class IncidentOut(Schema):
    id = fields.Integer()
    instance_id = fields.Integer()
    milestone_id = fields.Integer(allow_none=True)
    deployment_hash = fields.String()
    element_id = fields.String(allow_none=True)
    file = fields.String(allow_none=True)
    task_id = fields.String(allow_none=True)
    error = fields.String()
    data = fields.Raw(allow_none=True, metadata={"description": "the failed task's data (cut to a few KB)"})
    command = fields.Raw(metadata={"description": "what a retry runs again"})
    attempts = fields.Integer()
    status = fields.String()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    resolved_at = fields.DateTime(allow_none=True)
    resolved_by_id = fields.Integer(allow_none=True)


class IncidentPage(PageMeta):
    items = fields.List(fields.Nested(IncidentOut))


class IncidentListArgs(PageArgs):
    status = fields.String(load_default="open", validate=validate.OneOf(["open", "resolved", "any"]))
    milestone_id = fields.Integer(load_default=None)


class RetryIn(Strict):
    data = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=100)), load_default=None,
                       allow_none=True, metadata={"description": "corrected data, merged into the failed step's data"})
    migrate = fields.Boolean(load_default=False,
                             metadata={"description": "move the instance to the latest deployment first"})


class MigrationIn(Strict):
    instance_ids = fields.List(fields.Integer(strict=True), required=True, validate=validate.Length(min=1, max=100))
    to_version = fields.Integer(required=True, strict=True)
    dry_run = fields.Boolean(load_default=True)


class MigrationOut(Schema):
    dry_run = fields.Boolean()
    to_version = fields.Integer()
    instances = fields.List(fields.Raw())


# --------------------------------------------------------------------------- helpers
def _bundle(uploads: list[Any]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for upload in uploads:
        name = upload.filename or ""
        if name in files:
            raise ValidationFailed(f"{name!r} is uploaded twice", {"files": [f"{name!r} is uploaded twice"]})
        files[name] = upload.read()
    return files


def _deployment(view: Any, created: bool | None = None) -> dict[str, Any]:
    out = dict(view.__dict__)
    if created is not None:
        out["created"] = created
    return out


# --------------------------------------------------------------------------- deployments
@deployments_blp.route("")
class Deployments(MethodView):
    @deployments_blp.arguments(PageArgs, location="query")
    @deployments_blp.response(200, DeploymentPage)
    def get(self, args: dict[str, Any]) -> Any:
        """Every deployed version, newest first."""
        current_user()
        with read_uow() as uow:
            page = deployment_service.list_deployments(uow, deployments(), args["page"], args["page_size"])
            return {"items": [_deployment(v) for v in page.items], "page": page.page,
                    "page_size": page.page_size, "total": page.total}

    @deployments_blp.arguments(BundleIn, location="files")
    @deployments_blp.response(201, DeploymentOut)
    @deployments_blp.alt_response(200, schema=DeploymentOut, description="An identical bundle is deployed already")
    @deployments_blp.alt_response(403, description="Only administrators and analysts deploy")
    @deployments_blp.alt_response(413, description="A file is larger than the cap")
    @deployments_blp.alt_response(422, description="The bundle has problems (`problems`); nothing was stored")
    def post(self, body: dict[str, Any]) -> Any:
        """Validate and deploy a complete bundle of .bpmn and .dmn files (multipart field `files`).

        New milestone workflows use the latest version; running instances stay on theirs.
        """
        user = current_user()
        files = _bundle(body["files"])
        with command_uow() as uow:
            view, created = deployment_service.deploy_files(uow, deployments(), user, files)
        location = url_for("deployments.DeploymentByVersion", version=view.version)
        return _deployment(view, created), 201 if created else 200, {"Location": location}


@deployments_blp.route("/validation")
class Validation(MethodView):
    @deployments_blp.arguments(BundleIn, location="files")
    @deployments_blp.response(200, ValidationOut)
    def post(self, body: dict[str, Any]) -> Any:
        """Every problem of a bundle (file, element id, line) without storing anything."""
        user = current_user()
        files = _bundle(body["files"])
        with read_uow() as uow:
            return deployment_service.validate_files(uow, deployments(), user, files)


@deployments_blp.route("/<int:version>")
class DeploymentByVersion(MethodView):
    @deployments_blp.response(200, DeploymentOut)
    def get(self, version: int) -> Any:
        current_user()
        with read_uow() as uow:
            return _deployment(deployment_service.get_deployment(uow, deployments(), version))


@deployments_blp.route("/<int:version>/files/<string:name>")
class DeploymentFile(MethodView):
    @deployments_blp.response(200, content_type="application/xml", description="The file, as an attachment")
    def get(self, version: int, name: str) -> Any:
        current_user()
        with read_uow() as uow:
            filename, content, content_type = deployment_service.get_file(uow, version, name)
        response = Response(content, mimetype=content_type)
        response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


@deployments_blp.route("/<int:a>/diff/<int:b>")
class DeploymentDiff(MethodView):
    @deployments_blp.response(200)
    def get(self, a: int, b: int) -> Any:
        """Element-level changes from version a to version b: tasks, events, gateways, flows, lanes,
        decisions and rules, each added, removed or changed (with old and new values)."""
        current_user()
        with read_uow() as uow:
            return deployment_service.diff_versions(uow, a, b)


# --------------------------------------------------------------------------- incidents
@incidents_blp.route("")
class Incidents(MethodView):
    @incidents_blp.arguments(IncidentListArgs, location="query")
    @incidents_blp.response(200, IncidentPage)
    def get(self, args: dict[str, Any]) -> Any:
        """Incidents, newest first (default: open ones). Administrators and analysts only."""
        user = current_user()
        with read_uow() as uow:
            page = incident_service.list_incidents(
                uow, user, page=args["page"], page_size=args["page_size"],
                status=None if args["status"] == "any" else args["status"], milestone_id=args["milestone_id"])
            return {"items": page.items, "page": page.page, "page_size": page.page_size, "total": page.total}


@incidents_blp.route("/<int:incident_id>")
class IncidentById(MethodView):
    @incidents_blp.response(200, IncidentOut)
    def get(self, incident_id: int) -> Any:
        user = current_user()
        with read_uow() as uow:
            return incident_service.get_incident(uow, user, incident_id)


@incidents_blp.route("/<int:incident_id>/retry")
class IncidentRetry(MethodView):
    @incidents_blp.arguments(RetryIn)
    @incidents_blp.response(200, IncidentOut)
    @incidents_blp.alt_response(409, description="Not open, an impossible move, or the step failed again "
                                                 "(`Workflow incident`: the incident stays open)")
    def post(self, body: dict[str, Any], incident_id: int) -> Any:
        """Run the failed step again after a fix: `migrate` to the latest deployment first and/or
        merge corrected `data` into it."""
        user = current_user()
        with command_uow() as uow:
            return incident_service.retry_incident(uow, deployments(), user, incident_id, data=body["data"],
                                                   migrate=body["migrate"])


# --------------------------------------------------------------------------- migration
@instances_blp.route("/migration")
class Migration(MethodView):
    @instances_blp.arguments(MigrationIn)
    @instances_blp.response(200, MigrationOut)
    @instances_blp.alt_response(409, description="An instance cannot be moved (per-instance `instances`) or "
                                                 "changed meanwhile; nothing was changed")
    def post(self, body: dict[str, Any]) -> Any:
        """Move instances to deployment `to_version`. `dry_run` (the default) reports per instance
        what would change and whether the move is possible, and changes nothing."""
        user = current_user()
        with command_uow() as uow:
            results = deployment_service.migrate_instances(uow, deployments(), user, body["instance_ids"],
                                                           body["to_version"], dry_run=body["dry_run"])
        return {"dry_run": body["dry_run"], "to_version": body["to_version"],
                "instances": [r.as_dict() for r in results]}
