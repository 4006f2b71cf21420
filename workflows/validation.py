"""Checks a bundle of `.bpmn`/`.dmn` files before anything is stored, and reports every problem at once.

SpiffWorkflow stops at the first parse error and finds broken expressions, dead references and
DMN gaps only when an instance runs into them, months later. `check_bundle` looks at the whole
bundle first, each problem located by file, element id and line:

- the upload itself: file names, size, DOCTYPE/entity declarations (refused on the raw bytes,
  before any parser processes them), well-formedness, the root element;
- the BPMN and DMN XSDs (every schema error, not only the first);
- references: call activities to processes, business rule tasks to decisions, sequence flows
  and gateway defaults to elements of the same process;
- routing: literal candidate groups and routing lanes against the known groups (when given);
- code: scripts, conditions, timers, service parameters and DMN cells must compile;
- DMN tables: a catch-all rule for single-hit tables, no provable overlap in UNIQUE tables;
- loops or merges straight into a task (SpiffWorkflow recurses on them: pitfall P14);

and, when every file is well-formed, whatever SpiffWorkflow's own parser refuses.
"""

from __future__ import annotations

import ast
import re
import textwrap
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from lxml import etree

from .camunda import (
    Unsupported,
    feel_input_entry_to_python,
    feel_output_to_python,
    template_to_python,
    timer_to_python,
)
from .deployment import BPMN_NS, CAMUNDA_NS, MAX_FILE_BYTES, Deployment, content_hash, safe_parse_xml
from .errors import DeploymentError, Problem

SPIFF_NS = "http://spiffworkflow.org/bpmn/schema/1.0/core"
DMN_NAMESPACES = (
    "http://www.omg.org/spec/DMN/20151101/dmn.xsd",
    "http://www.omg.org/spec/DMN/20180521/MODEL/",
    "https://www.omg.org/spec/DMN/20191111/MODEL/",
)
ACTIVITY_TAGS = ("task", "userTask", "manualTask", "serviceTask", "scriptTask", "businessRuleTask", "sendTask",
                 "receiveTask", "callActivity", "subProcess", "transaction", "adHocSubProcess")
GATEWAY_TAGS = ("exclusiveGateway", "inclusiveGateway", "parallelGateway", "eventBasedGateway", "complexGateway")
# Single-hit tables answer "no match" with nothing at all, so the variable they should set stays
# undefined and a later step fails on it; multi-hit tables answer with an empty list.
MULTI_HIT_POLICIES = ("COLLECT", "RULE ORDER", "OUTPUT ORDER")
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,200}\.(bpmn|dmn)$")
MAX_XSD_ERRORS_PER_FILE = 50

_FEEL_RANGE = re.compile(r"^\s*[\[\]\(]\s*(-?[\d.]+)\s*\.\.\s*(-?[\d.]+)\s*[\]\[\)]\s*$")


@dataclass
class BundleCheck:
    """The outcome of `check_bundle`: the problems, and the parsed deployment when there are none."""

    problems: list[Problem]
    deployment: Deployment | None = None

    @property
    def valid(self) -> bool:
        return not self.problems


def validate_bundle(files: dict[str, bytes], known_groups: set[str] | None = None) -> list[Problem]:
    """Every problem of the bundle, sorted by file and line; an empty list means it can be deployed.

    `known_groups`: the approval groups that exist; literal candidate groups and routing lanes
    are checked against them when given. Never raises for bad input: it is all in the list.
    """
    return check_bundle(files, known_groups).problems


_VALID: OrderedDict[str, Deployment] = OrderedDict()  # content hash -> parsed deployment, most recent last
_VALID_LOCK = threading.Lock()
_VALID_SIZE = 8


def check_bundle(files: dict[str, bytes], known_groups: set[str] | None = None) -> BundleCheck:
    """`validate_bundle`, also returning the parsed `Deployment` when the bundle is valid.

    A bundle found valid is remembered by its content hash (the check is a function of the bytes alone
    when no groups are given), so deploying the same files again in this process parses nothing.
    """
    key = content_hash(files) if files and known_groups is None else None
    if key is not None:
        with _VALID_LOCK:
            known = _VALID.get(key)
            if known is not None:
                _VALID.move_to_end(key)
                return BundleCheck([], known)
    checked = _check_bundle(files, known_groups)
    if key is not None and checked.deployment is not None:
        with _VALID_LOCK:
            _VALID[key] = checked.deployment
            while len(_VALID) > _VALID_SIZE:
                _VALID.popitem(last=False)
    return checked


