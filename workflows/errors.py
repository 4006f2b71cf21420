"""Typed errors raised by the engine package; none of them carries a SpiffWorkflow object."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a deployment or a run, located as precisely as we know."""

    message: str
    file: str | None = None
    element_id: str | None = None
    line: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {"message": self.message, "file": self.file, "element_id": self.element_id, "line": self.line}


class WorkflowError(Exception):
    """Base class of every error raised by `workflows`."""


class DeploymentError(WorkflowError):
    """The BPMN/DMN bundle cannot be loaded; `problems` lists every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(_describe(p) for p in problems))


class ExecutionError(WorkflowError):
    """A script, expression, decision or service step failed while the instance ran.

    The instance keeps the failed task in ERROR state; `element_id` and `file` say where.
    """

    def __init__(self, message: str, *, file: str | None, element_id: str | None, line: int | None = None):
        self.problem = Problem(message=message, file=file, element_id=element_id, line=line)
        self.file = file
        self.element_id = element_id
        self.cause: BaseException | None = None
        # `line` counts inside the failing script or expression, not inside the file.
        where = _describe(Problem(message=message, file=file, element_id=element_id))
        super().__init__(f"{where} (script line {line})" if line else where)


class TaskNotFound(WorkflowError):
    """No task with this id exists in this instance."""


class TaskNotReady(WorkflowError):
    """The task exists but is not a READY human task, so it cannot be completed now."""

    def __init__(self, task_id: str, state: str):
        self.task_id = task_id
        self.state = state
        super().__init__(f"task {task_id} is {state}, not a ready human task")


class MessageNotExpected(WorkflowError):
    """The instance is not waiting for this message; `waiting` lists the ones it would take."""

    def __init__(self, name: str, waiting: list[str]):
        self.name = name
        self.waiting = waiting
        super().__init__(f"not waiting for message {name!r}; waiting for {', '.join(waiting) or 'nothing'}")


class StateError(WorkflowError):
    """The stored state cannot be restored with this deployment or serializer version."""


def _describe(p: Problem) -> str:
    where = ":".join(str(x) for x in (p.file, p.line) if x is not None)
    if p.element_id:
        where = f"{where} [{p.element_id}]" if where else f"[{p.element_id}]"
    return f"{where}: {p.message}" if where else p.message
