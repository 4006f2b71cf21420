"""HTTP API: flask-smorest blueprints under /api/v1, problem+json errors, bearer auth."""

from __future__ import annotations

from flask import Flask, send_from_directory
from flask_smorest import Api

from .auth import register_auth
from .context import register_request_context
from .health import health_blp
from .idempotency import register_idempotency
from .ledger import BLUEPRINTS as LEDGER_BLUEPRINTS
from .notifications import BLUEPRINTS as NOTIFICATION_BLUEPRINTS
from .problems import register_error_handlers
from .resources import BLUEPRINTS
from .routing import BLUEPRINTS as ROUTING_BLUEPRINTS

SWAGGER_ASSETS = "/api/v1/docs/assets/"


class ProblemApi(Api):
    """flask-smorest with our problem+json handler instead of its own error format."""

    def _register_error_handlers(self) -> None:
        register_error_handlers(self._app)


def register_api(app: Flask) -> Api:
    app.config.update(
        API_TITLE="Contract Milestones",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api/v1",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL=SWAGGER_ASSETS,
        API_SPEC_OPTIONS={
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}],
            "info": {"description": "Contract milestones: records, approval workflow (BPMN/DMN) and inbox."},
        },
    )
    register_request_context(app)
    register_auth(app)
    register_idempotency(app)
    api = ProblemApi(app)
    for blp in (*BLUEPRINTS, *NOTIFICATION_BLUEPRINTS, *ROUTING_BLUEPRINTS, *LEDGER_BLUEPRINTS):
        api.register_blueprint(blp)
    app.register_blueprint(health_blp)
    _serve_swagger_assets(app)
    return api


def _serve_swagger_assets(app: Flask) -> None:
    # Swagger UI ships inside the swagger-ui-bundle wheel, so the docs page works offline.
    from swagger_ui_bundle import swagger_ui_path

    @app.get(SWAGGER_ASSETS + "<path:filename>")
    def swagger_assets(filename: str):  # type: ignore[no-untyped-def]
        return send_from_directory(str(swagger_ui_path), filename)