def _check_bundle(files: dict[str, bytes], known_groups: set[str] | None) -> BundleCheck:
    problems: list[Problem] = []
    if not files:
        return BundleCheck([Problem("the bundle is empty: upload .bpmn and .dmn files")])
    roots: dict[str, etree._Element] = {}
    for name, content in sorted(files.items()):
        root, found = _load(name, content)
        problems.extend(found)
        if root is not None:
            roots[name] = root
    for name, root in sorted(roots.items()):
        problems.extend(_check_schema(name, root))
    model = _Model(roots)
    for check in (_check_references, _check_expressions, _check_dmn, _check_loops):
        problems.extend(check(model))
    if known_groups is not None:
        problems.extend(_check_groups(model, known_groups))
    if not model.processes and not problems:
        problems.append(Problem("the bundle has no .bpmn file with a process"))

    deployment = None
    # Only well-formed, entity-free files ever reach SpiffWorkflow's parser.
    if len(roots) == len(files):
        try:
            deployment = Deployment.from_files(dict(files))
        except DeploymentError as exc:
            problems.extend(p for p in exc.problems if not _reported(p, problems))
    problems = sorted(dict.fromkeys(problems), key=lambda p: (p.file or "", p.line or 0, p.element_id or "",
                                                              p.message))
    return BundleCheck(problems, None if problems else deployment)


def _reported(problem: Problem, problems: list[Problem]) -> bool:
    """Whether one of our own problems already points at the place SpiffWorkflow complains about."""
    for p in problems:
        if p.file != problem.file:
            continue
        if problem.line is not None and p.line == problem.line:
            return True
        if problem.element_id is not None and p.element_id == problem.element_id:
            return True
    return False


# --------------------------------------------------------------------------- loading
def _load(name: str, content: bytes) -> tuple[etree._Element | None, list[Problem]]:
    if not FILE_NAME.match(name):
        return None, [Problem("a file name must be a plain name (letters, digits, '.', '_', '-', ' ') "
                              "ending in .bpmn or .dmn", file=name)]
    if len(content) > MAX_FILE_BYTES:
        return None, [Problem(f"file is larger than {MAX_FILE_BYTES} bytes", file=name)]
    for marker in (b"<!DOCTYPE", b"<!ENTITY"):
        at = content.find(marker)
        if at >= 0:
            # Refused on the raw bytes: no parser ever reads a DTD or an entity declaration of ours.
            return None, [Problem("DOCTYPE and ENTITY declarations are not allowed (no DTDs, no entities)",
                                  file=name, line=content.count(b"\n", 0, at) + 1)]
    try:
        root = safe_parse_xml(content, name)
    except DeploymentError as exc:
        return None, list(exc.problems)
    expected = (BPMN_NS,) if name.endswith(".bpmn") else DMN_NAMESPACES
    if etree.QName(root).localname != "definitions" or etree.QName(root).namespace not in expected:
        kind = "BPMN 2.0" if name.endswith(".bpmn") else "DMN 1.1-1.3"
        return None, [Problem(f"the root element {root.tag} is not a {kind} <definitions>", file=name,
                              line=root.sourceline)]
    return root, []


_schemas: dict[str, etree.XMLSchema] = {}
_schema_lock = threading.Lock()


def _schema(namespace: str) -> etree.XMLSchema:
    # Built on first use (not at import) and shared; lxml's error log lives on the schema object,
    # so validations are serialized by the lock.
    schema = _schemas.get(namespace)
    if schema is None:
        from SpiffWorkflow.bpmn.parser.BpmnParser import BpmnValidator
        from SpiffWorkflow.dmn.parser.BpmnDmnParser import SCHEMAS
        from SpiffWorkflow.spiff.parser.process import SPIFF_XSD

        if namespace == BPMN_NS:
            schema = BpmnValidator(imports={SPIFF_NS: SPIFF_XSD}).validator
        else:
            schema = BpmnValidator(SCHEMAS[namespace]).validator
        _schemas[namespace] = schema
    return schema


def _check_schema(name: str, root: etree._Element) -> list[Problem]:
    namespace = etree.QName(root).namespace or ""
    with _schema_lock:
        schema = _schema(namespace)
        if namespace == BPMN_NS:
            root = _bpmn_io_compatible(root)
        valid = schema.validate(root)
        errors = [] if valid else [(e.line, e.message) for e in schema.error_log]
    by_line = _ids_by_line(root)
    problems = []
    for line, message in list(dict.fromkeys(errors))[:MAX_XSD_ERRORS_PER_FILE]:
        problems.append(Problem(f"XSD: {message}", file=name, element_id=by_line.get(line), line=line))
    return problems


