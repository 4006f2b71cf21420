"""A deployment: one content-hashed bundle of `.bpmn` and `.dmn` files, parsed once.

Parsing costs milliseconds, so a process keeps every deployment it has loaded in a cache
keyed by hash; instances only ever store their own state plus that hash.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import re
import threading
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from lxml import etree
from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.parser.ValidationException import ValidationException
from SpiffWorkflow.bpmn.serializer import BpmnWorkflowSerializer
from SpiffWorkflow.bpmn.serializer.default.workflow import BpmnWorkflowConverter, WorkflowConverter
from SpiffWorkflow.bpmn.specs.mixins.multiinstance_task import LoopTask
from SpiffWorkflow.spiff.parser.process import VALIDATOR, SpiffBpmnParser, SpiffProcessParser
from SpiffWorkflow.spiff.serializer.config import SPIFF_CONFIG

from . import camunda, sandbox
from .errors import DeploymentError, Problem

BPMN_NS = "http://www.omg.org/spec/BPMN/20100524/MODEL"
CAMUNDA_NS = "http://camunda.org/schema/1.0/bpmn"
# The serializer format SpiffWorkflow 3.2.0 writes; stored with every instance so an upgrade
# can tell which blobs need migrating.
SERIALIZER_VERSION = "spiff-3.2.0/state-only-2"
# Versions `Instance.restore` still reads: -1 wrote task ids as UUID strings everywhere.
READABLE_SERIALIZER_VERSIONS = ("spiff-3.2.0/state-only-1", SERIALIZER_VERSION)
MAX_FILE_BYTES = 2 * 1024 * 1024

_EXPRESSION_ATTRS = ("candidateGroups", "candidateUsers", "dueDate", "assignee")


@dataclass(frozen=True)
class TaskMeta:
    """What the XML says about a user task beyond what SpiffWorkflow keeps."""

    candidate_groups: str | None = None
    candidate_users: str | None = None
    due_date: str | None = None
    assignee: str | None = None
    form_key: str | None = None
    line: int | None = None


def safe_parse_xml(content: bytes, filename: str) -> etree._Element:
    """Parse XML with DTDs, entities and network access disabled.

    Raises DeploymentError for anything that is not plain, well-formed XML under the size cap.
    """
    if len(content) > MAX_FILE_BYTES:
        raise DeploymentError([Problem(f"file is larger than {MAX_FILE_BYTES} bytes", file=filename)])
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False
    )
    try:
        root = etree.fromstring(content, parser)
    except etree.XMLSyntaxError as exc:
        line = exc.position[0] if exc.position else None
        raise DeploymentError([Problem(f"not well-formed XML: {exc.msg}", file=filename, line=line)]) from exc
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise DeploymentError([Problem("a DOCTYPE is not allowed", file=filename, line=1)])
    return root


def content_hash(files: dict[str, bytes]) -> str:
    """Hash of the bundle: names and contents, independent of the order they were given in."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


class _Serializers(threading.local):
    """SpiffWorkflow's registry toggles a shared flag while encoding: one serializer per thread."""

    serializer: BpmnWorkflowSerializer | None = None


