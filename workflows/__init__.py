"""The workflow engine: the only package that imports SpiffWorkflow.

It knows nothing of Flask, SQLAlchemy or Celery. Load a bundle of `.bpmn`/`.dmn` files into a
`Deployment` (content-hashed), start or restore an `Instance`, list its READY human tasks,
complete one, and save its state (state only: the spec stays with the deployment).
"""

from .deployment import SERIALIZER_VERSION, Deployment, safe_parse_xml
from .engine import RESERVED_PREFIX, HumanTask, Instance, ServiceCall, ServiceHandler
from .errors import (
    DeploymentError,
    ExecutionError,
    MessageNotExpected,
    Problem,
    StateError,
    TaskNotFound,
    TaskNotReady,
    WorkflowError,
)

__all__ = [
    "SERIALIZER_VERSION",
    "Deployment",
    "DeploymentError",
    "ExecutionError",
    "HumanTask",
    "Instance",
    "MessageNotExpected",
    "Problem",
    "RESERVED_PREFIX",
    "ServiceCall",
    "ServiceHandler",
    "StateError",
    "TaskNotFound",
    "TaskNotReady",
    "WorkflowError",
    "safe_parse_xml",
]