def _bpmn_io_compatible(root: etree._Element) -> etree._Element:
    # bpmn.io writes correlation property expressions under a tag the XSD does not know;
    # SpiffWorkflow's own validator renames it the same way before validating.
    tag = f"{{{BPMN_NS}}}correlationPropertyRetrievalExpression/{{{BPMN_NS}}}formalExpression"
    if root.find(f".//{tag}") is None:
        return root
    root = etree.fromstring(etree.tostring(root))
    for expr in root.iterfind(f".//{tag}"):
        expr.tag = f"{{{BPMN_NS}}}messagePath"
    return root


def _ids_by_line(root: etree._Element) -> dict[int, str]:
    found: dict[int, str] = {}
    for el in root.iter():
        if isinstance(el.tag, str) and el.get("id") and el.sourceline is not None:
            found.setdefault(el.sourceline, el.get("id"))
    return found


# --------------------------------------------------------------------------- the bundle's model
def _q(local: str, ns: str = BPMN_NS) -> str:
    return f"{{{ns}}}{local}"


def _owner_id(el: etree._Element) -> str | None:
    while el is not None:
        if el.get("id"):
            return el.get("id")
        el = el.getparent()
    return None


@dataclass
class _Model:
    roots: dict[str, etree._Element]
    processes: dict[str, str] = field(default_factory=dict)  # process id -> file
    decisions: dict[str, str] = field(default_factory=dict)  # decision id -> file

    def __post_init__(self) -> None:
        for name, root in self.bpmn():
            for process in root.iter(_q("process")):
                if process.get("id"):
                    self.processes.setdefault(process.get("id"), name)
        for name, root in self.dmn():
            ns = etree.QName(root).namespace
            for decision in root.iter(f"{{{ns}}}decision"):
                if decision.get("id"):
                    self.decisions.setdefault(decision.get("id"), name)

    def bpmn(self) -> Iterator[tuple[str, etree._Element]]:
        return ((n, r) for n, r in sorted(self.roots.items()) if n.endswith(".bpmn"))

    def dmn(self) -> Iterator[tuple[str, etree._Element]]:
        return ((n, r) for n, r in sorted(self.roots.items()) if n.endswith(".dmn"))

    def process_elements(self) -> Iterator[tuple[str, etree._Element]]:
        for name, root in self.bpmn():
            for process in root.iter(_q("process")):
                yield name, process


def _activities(container: etree._Element) -> Iterator[etree._Element]:
    for tag in ACTIVITY_TAGS:
        yield from container.iter(_q(tag))