class Deployment:
    """A parsed bundle. Build with `Deployment.from_files`; it is immutable afterwards."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.hash = content_hash(self.files)
        self.process_files: dict[str, str] = {}
        self.process_names: dict[str, str] = {}
        self.executable: list[str] = []
        self.task_meta: dict[tuple[str, str], TaskMeta] = {}
        self._specs: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._human: dict[str, bool] = {}
        self._decisions: dict[str, Any] = {}
        self.decision_files: dict[str, str] = {}
        self._serializers = _Serializers()
        self._parse()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> Deployment:
        return cls(files)

    @classmethod
    def from_directories(cls, *dirs: Path | str) -> Deployment:
        files: dict[str, bytes] = {}
        for directory in dirs:
            for path in sorted(Path(directory).glob("*")):
                if path.suffix in (".bpmn", ".dmn") and path.is_file():
                    files[path.name] = path.read_bytes()
        if not files:
            raise DeploymentError([Problem(f"no .bpmn or .dmn files in {', '.join(map(str, dirs))}")])
        return cls(files)

    def _parse(self) -> None:
        problems: list[Problem] = []
        parser = _Parser(validator=VALIDATOR)
        roots: dict[str, etree._Element] = {}
        for name, content in sorted(self.files.items()):
            if not name.endswith((".bpmn", ".dmn")):
                problems.append(Problem("only .bpmn and .dmn files can be deployed", file=name))
                continue
            try:
                roots[name] = safe_parse_xml(content, name)
            except DeploymentError as exc:
                problems.extend(exc.problems)
        # DMN first: business rule tasks are resolved against them when specs are built.
        # Only our private trees are rewritten (Camunda -> Spiff); self.files stays as uploaded.
        decisions: dict[str, camunda.DecisionInfo] = {}
        for name in sorted(n for n in roots if n.endswith(".dmn")):
            trees, infos, found = camunda.split_decisions(roots[name], name)
            problems.extend(found)
            for tree, info in zip(trees, infos, strict=True):
                if info.id in self.decision_files:
                    problems.append(Problem(f"decision id {info.id!r} is also defined in "
                                            f"{self.decision_files[info.id]}", file=name, element_id=info.id))
                    continue
                try:
                    parser.add_dmn_xml(tree, filename=name)
                except ValidationException as exc:
                    problems.append(_problem_from_validation(exc, name))
                except Exception as exc:  # SpiffWorkflow raises raw AttributeError/ValueError on bad input
                    problems.append(Problem(f"{type(exc).__name__}: {exc}", file=name))
                else:
                    self.decision_files[info.id] = name
                    decisions[info.id] = info
                    problems.extend(_check_decision(name, tree))
        for name in sorted(n for n in roots if n.endswith(".bpmn")):
            found = camunda.rewrite_bpmn(roots[name], name, decisions)
            if found:
                problems.extend(found)
                continue
            try:
                parser.add_bpmn_xml(roots[name], filename=name)
                self._scan_bpmn(name, roots[name])
            except ValidationException as exc:
                problems.append(_problem_from_validation(exc, name))
            except Exception as exc:  # SpiffWorkflow raises raw AttributeError/ValueError on bad input
                problems.append(Problem(f"{type(exc).__name__}: {exc}", file=name))
            else:
                problems.extend(_check_expressions(name, roots[name]))
        if not problems:
            for decision_id in sorted(self.decision_files):
                try:
                    self._decisions[decision_id] = parser.get_engine(decision_id, None)
                except ValidationException as exc:
                    problems.append(_problem_from_validation(exc, self.decision_files[decision_id]))
                except Exception as exc:
                    problems.append(Problem(f"{type(exc).__name__}: {exc}",
                                            file=self.decision_files[decision_id], element_id=decision_id))
            for process_id in self.executable:
                try:
                    spec = parser.get_spec(process_id)
                    subprocess_specs = parser.get_subprocess_specs(process_id)
                except ValidationException as exc:
                    problems.append(_problem_from_validation(exc, self.process_files.get(process_id)))
                except Exception as exc:
                    problems.append(Problem(f"{type(exc).__name__}: {exc}", file=self.process_files.get(process_id)))
                else:
                    for each in (spec, *subprocess_specs.values()):
                        _connect_loop_children(each)
                    self._specs[process_id] = (spec, subprocess_specs)
        if problems:
            raise DeploymentError(problems)

    def _scan_bpmn(self, filename: str, root: etree._Element) -> None:
        for process in root.iter(f"{{{BPMN_NS}}}process"):
            pid = process.get("id")
            # Duplicate process ids never get here: SpiffWorkflow's parser refuses them first.
            self.process_files[pid] = filename
            self.process_names[pid] = process.get("name") or pid
            if process.get("isExecutable", "false") == "true":
                self.executable.append(pid)
            for task in process.iter(f"{{{BPMN_NS}}}userTask"):
                self.task_meta[(pid, task.get("id"))] = TaskMeta(
                    candidate_groups=task.get(f"{{{CAMUNDA_NS}}}candidateGroups"),
                    candidate_users=task.get(f"{{{CAMUNDA_NS}}}candidateUsers"),
                    due_date=task.get(f"{{{CAMUNDA_NS}}}dueDate"),
                    assignee=task.get(f"{{{CAMUNDA_NS}}}assignee"),
                    form_key=task.get(f"{{{CAMUNDA_NS}}}formKey"),
                    line=task.sourceline,
                )

    # ------------------------------------------------------------------ specs
    def spec(self, process_id: str) -> tuple[Any, dict[str, Any]]:
        try:
            return self._specs[process_id]
        except KeyError:
            raise DeploymentError(
                [Problem(f"no executable process {process_id!r} in deployment {self.hash[:12]}")]
            ) from None

    def has_human_tasks(self, process_id: str) -> bool:
        """Whether an instance of `process_id` can ever have a user or manual task (called
        processes and subprocesses included). False lets a caller skip looking for task rows."""
        known = self._human.get(process_id)
        if known is None:
            spec, subprocess_specs = self.spec(process_id)
            known = any(getattr(task_spec, "manual", False)
                        for s in (spec, *subprocess_specs.values()) for task_spec in s.task_specs.values())
            self._human[process_id] = known
        return known

    def decision(self, decision_id: str) -> Any:
        """The parsed decision table (a SpiffWorkflow DMNEngine) with this id; DeploymentError if none."""
        try:
            return self._decisions[decision_id]
        except KeyError:
            raise DeploymentError(
                [Problem(f"no decision {decision_id!r} in deployment {self.hash[:12]}")]
            ) from None

    @property
    def decision_ids(self) -> list[str]:
        return sorted(self._decisions)

    def file_of(self, process_id: str | None) -> str | None:
        return self.process_files.get(process_id or "")

    def meta_for(self, top_process_id: str, bpmn_id: str) -> TaskMeta:
        meta = self.task_meta.get((top_process_id, bpmn_id))
        if meta is None:
            for (_pid, tid), candidate in self.task_meta.items():
                if tid == bpmn_id:
                    return candidate
            return TaskMeta()
        return meta

    # ------------------------------------------------------------------ state
    @property
    def serializer(self) -> BpmnWorkflowSerializer:
        serializer = self._serializers.serializer
        if serializer is None:
            serializer = _state_only_serializer(self)
            self._serializers.serializer = serializer
        return serializer


class _ProcessParser(SpiffProcessParser):
    def _index_process_nodes(self) -> None:
        super()._index_process_nodes()
        # SpiffWorkflow indexes every element with an id, so a service operator or parameter whose id
        # equals a task id (a Camunda topic named like its task) replaced the task node and parsing
        # failed with "There is no support implemented for this task type": flow nodes win.
        for node in self.xpath(".//*[@id]"):
            if etree.QName(node).namespace == BPMN_NS:
                self.nodes_by_id[node.get("id")] = node


class _Parser(SpiffBpmnParser):
    PROCESS_PARSER_CLASS = _ProcessParser


def _state_only_serializer(deployment: Deployment) -> BpmnWorkflowSerializer:
    class StateOnlyConverter(BpmnWorkflowConverter):
        """Writes the instance's tasks and data only; specs come from the deployment on restore."""

        def to_dict(self, workflow: BpmnWorkflow) -> dict[str, Any]:
            dct = WorkflowConverter.to_dict(self, workflow)
            dct["spec"] = workflow.spec.name
            dct["subprocesses"] = self.mapping_to_dict(workflow.subprocesses)
            dct["bpmn_events"] = self.registry.convert(workflow.bpmn_events)
            return _compact_task_ids(dct)

        def from_dict(self, dct: dict[str, Any]) -> BpmnWorkflow:
            dct = _expand_task_ids(dct)
            spec, subprocess_specs = deployment.spec(dct.pop("spec"))
            workflow = self.target_class(spec, subprocess_specs, deserializing=True)
            workflow.tasks = self.mapping_from_dict(dct["tasks"], UUID, workflow=workflow)
            workflow.task_tree = workflow.tasks.get(UUID(dct["root"]))
            self.set_default_attributes(workflow, dct)
            self.subprocesses_from_dict(dct["subprocesses"], workflow)
            workflow.bpmn_events = self.registry.restore(dct.pop("bpmn_events", []))
            return workflow

    config = dict(SPIFF_CONFIG)
    config[BpmnWorkflow] = StateOnlyConverter
    registry = BpmnWorkflowSerializer.configure(config)
    # Money travels through task data; SpiffWorkflow has no Decimal converter of its own.
    registry.register(Decimal, lambda d: {"value": str(d)}, lambda d: Decimal(d["value"]))
    return BpmnWorkflowSerializer(registry)


def _connect_loop_children(spec: Any) -> None:
    """Hook each multi-instance (or loop) activity to its children's completion now, as SpiffWorkflow's
    spec deserializer does. SpiffWorkflow does it itself only when an activity creates a child, so an
    instance restored in a process that never ran that activity (another worker, after a restart, a
    migration) would complete its seats without the activity ever noticing: the level would never close."""
    for task_spec in spec.task_specs.values():
        if isinstance(task_spec, LoopTask):
            child = spec.task_specs.get(task_spec.task_spec)
            if child is not None and not child.completed_event.is_connected(task_spec.merge_child):
                child.completed_event.connect(task_spec.merge_child)


def _compact_task_ids(dct: dict[str, Any]) -> dict[str, Any]:
    """Task ids are random UUIDs, the one part of a state gzip cannot shrink, and each appears three
    times (key, id, a parent's children). Store each once, as 16 bytes in `task_ids`, and refer to it
    by position in the tree's own fields (id, parent, children, root, last_task). Ids anywhere else
    (task data, subprocesses) stay as they are. Halves a completed approval's stored bytes."""
    order = list(dct["tasks"])
    position = {task_id: i for i, task_id in enumerate(order)}
    tasks = []
    for task_id in order:
        task = dict(dct["tasks"][task_id])
        task["id"] = position[task_id]
        task["parent"] = position.get(task["parent"], task["parent"]) if task.get("parent") else None
        task["children"] = [position.get(c, c) for c in task.get("children", [])]
        if isinstance(task.get("last_state_change"), float):
            task["last_state_change"] = round(task["last_state_change"], 3)  # a millisecond is enough
        tasks.append(task)
    dct["tasks"] = tasks
    dct["root"] = position.get(dct.get("root"), dct.get("root"))
    dct["last_task"] = position.get(dct.get("last_task"), dct.get("last_task"))
    dct["task_ids"] = base64.b64encode(b"".join(UUID(task_id).bytes for task_id in order)).decode()
    return dct