def _text(el: etree._Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    return el.text.strip() or None


# --------------------------------------------------------------------------- references
def _check_references(model: _Model) -> list[Problem]:
    problems: list[Problem] = []
    for name, process in model.process_elements():
        ids = {el.get("id") for el in process.iter() if isinstance(el.tag, str) and el.get("id")}
        flows = {f.get("id") for f in process.iter(_q("sequenceFlow"))}
        for flow in process.iter(_q("sequenceFlow")):
            for attr in ("sourceRef", "targetRef"):
                ref = flow.get(attr)
                if ref not in ids:
                    problems.append(Problem(f"{attr} {ref!r} is no element of process {process.get('id')!r}",
                                            file=name, element_id=flow.get("id"), line=flow.sourceline))
        for tag in (*GATEWAY_TAGS, *ACTIVITY_TAGS):
            for el in process.iter(_q(tag)):
                default = el.get("default")
                if default and default not in flows:
                    problems.append(Problem(f"default flow {default!r} does not exist", file=name,
                                            element_id=el.get("id"), line=el.sourceline))
        for call in process.iter(_q("callActivity")):
            called = (call.get("calledElement") or "").strip()
            if not called:
                problems.append(Problem("call activity without calledElement", file=name,
                                        element_id=call.get("id"), line=call.sourceline))
            elif called not in model.processes:
                problems.append(Problem(f"calls process {called!r}, which no .bpmn file of the bundle defines",
                                        file=name, element_id=call.get("id"), line=call.sourceline))
        for task in process.iter(_q("businessRuleTask")):
            spiff_ref = _text(task.find(f".//{_q('calledDecisionId', SPIFF_NS)}"))
            camunda_ref = (task.get(_q("decisionRef", CAMUNDA_NS)) or "").strip() or None
            refs = [r for r in (spiff_ref, camunda_ref) if r and "${" not in r]
            if spiff_ref is None and camunda_ref is None:
                problems.append(Problem("business rule task without a decision reference "
                                        "(spiffworkflow:calledDecisionId or camunda:decisionRef)", file=name,
                                        element_id=task.get("id"), line=task.sourceline))
            for ref in dict.fromkeys(refs):
                if ref not in model.decisions:
                    problems.append(Problem(f"decision {ref!r} is in no .dmn file of the bundle", file=name,
                                            element_id=task.get("id"), line=task.sourceline))
    return problems


# --------------------------------------------------------------------------- groups
def _check_groups(model: _Model, known: set[str]) -> list[Problem]:
    problems: list[Problem] = []
    for name, process in model.process_elements():
        unaddressed: set[str] = set()
        for tag in ("userTask", "manualTask"):
            for task in process.iter(_q(tag)):
                groups = task.get(_q("candidateGroups", CAMUNDA_NS))
                users = task.get(_q("candidateUsers", CAMUNDA_NS))
                if not (groups or "").strip() and not (users or "").strip():
                    unaddressed.add(task.get("id"))
                if groups and "${" not in groups:
                    for group in (g.strip() for g in groups.split(",")):
                        if group and group not in known:
                            problems.append(Problem(f"candidate group {group!r} is not a known group", file=name,
                                                    element_id=task.get("id"), line=task.sourceline))
        # A lane routes only the human tasks that name no candidates themselves (see engine._describe).
        for lane in process.iter(_q("lane")):
            refs = {_text(r) for r in lane.findall(_q("flowNodeRef"))}
            lane_name = (lane.get("name") or "").strip()
            if refs & unaddressed and lane_name not in known:
                problems.append(Problem(f"lane {lane_name or lane.get('id')!r} routes human tasks but is not a "
                                        "known group", file=name, element_id=lane.get("id"), line=lane.sourceline))
    return problems


# --------------------------------------------------------------------------- expressions
def _compile(source: str | None, mode: str, el: etree._Element, what: str, file: str,
             problems: list[Problem]) -> None:
    if source is None or not source.strip():
        return
    try:
        ast.parse(source.strip() if mode == "eval" else _dedent(source), mode=mode)
    except SyntaxError as exc:
        where = f" (line {exc.lineno} of the script)" if mode == "exec" and exc.lineno else ""
        problems.append(Problem(f"{what} does not compile{where}: {exc.msg}", file=file, element_id=_owner_id(el),
                                line=el.sourceline))


def _dedent(source: str) -> str:
    return textwrap.dedent(source.strip("\n"))


def _translated(translate: Any, source: str | None, el: etree._Element, what: str, file: str,
                problems: list[Problem]) -> str | None:
    """What the engine runs for `source` once Camunda's forms (`${…}`, FEEL, bare ISO timers) are
    translated (`workflows.camunda`): the translation, `source` itself when it needs none, or None
    after reporting why it cannot be translated."""
    if source is None or not source.strip():
        return None
    try:
        python = translate(source)
    except Unsupported as exc:
        problems.append(Problem(f"{what}: {exc}", file=file, element_id=_owner_id(el), line=el.sourceline))
        return None
    return source if python is None else python


def _check_expressions(model: _Model) -> list[Problem]:
    problems: list[Problem] = []
    for name, root in model.bpmn():
        for el in root.iter(_q("script")):
            _compile(el.text, "exec", el, "script", name, problems)
        for tag in ("preScript", "postScript"):
            for el in root.iter(_q(tag, SPIFF_NS)):
                _compile(el.text, "exec", el, f"spiffworkflow:{tag}", name, problems)
        for tag in ("conditionExpression", "completionCondition", "loopCardinality"):
            for el in root.iter(_q(tag)):
                _compile(_translated(template_to_python, el.text, el, tag, name, problems), "eval", el, tag, name,
                         problems)
        for tag in ("timeDuration", "timeDate", "timeCycle"):
            for el in root.iter(_q(tag)):
                python = _translated(lambda text, kind=tag: timer_to_python(text, kind), el.text, el,
                                     f"timer {tag}", name, problems)
                _compile(python, "eval", el, f"timer {tag}", name, problems)
        for el in root.iter(_q("parameter", SPIFF_NS)):
            _compile(el.get("value"), "eval", el, f"service parameter {el.get('id')!r}", name, problems)
        for el in root.iter(_q("userTask")):
            for attr in ("candidateGroups", "candidateUsers", "dueDate", "assignee"):
                value = el.get(_q(attr, CAMUNDA_NS))
                if value and "${" in value:
                    what = f"camunda:{attr}"
                    _compile(_translated(template_to_python, value, el, what, name, problems), "eval", el, what,
                             name, problems)
    for name, root in model.dmn():
        ns = etree.QName(root).namespace
        for table in root.iter(f"{{{ns}}}decisionTable"):
            for expr in table.iterfind(f"{{{ns}}}input/{{{ns}}}inputExpression/{{{ns}}}text"):
                _compile(expr.text, "eval", expr, "DMN input expression", name, problems)
            for rule in table.iterfind(f"{{{ns}}}rule"):
                for entry in rule.iterfind(f"{{{ns}}}inputEntry"):
                    text = _translated(feel_input_entry_to_python, _text(entry.find(f"{{{ns}}}text")), entry,
                                       "DMN input entry", name, problems)
                    _check_input_entry(text, entry, name, problems)
                for entry in rule.iterfind(f"{{{ns}}}outputEntry"):
                    text = _translated(feel_output_to_python, _text(entry.find(f"{{{ns}}}text")), entry,
                                       "DMN output entry", name, problems)
                    _compile(text, "eval", entry, "DMN output entry", name, problems)
    return problems


def _check_input_entry(text: str | None, entry: etree._Element, file: str, problems: list[Problem]) -> None:
    """SpiffWorkflow's rules for an input entry: `-`/empty, an expression compared with `==`, an
    operator continued from the input (`< 10`), or a test with `?` standing for the input value."""
    if text is None or text.strip() == "-":
        return
    source = re.sub(r"(\?)(?=(?:[^'\"]|['\"][^'\"]*['\"])*$)", "dmninputexpr", text)
    if "dmninputexpr" in source:
        _compile(source, "eval", entry, "DMN input entry", file, problems)
        return
    try:
        ast.parse(source, mode="eval")
    except SyntaxError:
        _compile(f"dmninputexpr {source}", "eval", entry, "DMN input entry", file, problems)


# --------------------------------------------------------------------------- DMN tables
@dataclass(frozen=True)
class _Interval:
    low: Decimal | None
    low_closed: bool
    high: Decimal | None
    high_closed: bool

    def meets(self, other: _Interval) -> bool:
        def below(high: Decimal | None, high_closed: bool, low: Decimal | None, low_closed: bool) -> bool:
            if high is None or low is None:
                return False
            return high < low or (high == low and not (high_closed and low_closed))

        return not (below(self.high, self.high_closed, other.low, other.low_closed)
                    or below(other.high, other.high_closed, self.low, self.low_closed))


_ANY = "any"


def _entry_set(text: str | None) -> Any:
    """What an input entry matches, when we can tell: `_ANY`, a frozenset of string literals, an
    `_Interval`, or None (unknown: never claimed to overlap anything)."""
    if text is None or text.strip() in ("", "-"):
        return _ANY
    text = text.strip()
    number = r"(-?\d+(?:\.\d+)?)"
    strings = re.fullmatch(r'\s*("[^"]*"|\'[^\']*\')(\s*,\s*("[^"]*"|\'[^\']*\'))*\s*', text)
    if strings:
        return frozenset(s[1:-1] for s in re.findall(r'"[^"]*"|\'[^\']*\'', text))
    feel = _FEEL_RANGE.match(text)
    if feel:
        return _Interval(_dec(feel.group(1)), text.lstrip()[0] == "[", _dec(feel.group(2)), text.rstrip()[-1] == "]")
    m = re.fullmatch(rf"(<=|>=|<|>|==)\s*{number}", text)
    if m:
        op, value = m.group(1), _dec(m.group(2))
        return {
            "<": _Interval(None, False, value, False), "<=": _Interval(None, False, value, True),
            ">": _Interval(value, False, None, False), ">=": _Interval(value, True, None, False),
            "==": _Interval(value, True, value, True),
        }[op]
    m = re.fullmatch(number, text)
    if m:
        value = _dec(m.group(1))
        return _Interval(value, True, value, True)
    m = re.fullmatch(rf"{number}\s*(<=|<)\s*\?\s*(<=|<)\s*{number}", text)
    if m:
        return _Interval(_dec(m.group(1)), m.group(2) == "<=", _dec(m.group(4)), m.group(3) == "<=")
    return None


def _dec(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _entries_overlap(a: str | None, b: str | None) -> bool:
    """True only when both entries provably match a common value."""
    if (a or "").strip() == (b or "").strip():
        return True
    sa, sb = _entry_set(a), _entry_set(b)
    if sa is None or sb is None:
        return False
    if sa == _ANY or sb == _ANY:
        return True
    if isinstance(sa, frozenset) and isinstance(sb, frozenset):
        return bool(sa & sb)
    if isinstance(sa, _Interval) and isinstance(sb, _Interval):
        return sa.meets(sb)
    return False


def _check_dmn(model: _Model) -> list[Problem]:
    problems: list[Problem] = []
    for name, root in model.dmn():
        ns = etree.QName(root).namespace
        for table in root.iter(f"{{{ns}}}decisionTable"):
            policy = (table.get("hitPolicy") or "UNIQUE").upper()
            owner = _owner_id(table.getparent()) or table.get("id")
            rules = []
            for rule in table.iterfind(f"{{{ns}}}rule"):
                entries = [_text(e.find(f"{{{ns}}}text")) for e in rule.iterfind(f"{{{ns}}}inputEntry")]
                rules.append((rule, entries, all(e in (None, "-") for e in entries)))
            if not rules:
                problems.append(Problem("the decision table has no rules", file=name, element_id=owner,
                                        line=table.sourceline))
                continue
            if policy not in MULTI_HIT_POLICIES and not any(catch_all for *_, catch_all in rules):
                problems.append(Problem(
                    f"the {policy} decision table has no catch-all rule (all input entries '-'): an input no "
                    "rule matches sets no output at all", file=name, element_id=owner, line=table.sourceline))
            if policy == "UNIQUE":
                problems.extend(_overlaps(name, rules))
    return problems


def _overlaps(file: str, rules: list[tuple[etree._Element, list[str | None], bool]]) -> list[Problem]:
    problems = []
    last = rules[-1][0]
    for i, (first, first_entries, first_catch_all) in enumerate(rules):
        for second, second_entries, second_catch_all in rules[i + 1:]:
            # SpiffWorkflow evaluates UNIQUE as "first match wins", so a catch-all in last place is the
            # table's default; anywhere else it hides the rules after it.
            if second is last and second_catch_all and not first_catch_all:
                continue
            if first_catch_all or (len(first_entries) == len(second_entries) and all(
                    _entries_overlap(a, b) for a, b in zip(first_entries, second_entries, strict=True))):
                problems.append(Problem(
                    f"rules {first.get('id')!r} and {second.get('id')!r} both match some inputs, which a UNIQUE "
                    "hit policy does not allow", file=file, element_id=second.get("id"), line=second.sourceline))
    return problems


# --------------------------------------------------------------------------- loops
def _check_loops(model: _Model) -> list[Problem]:
    problems: list[Problem] = []
    for name, process in model.process_elements():
        outgoing: dict[str, list[str]] = {}
        incoming: dict[str, list[etree._Element]] = {}
        for flow in process.iter(_q("sequenceFlow")):
            outgoing.setdefault(flow.get("sourceRef"), []).append(flow.get("targetRef"))
            incoming.setdefault(flow.get("targetRef"), []).append(flow)
        for task in _activities(process):
            flows = incoming.get(task.get("id"), [])
            if len(flows) < 2:
                continue
            ids = ", ".join(repr(f.get("id")) for f in flows)
            reachable = _reachable(task.get("id"), outgoing)
            if any(f.get("sourceRef") in reachable for f in flows):
                message = (f"a loop re-enters this task without a gateway (flows {ids}); route it through a "
                           "merge gateway: SpiffWorkflow recurses without end on loops straight into a task")
            else:
                message = (f"flows {ids} merge into this task without a gateway; merge them with a gateway first "
                           "(SpiffWorkflow mispredicts tasks with several incoming flows)")
            problems.append(Problem(message, file=name, element_id=task.get("id"), line=task.sourceline))
    return problems


def _reachable(start: str, outgoing: dict[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        node = stack.pop()
        for nxt in outgoing.get(node, []):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def describe(problem: Problem) -> str:
    """One line per problem, `file:line [element] message`, as the CLI prints it."""
    return f"{problem.file or '-'}:{problem.line or '-'} [{problem.element_id or '-'}] {problem.message}"


def problems_as_dicts(problems: Iterable[Problem]) -> list[dict[str, object]]:
    return [p.as_dict() for p in problems]