def _expand_task_ids(dct: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `_compact_task_ids`; a state without `task_ids` (format -1) is returned as is."""
    packed = dct.pop("task_ids", None)
    if packed is None:
        return dct
    raw = base64.b64decode(packed)
    ids = [str(UUID(bytes=raw[i:i + 16])) for i in range(0, len(raw), 16)]

    def real(value: Any) -> Any:
        return ids[value] if isinstance(value, int) and not isinstance(value, bool) else value

    tasks = {}
    for task in dct["tasks"]:
        task["id"] = real(task["id"])
        task["parent"] = real(task["parent"])
        task["children"] = [real(c) for c in task["children"]]
        tasks[task["id"]] = task
    dct["tasks"] = tasks
    dct["root"] = real(dct.get("root"))
    dct["last_task"] = real(dct.get("last_task"))
    return dct


def _problem_from_validation(exc: ValidationException, default_file: str | None) -> Problem:
    line = getattr(exc, "line_number", None)
    message = str(exc.args[0]) if exc.args else str(exc)
    return Problem(
        message=message,
        file=getattr(exc, "file_name", None) or default_file,
        element_id=getattr(exc, "id", None) or None,
        line=line if isinstance(line, int) else None,
    )


_PLACEHOLDER = re.compile(r"^\$\{(.+)\}$", re.S)
SPIFF_NS = "http://spiffworkflow.org/bpmn/schema/1.0/core"


def _locate(element: etree._Element) -> tuple[str | None, int | None]:
    """Id of the element (or its nearest ancestor with one) and the nearest known source line."""
    owner: etree._Element | None = element
    while owner is not None and owner.get("id") is None:
        owner = owner.getparent()
    line_el: etree._Element | None = element
    while line_el is not None and line_el.sourceline is None:
        line_el = line_el.getparent()
    return (owner.get("id") if owner is not None else None,
            line_el.sourceline if line_el is not None else None)


class _Checker:
    """Runs every expression and script through the sandbox policy, as they will run."""

    def __init__(self, filename: str):
        self.filename = filename
        self.problems: list[Problem] = []

    def check(self, source: str | None, mode: str, element: etree._Element, what: str) -> None:
        if source is None or not source.strip():
            return
        element_id, line = _locate(element)
        # Lines inside the code count from its first line; an expression is stripped first.
        lead = source[: len(source) - len(source.lstrip())].count("\n") if mode == "eval" else 0
        for message, code_line in sandbox.check(source, mode):
            at = line + lead + (code_line or 1) - 1 if line is not None else None
            self.problems.append(Problem(f"{what} {message}" if message.startswith("does not compile")
                                         else f"{what}: {message}", file=self.filename, element_id=element_id,
                                         line=at))


def _check_expressions(filename: str, root: etree._Element) -> list[Problem]:
    """SpiffWorkflow only finds errors in expressions when it runs them: find them now.

    Every script, condition, timer, multi-instance expression, service parameter and `${…}`
    attribute is compiled under the sandbox policy (imports, dunder access, huge constants, …).
    """
    checker = _Checker(filename)
    check = checker.check
    for el in root.iter(f"{{{BPMN_NS}}}script"):
        check(el.text, "exec", el, "script")
    for tag in ("preScript", "postScript"):
        for el in root.iter(f"{{{SPIFF_NS}}}{tag}"):
            check(el.text, "exec", el, tag)
    for tag in ("conditionExpression", "condition", "timeDuration", "timeDate", "timeCycle",
                "completionCondition", "loopCardinality"):
        for el in root.iter(f"{{{BPMN_NS}}}{tag}"):
            check(el.text, "eval", el, tag)
    for el in root.iter(f"{{{SPIFF_NS}}}parameter"):
        check(el.get("value"), "eval", el, f"parameter {el.get('id')!r}")
    for el in root.iter(f"{{{BPMN_NS}}}userTask"):
        for attr in _EXPRESSION_ATTRS:
            value = el.get(f"{{{CAMUNDA_NS}}}{attr}")
            match = _PLACEHOLDER.match(value or "")
            if match:
                check(match.group(1), "eval", el, f"camunda:{attr}")
    return checker.problems


_DMN_INPUT_PLACEHOLDER = re.compile(r"""(\?)(?=(?:[^'"]|['"][^'"]*['"])*$)""")


def _check_decision(filename: str, root: etree._Element) -> list[Problem]:
    """Every DMN cell as SpiffWorkflow's DMNEngine will evaluate it (input entry joined to its input)."""
    checker = _Checker(filename)
    for table in root.iter():
        if not isinstance(table.tag, str) or etree.QName(table).localname != "decisionTable":
            continue
        inputs: list[str] = []
        for child in table:
            if not isinstance(child.tag, str):
                continue
            local = etree.QName(child).localname
            if local == "input":
                text = next((t.text for t in child.iter() if isinstance(t.tag, str)
                             and etree.QName(t).localname == "text"), None) or ""
                inputs.append(text)
                text_el = next((t for t in child.iter() if isinstance(t.tag, str)
                                and etree.QName(t).localname == "text"), child)
                checker.check(text, "eval", text_el, "DMN input expression")
            elif local == "rule":
                column = 0
                for entry in child:
                    if not isinstance(entry.tag, str):
                        continue
                    entry_local = etree.QName(entry).localname
                    text_el = next((t for t in entry if isinstance(t.tag, str)
                                    and etree.QName(t).localname == "text"), None)
                    text = (text_el.text if text_el is not None else None) or ""
                    located = text_el if text_el is not None else entry
                    if entry_local == "inputEntry":
                        source = _dmn_match_expression(inputs[column] if column < len(inputs) else "", text)
                        checker.check(source, "eval", located, "DMN input entry")
                        column += 1
                    elif entry_local == "outputEntry":
                        checker.check(text, "eval", located, "DMN output entry")
    return checker.problems


def _dmn_match_expression(input_expr: str, entry: str) -> str | None:
    """The expression SpiffWorkflow 3.2.0's DMNEngine.evaluate builds for one input cell."""
    entry = entry.strip()
    if not entry or entry == "-":
        return None
    replaced = _DMN_INPUT_PLACEHOLDER.sub("dmninputexpr", entry)
    if "dmninputexpr" in replaced:
        return replaced
    try:
        ast.parse(entry)
    except SyntaxError:
        return f"{input_expr}{entry}"
    return f"({input_expr}) == ({entry})"
