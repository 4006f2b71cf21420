"""Diagrams saved by Camunda Modeler, rewritten into what SpiffBpmnParser runs.

`Deployment` parses every uploaded file itself (see `safe_parse_xml`), then hands the tree to
`rewrite_bpmn` / `split_decisions` before SpiffWorkflow sees it. Only that private tree is
changed: the uploaded bytes are stored and downloaded untouched. Every rewrite is unambiguous
for our own Spiff-style diagrams too (`${…}` and bare ISO timers are not valid Python, and a
Spiff extension already present wins), so it runs on every file.

Supported (rewritten):
- `camunda:decisionRef` on business rule tasks -> `spiffworkflow:calledDecisionId`, with
  `camunda:resultVariable` + `camunda:mapDecisionResult` as a post-script;
- `camunda:type="external"` + `camunda:topic` service tasks -> a service operator named after the
  topic, parameters from `camunda:inputOutput` input parameters (text, `${…}`, list, map); the
  result lands in `<task id>_result`;
- `${…}` / `#{…}` JUEL expressions with comparisons, `&&`, `||`, `!`, `eq`/`ne`/`lt`/`gt`/`le`/`ge`,
  `and`/`or`/`not`/`empty`, `div`/`mod`, `a.b` on maps and `a ? b : c`, in conditions, timers,
  multi-instance cardinality/completion, and `camunda:candidateGroups`-style attributes (also
  templates such as `group_${region}`);
- bare ISO 8601 timer values (`PT2M`, `R3/P1D`, `2026-12-01T10:00:00Z`);
- `camunda:collection` / `camunda:elementVariable` multi-instance;
- DMN files with several decisions (one tree per decision) and FEEL input entries (`< 1000`,
  `[1000..5000]`, `]1000..5000[`, `"a","b"`, `not("x")`, `-`, `true`/`false`/`null`) and FEEL
  outputs (`true`/`false`/`null`); RULE ORDER is COLLECT.

Refused with the element id and the reason: Java delegates (`camunda:class`,
`camunda:delegateExpression`, `camunda:expression`, `camunda:field`), connectors, listeners,
non-Python scripts and external script resources, data stores, input/output mappings other
than external service task inputs, call activity variable mappings other than "all",
`camunda:initiator`, error code/message variables, Camunda context objects (`execution`,
`task`, …) in expressions, DMN decision requirement graphs, literal-expression decisions,
COLLECT aggregations and PRIORITY/OUTPUT ORDER hit policies, and any camunda attribute or
extension element not listed here.
"""

from __future__ import annotations

import ast
import copy
import re
from dataclasses import dataclass, field

from lxml import etree

from .errors import Problem

BPMN_NS = "http://www.omg.org/spec/BPMN/20100524/MODEL"
CAMUNDA_NS = "http://camunda.org/schema/1.0/bpmn"
CAMUNDA_DMN_NS = "http://camunda.org/schema/1.0/dmn"
SPIFF_NS = "http://spiffworkflow.org/bpmn/schema/1.0/core"


def _b(tag: str) -> str:
    return f"{{{BPMN_NS}}}{tag}"


def _c(tag: str) -> str:
    return f"{{{CAMUNDA_NS}}}{tag}"


def _s(tag: str) -> str:
    return f"{{{SPIFF_NS}}}{tag}"


class Unsupported(Exception):
    """A construct we cannot run faithfully; the message is the reason shown to the analyst."""


# --------------------------------------------------------------------------- expressions
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_$][A-Za-z0-9_$]*)
  | (?P<op>&&|\|\||==|!=|<=|>=|\.\.|[-+*/%<>!=()\[\].,?:{}])
""",
    re.VERBOSE,
)
# JUEL word operators and literals (FEEL shares true/false/null) -> Python
_WORDS = dict(
    pair.split(":")
    for pair in """
    and:and or:or not:not eq:== ne:!= lt:< gt:> le:<= ge:>= div:/ mod:% empty:not true:True false:False
    null:None in:in is:is
    """.split()
)
_SYMBOLS = {"&&": "and", "||": "or", "!": "not", "=": "=="}
CONTEXT_OBJECTS = frozenset(
    """
    execution task authenticatedUserId variableScope processEngine decisionResult externalTask connector
    dateTime currentUser currentUserGroups
    """.split()
)


def _tokens(text: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise Unsupported(f"cannot read {text[pos : pos + 10]!r} in expression {text!r}")
        pos = match.end()
        kind = match.lastgroup or ""
        if kind != "ws":
            found.append((kind, match.group()))
    return found


def expression_to_python(text: str) -> str:
    """A JUEL (`${…}` body) or simple FEEL expression as Python; raises Unsupported."""
    python = _translate(_tokens(text), text)
    try:
        ast.parse(python, mode="eval")
    except SyntaxError:
        raise Unsupported(f"cannot translate expression {text!r} to Python") from None
    return python


def _translate(tokens: list[tuple[str, str]], text: str) -> str:
    question = _top_level(tokens, "?")
    if question is not None:  # JUEL ternary, lowest precedence and right-associative
        colon = _matching_colon(tokens, question)
        if colon is None:
            raise Unsupported(f"'?' without ':' in expression {text!r}")
        cond = _translate(tokens[:question], text)
        then = _translate(tokens[question + 1 : colon], text)
        other = _translate(tokens[colon + 1 :], text)
        return f"(({then}) if ({cond}) else ({other}))"
    out: list[str] = []
    i = 0
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "name":
            if "$" in value:
                raise Unsupported(f"the name {value!r} is not a valid variable name")
            if value in CONTEXT_OBJECTS:
                raise Unsupported(f"Camunda's {value!r} object is not available: use process variables")
            if value == "instanceof":
                raise Unsupported("instanceof is not supported")
            if value in ("lambda", "import", "class", "def", "from", "global"):
                raise Unsupported(f"{value!r} cannot be used as a variable name")
            out.append(_WORDS.get(value, value))
        elif kind == "op" and value == ".":
            prev_ok = i > 0 and (tokens[i - 1][0] in ("name", "str") or tokens[i - 1][1] in (")", "]"))
            if not prev_ok or i + 1 >= len(tokens) or tokens[i + 1][0] != "name":
                raise Unsupported(f"cannot translate '.' in expression {text!r}")
            if i + 2 < len(tokens) and tokens[i + 2][1] == "(":
                raise Unsupported(f"method calls ({tokens[i + 1][1]}()) are not supported in expressions")
            out.append(f'["{tokens[i + 1][1]}"]')
            i += 1
        elif kind == "op" and value in ("{", "}", ".."):
            raise Unsupported(f"{value!r} is not supported in expression {text!r}")
        elif kind == "op":
            out.append(_SYMBOLS.get(value, value))
        else:
            out.append(value)
        i += 1
    return " ".join(out)


def _top_level(tokens: list[tuple[str, str]], symbol: str) -> int | None:
    depth = 0
    for i, (kind, value) in enumerate(tokens):
        if kind != "op":
            continue
        if value in ("(", "["):
            depth += 1
        elif value in (")", "]"):
            depth -= 1
        elif value == symbol and depth == 0:
            return i
    return None


def _matching_colon(tokens: list[tuple[str, str]], question: int) -> int | None:
    depth = nested = 0
    for i in range(question + 1, len(tokens)):
        kind, value = tokens[i]
        if kind != "op":
            continue
        if value in ("(", "["):
            depth += 1
        elif value in (")", "]"):
            depth -= 1
        elif depth == 0 and value == "?":
            nested += 1
        elif depth == 0 and value == ":":
            if nested == 0:
                return i
            nested -= 1
    return None


def _template_parts(text: str) -> list[tuple[bool, str]]:
    """Split text into (is_expression, part) around `${…}` / `#{…}`, respecting quotes."""
    parts: list[tuple[bool, str]] = []
    pos = 0
    while True:
        start = min((p for p in (text.find("${", pos), text.find("#{", pos)) if p >= 0), default=-1)
        if start < 0:
            if pos < len(text):
                parts.append((False, text[pos:]))
            return parts
        if start > pos:
            parts.append((False, text[pos:start]))
        i, depth, quote = start + 2, 1, ""
        while i < len(text):
            ch = text[i]
            if quote:
                if ch == "\\":
                    i += 1
                elif ch == quote:
                    quote = ""
            elif ch in "\"'":
                quote = ch
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        if depth:
            raise Unsupported(f"unclosed '${{' in {text!r}")
        parts.append((True, text[start + 2 : i]))
        pos = i + 1


def template_to_python(text: str) -> str | None:
    """Python for a value holding `${…}`, or None when it holds none."""
    parts = _template_parts(text.strip())
    if not any(is_expr for is_expr, _ in parts):
        return None
    if len(parts) == 1:
        return expression_to_python(parts[0][1])
    pieces = [f"str({expression_to_python(p)})" if is_expr else repr(p) for is_expr, p in parts]
    return " + ".join(pieces)


# --------------------------------------------------------------------------- timers
_ISO_DURATION = r"P(?:\d+(?:[.,]\d+)?[YMWD])*(?:T(?:\d+(?:[.,]\d+)?[HMS])+)?"
_ISO_DATETIME = r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
_ISO_TIMER = re.compile(
    rf"(?:{_ISO_DURATION}|{_ISO_DATETIME}|R\d*/(?:{_ISO_DURATION}|{_ISO_DATETIME})(?:/(?:{_ISO_DURATION}|{_ISO_DATETIME}))?)"
)
_MAX_CALENDAR_UNITS = 1000  # SpiffWorkflow walks years/months one month at a time


def timer_to_python(text: str, kind: str) -> str | None:
    """A timer value as a Python expression, or None to keep it; raises Unsupported."""
    value = text.strip()
    if not value:
        raise Unsupported(f"empty {kind}")
    translated = template_to_python(value)
    if translated is not None:
        return translated
    if _ISO_TIMER.fullmatch(value) and value not in ("P", "PT"):
        for duration in re.findall(r"P[^/]*", value):
            if any(int(n) > _MAX_CALENDAR_UNITS for n in re.findall(r"(\d+)[YM]", duration.split("T")[0])):
                raise Unsupported(f"{kind} {value!r} is too far away")
        return repr(value)
    return None


# --------------------------------------------------------------------------- DMN
@dataclass(frozen=True)
class DecisionInfo:
    """What a BPMN rewrite needs to know about a decision table."""

    id: str
    outputs: tuple[str, ...]
    collect: bool


_HIT_POLICIES_FIRST_MATCH = {"UNIQUE", "FIRST", "ANY"}
_FEEL_RANGE = re.compile(r"^([\[\]\(])\s*(.+?)\s*\.\.\s*(.+?)\s*([\[\]\)])$", re.S)
_FEEL_COMPARISON = re.compile(r"^(<=|>=|<|>|!=|=)\s*(.+)$", re.S)
_FEEL_NOT = re.compile(r"^not\s*\((.*)\)$", re.S)


def _split_top_level_commas(text: str) -> list[str]:
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch == '"':
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def _feel_value(text: str) -> str:
    return expression_to_python(text)


def _feel_test(test: str) -> str:
    range_match = _FEEL_RANGE.match(test)
    if range_match and test[0] in "[](" and test[-1] in "[])":
        opening, low, high, closing = range_match.groups()
        low_op = "<=" if opening == "[" else "<"
        high_op = "<=" if closing == "]" else "<"
        return f"{_feel_value(low)} {low_op} ? {high_op} {_feel_value(high)}"
    comparison = _FEEL_COMPARISON.match(test)
    if comparison:
        op, value = comparison.groups()
        return f"? {'==' if op == '=' else op} {_feel_value(value)}"
    if test == "null":
        return "? is None"
    return f"? == {_feel_value(test)}"


def feel_input_entry_to_python(text: str | None) -> str | None:
    """A FEEL unary-tests cell as SpiffWorkflow's Python (`?` is the input), or None to keep it."""
    value = (text or "").strip()
    if value in ("", "-") or "?" in value:
        return None
    negated = _FEEL_NOT.match(value)
    body = negated.group(1).strip() if negated else value
    tests = _split_top_level_commas(body)
    feelish = (
        negated
        or len(tests) > 1
        or any(
            _FEEL_RANGE.match(t) or t in ("true", "false", "null") or re.match(r"^=[^=]", t) for t in tests
        )
    )
    if not feelish:
        return None
    translated = [_feel_test(t) for t in tests]
    joined = translated[0] if len(translated) == 1 else " or ".join(f"({t})" for t in translated)
    return f"not ({joined})" if negated else joined


def feel_output_to_python(text: str | None) -> str | None:
    value = (text or "").strip()
    if not value or not re.search(r"\b(true|false|null)\b", value):
        return None
    return expression_to_python(value)


def _feel_path(text: str | None) -> str | None:
    """`applicant.age` reads a map entry in FEEL; in Python it must be `applicant["age"]`."""
    value = (text or "").strip()
    if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", value):
        return expression_to_python(value)
    return None


def split_decisions(
    root: etree._Element, filename: str
) -> tuple[list[etree._Element], list[DecisionInfo], list[Problem]]:
    """One DMN tree per `<decision>` (SpiffWorkflow reads one per file), with FEEL cells translated."""
    ns = root.nsmap.get(None) or etree.QName(root).namespace
    trees: list[etree._Element] = []
    infos: list[DecisionInfo] = []
    problems: list[Problem] = []
    decisions = [d for d in root if isinstance(d.tag, str) and etree.QName(d).localname == "decision"]

    def refuse(element: etree._Element, reason: str) -> None:
        problems.append(
            Problem(reason, file=filename, element_id=_owner_id(element), line=element.sourceline)
        )

    for decision in decisions:
        before = len(problems)
        decision_id = decision.get("id") or ""
        for child in decision:
            if not isinstance(child.tag, str):
                continue
            local = etree.QName(child).localname
            if local in ("informationRequirement", "knowledgeRequirement", "authorityRequirement"):
                refuse(
                    child,
                    "decision requirement graphs are not supported: call each decision from its own "
                    "business rule task",
                )
            elif local == "literalExpression":
                refuse(child, "literal-expression decisions are not supported: use a decision table")
        table = next(
            (c for c in decision if isinstance(c.tag, str) and etree.QName(c).localname == "decisionTable"),
            None,
        )
        if table is None:
            if len(problems) == before:
                refuse(decision, "the decision has no decision table")
            continue
        policy = (table.get("hitPolicy") or "UNIQUE").upper()
        if table.get("aggregation"):
            refuse(table, f"the COLLECT aggregation {table.get('aggregation')} is not supported")
        if policy == "RULE ORDER":
            table.set("hitPolicy", "COLLECT")
            policy = "COLLECT"
        elif policy not in _HIT_POLICIES_FIRST_MATCH | {"COLLECT"}:
            refuse(
                table, f"the hit policy {policy} is not supported (UNIQUE, FIRST, ANY, COLLECT, RULE ORDER)"
            )
        _translate_table(table, ns, refuse)
        if len(problems) > before:
            continue
        outputs = tuple(
            o.get("name") or o.get("label") or ""
            for o in table
            if isinstance(o.tag, str) and etree.QName(o).localname == "output"
        )
        infos.append(DecisionInfo(decision_id, outputs, policy == "COLLECT"))
        single = etree.Element(root.tag, attrib=dict(root.attrib), nsmap=root.nsmap)
        single.append(copy.deepcopy(decision))
        trees.append(single)
    if not decisions:
        problems.append(Problem("no decision in this DMN file", file=filename, line=root.sourceline))
    return trees, infos, problems


def _translate_table(table: etree._Element, ns: str | None, refuse: object) -> None:
    text_tag = f"{{{ns}}}text" if ns else "text"
    for element in table.iter():
        if not isinstance(element.tag, str):
            continue
        local = etree.QName(element).localname
        if local not in ("inputEntry", "outputEntry", "inputExpression"):
            continue
        text_el = element.find(text_tag)
        if text_el is None:  # SpiffWorkflow needs the <text> even when the cell is empty
            text_el = etree.SubElement(element, text_tag)
            text_el.text = "-" if local == "inputEntry" else ""
        try:
            if local == "inputEntry":
                new = feel_input_entry_to_python(text_el.text)
            elif local == "outputEntry":
                new = template_to_python(text_el.text or "") or feel_output_to_python(text_el.text)
            else:
                new = (
                    template_to_python(text_el.text or "")
                    or _feel_path(text_el.text)
                    or feel_output_to_python(text_el.text)
                )
        except Unsupported as exc:
            refuse(element, str(exc))  # type: ignore[operator]
            continue
        if new is not None:
            text_el.text = new


# --------------------------------------------------------------------------- BPMN
# camunda:* attributes without an effect on what runs here (scheduling, history, forms, versions).
_IGNORED_ATTRIBUTES = frozenset(
    """
    asyncBefore asyncAfter exclusive jobPriority taskPriority priority followUpDate historyTimeToLive
    versionTag isStartableInTasklist candidateStarterGroups candidateStarterUsers decisionRefBinding
    decisionRefVersion decisionRefVersionTag decisionRefTenantId calledElementBinding calledElementVersion
    calledElementVersionTag calledElementTenantId formKey formRef formRefBinding formRefVersion
    modelerTemplate modelerTemplateVersion variableName variableEvents
    """.split()
)
_EXPRESSION_ATTRIBUTES = ("candidateGroups", "candidateUsers", "assignee", "dueDate")
_HANDLED_ATTRIBUTES = frozenset(
    [
        "decisionRef",
        "mapDecisionResult",
        "resultVariable",
        "type",
        "topic",
        "collection",
        "elementVariable",
        *_EXPRESSION_ATTRIBUTES,
    ]
)
_IGNORED_EXTENSIONS = frozenset(
    {"properties", "formData", "failedJobRetryTimeCycle", "in", "out", "inputOutput"}
)
_JAVA_ATTRIBUTES = ("class", "delegateExpression", "expression")
_PYTHON_FORMATS = frozenset({"", "python", "python3", "py"})
_TIMER_TAGS = ("timeDuration", "timeDate", "timeCycle")
_EXPRESSION_TAGS = ("conditionExpression", "condition", "loopCardinality", "completionCondition")


@dataclass
class _Rewrite:
    filename: str
    decisions: dict[str, DecisionInfo]
    ids: set[str]
    problems: list[Problem] = field(default_factory=list)

    def refuse(self, element: etree._Element, reason: str) -> None:
        self.problems.append(
            Problem(reason, file=self.filename, element_id=_owner_id(element), line=element.sourceline)
        )


def rewrite_bpmn(root: etree._Element, filename: str, decisions: dict[str, DecisionInfo]) -> list[Problem]:
    """Rewrite the Camunda constructs of a BPMN tree in place; returns what cannot be run."""
    job = _Rewrite(
        filename, decisions, {e.get("id") for e in root.iter() if isinstance(e.tag, str) and e.get("id")}
    )
    for element in list(root.iter()):
        if not isinstance(element.tag, str):
            continue
        qname = etree.QName(element)
        if qname.namespace == CAMUNDA_NS:
            _check_extension(job, element)
            continue
        if qname.namespace != BPMN_NS:
            continue
        _check_attributes(job, element)
        local = qname.localname
        try:
            if local == "businessRuleTask":
                _business_rule_task(job, element)
            elif local in ("serviceTask", "sendTask"):
                _service_task(job, element)
            elif local == "scriptTask":
                _script_task(job, element)
            elif local in ("dataStoreReference", "dataStore"):
                job.refuse(element, "data stores are not supported")
            elif local == "multiInstanceLoopCharacteristics":
                _multi_instance(job, element)
            elif local in _TIMER_TAGS:
                new = timer_to_python(element.text or "", local)
                if new is not None:
                    element.text = new
            elif local in _EXPRESSION_TAGS:
                _expression_element(job, element)
            elif local == "userTask":
                _user_task(job, element)
            elif local == "startEvent" and element.get(_c("initiator")):
                job.refuse(
                    element,
                    "camunda:initiator is not supported: the application puts the starter "
                    "into the start data",
                )
        except Unsupported as exc:
            job.refuse(element, str(exc))
    return job.problems


def _check_attributes(job: _Rewrite, element: etree._Element) -> None:
    for name in element.attrib:
        qname = etree.QName(name)
        if qname.namespace != CAMUNDA_NS:
            continue
        local = qname.localname
        if local in _JAVA_ATTRIBUTES:
            job.refuse(
                element,
                f"Java delegates (camunda:{local}) are not supported: use an external "
                f'service task (camunda:type="external") with a topic',
            )
        elif local in ("errorCodeVariable", "errorMessageVariable", "escalationCodeVariable", "initiator"):
            continue  # reported by the element's own rule or below
        elif local not in _IGNORED_ATTRIBUTES and local not in _HANDLED_ATTRIBUTES:
            job.refuse(element, f"camunda:{local} is not supported")
    for local in ("errorCodeVariable", "errorMessageVariable", "escalationCodeVariable"):
        if element.get(_c(local)):
            job.refuse(element, f"camunda:{local} is not supported")


def _check_extension(job: _Rewrite, element: etree._Element) -> None:
    local = etree.QName(element).localname
    parent = element.getparent()
    in_extensions = parent is not None and parent.tag == _b("extensionElements")
    if not in_extensions:
        return  # nested inside an extension we handle or refuse as a whole
    owner = parent.getparent()
    owner_local = etree.QName(owner).localname if owner is not None else ""
    if local in ("executionListener", "taskListener"):
        job.refuse(element, f"camunda:{local} is not supported")
    elif local == "connector":
        job.refuse(element, "Camunda connectors are not supported: use an external service task")
    elif local == "field":
        job.refuse(element, "camunda:field injection (Java delegates) is not supported")
    elif local == "inputOutput":
        external = owner is not None and owner.get(_c("type")) == "external"
        if not external:
            job.refuse(
                element,
                "camunda:inputOutput mappings are only supported as the inputs of an external service task",
            )
        elif any(etree.QName(c).localname == "outputParameter" for c in element if isinstance(c.tag, str)):
            job.refuse(
                element,
                f"camunda:outputParameter is not supported: the service result is stored in "
                f"{owner.get('id')}_result",
            )
    elif local in ("in", "out"):
        if (
            owner_local != "callActivity"
            or element.get("variables") != "all"
            or element.get("local") == "true"
        ):
            job.refuse(
                element,
                f'camunda:{local} mappings are not supported: only variables="all" (call '
                f"activities share all variables)",
            )
    elif local not in _IGNORED_EXTENSIONS:
        job.refuse(element, f"camunda:{local} is not supported")


def _extension_elements(element: etree._Element) -> etree._Element:
    existing = element.find(_b("extensionElements"))
    if existing is not None:
        return existing
    extensions = etree.Element(_b("extensionElements"))
    position = 0
    for i, child in enumerate(element):
        if isinstance(child.tag, str) and child.tag == _b("documentation"):
            position = i + 1
    element.insert(position, extensions)
    return extensions


def _has_spiff(element: etree._Element, local: str) -> bool:
    extensions = element.find(_b("extensionElements"))
    return extensions is not None and extensions.find(_s(local)) is not None


def _business_rule_task(job: _Rewrite, element: etree._Element) -> None:
    ref = element.get(_c("decisionRef"))
    if element.get(_c("type")) is not None:
        raise Unsupported("external business rule tasks are not supported: reference a decision")
    if _has_spiff(element, "calledDecisionId") or ref is None:
        return
    if "${" in ref or "#{" in ref:
        raise Unsupported("a computed camunda:decisionRef is not supported")
    extensions = _extension_elements(element)
    etree.SubElement(extensions, _s("calledDecisionId")).text = ref
    result = element.get(_c("resultVariable"))
    if result:
        _map_decision_result(job, element, extensions, ref, result)


def _map_decision_result(
    job: _Rewrite, element: etree._Element, extensions: etree._Element, ref: str, result: str
) -> None:
    info = job.decisions.get(ref)
    if info is None:
        return  # the parser reports the unknown decision with this element's id
    mapping = element.get(_c("mapDecisionResult"), "resultList")
    outputs = list(info.outputs)
    if not result.isidentifier() or not all(o.isidentifier() for o in outputs):
        raise Unsupported("camunda:resultVariable needs identifier-like variable and output names")
    if mapping in ("singleEntry", "collectEntries") and len(outputs) != 1:
        raise Unsupported(f"mapDecisionResult={mapping} needs a decision with exactly one output")
    values = [f"out_{name}" for name in outputs]
    lines = []
    for name, value in zip(outputs, values, strict=True):  # a decision that matched nothing writes nothing
        lines += [
            "try:",
            f"    {value} = {name}",
            "except NameError:",
            f"    {value} = {'[]' if info.collect else 'None'}",
        ]
    if info.collect:  # every output is the list of the matching rules' values
        firsts = [f"({v}[0] if {v} else None)" for v in values]
        matched = values[0]
    else:
        firsts = values
        matched = " or ".join(f"{v} is not None" for v in values)
    record = "{" + ", ".join(f"{n!r}: {v}" for n, v in zip(outputs, firsts, strict=True)) + "}"
    if mapping == "singleEntry":
        body = f"{result} = {firsts[0]}"
    elif mapping == "singleResult":
        body = f"{result} = {record} if {matched} else None"
    elif mapping == "collectEntries":
        body = (
            f"{result} = list({values[0]})"
            if info.collect
            else f"{result} = [{values[0]}] if {matched} else []"
        )
    elif mapping == "resultList":
        if info.collect:
            names = ", ".join(f"v_{i}" for i in range(len(outputs)))
            row = "{" + ", ".join(f"{n!r}: v_{i}" for i, n in enumerate(outputs)) + "}"
            body = f"{result} = [{row} for ({names},) in zip({', '.join(values)})]"
        else:
            body = f"{result} = [{record}] if {matched} else []"
    else:
        raise Unsupported(f"camunda:mapDecisionResult={mapping} is not supported")
    script = "\n".join([*lines, body, "del " + ", ".join(values)])
    etree.SubElement(extensions, _s("postScript")).text = script


def _service_task(job: _Rewrite, element: etree._Element) -> None:
    kind = element.get(_c("type"))
    if _has_spiff(element, "serviceTaskOperator"):
        return
    if kind is None:
        if (
            not any(element.get(_c(a)) for a in _JAVA_ATTRIBUTES)
            and etree.QName(element).localname == "serviceTask"
        ):
            raise Unsupported(
                'a service task needs camunda:type="external" and a camunda:topic (or a '
                "spiffworkflow:serviceTaskOperator)"
            )
        return
    if kind != "external":
        raise Unsupported(f'camunda:type="{kind}" is not supported: use "external"')
    topic = (element.get(_c("topic")) or "").strip()
    if not topic or "${" in topic:
        raise Unsupported("an external service task needs a fixed camunda:topic")
    extensions = _extension_elements(element)
    operator = etree.SubElement(
        extensions, _s("serviceTaskOperator"), id=topic, resultVariable=f"{element.get('id')}_result"
    )
    parameters = etree.SubElement(operator, _s("parameters"))
    io = extensions.find(_c("inputOutput"))
    for param in io.findall(_c("inputParameter")) if io is not None else []:
        name = param.get("name") or ""
        if not name.isidentifier():
            raise Unsupported(f"input parameter name {name!r} is not an identifier")
        etree.SubElement(parameters, _s("parameter"), id=name, type="any", value=_parameter_value(param))


def _parameter_value(param: etree._Element) -> str:
    children = [c for c in param if isinstance(c.tag, str)]
    if not children:
        return _text_value(param.text or "")
    if len(children) > 1:
        raise Unsupported("an input parameter holds one value")
    return _structured_value(children[0])


def _text_value(text: str) -> str:
    translated = template_to_python(text)
    return translated if translated is not None else repr(text)


def _structured_value(element: etree._Element) -> str:
    local = etree.QName(element).localname
    if local == "list":
        items = [c for c in element if isinstance(c.tag, str)]
        return "[" + ", ".join(_structured_value(c) for c in items) + "]"
    if local == "map":
        entries = [c for c in element if isinstance(c.tag, str)]
        return "{" + ", ".join(f"{(e.get('key') or '')!r}: {_entry_value(e)}" for e in entries) + "}"
    if local == "value":
        return _text_value(element.text or "")
    if local == "script":
        raise Unsupported("script input parameters are not supported: use a ${…} expression")
    raise Unsupported(f"camunda:{local} values are not supported")


def _entry_value(entry: etree._Element) -> str:
    children = [c for c in entry if isinstance(c.tag, str)]
    return _structured_value(children[0]) if children else _text_value(entry.text or "")


def _script_task(job: _Rewrite, element: etree._Element) -> None:
    fmt = (element.get("scriptFormat") or "").strip().lower()
    if fmt not in _PYTHON_FORMATS:
        raise Unsupported(f"{element.get('scriptFormat')} scripts are not supported: scripts are Python")
    if element.get(_c("resource")):
        raise Unsupported("external script resources (camunda:resource) are not supported: inline the script")
    if element.get(_c("resultVariable")):
        raise Unsupported("camunda:resultVariable on a script task is not supported: assign the variable")
    if element.find(_b("script")) is None:
        raise Unsupported("the script task has no script")


def _multi_instance(job: _Rewrite, element: etree._Element) -> None:
    collection = element.get(_c("collection"))
    variable = element.get(_c("elementVariable"))
    if collection is None:
        if variable:
            raise Unsupported("camunda:elementVariable needs camunda:collection")
        return
    if element.find(_b("loopDataInputRef")) is not None:
        raise Unsupported("use either camunda:collection or loopDataInputRef")
    name = collection.strip()
    if name.startswith(("${", "#{")) and name.endswith("}"):
        name = name[2:-1].strip()
    if not name.isidentifier():
        raise Unsupported("camunda:collection must name a list variable, e.g. ${approvers}")
    if element.find(_b("loopCardinality")) is not None:
        raise Unsupported("use either camunda:collection or loopCardinality")
    ref = etree.Element(_b("loopDataInputRef"))
    ref.text = name
    _insert_in_order(element, ref, "loopDataInputRef")
    if variable:
        if not variable.isidentifier():
            raise Unsupported("camunda:elementVariable must be an identifier")
        if variable in job.ids:
            raise Unsupported(
                f"camunda:elementVariable {variable!r} is also an element id: rename one of them"
            )
        job.ids.add(variable)
        _insert_in_order(
            element, etree.Element(_b("inputDataItem"), id=variable, name=variable), "inputDataItem"
        )


_MI_ORDER = (
    "loopCardinality",
    "loopDataInputRef",
    "loopDataOutputRef",
    "inputDataItem",
    "outputDataItem",
    "complexBehaviorDefinition",
    "completionCondition",
)


def _insert_in_order(parent: etree._Element, new: etree._Element, local: str) -> None:
    rank = _MI_ORDER.index(local)
    position = 0
    for i, child in enumerate(parent):
        if not isinstance(child.tag, str):
            continue
        child_local = etree.QName(child).localname
        if child_local in ("documentation", "extensionElements") or (
            child_local in _MI_ORDER and _MI_ORDER.index(child_local) < rank
        ):
            position = i + 1
    parent.insert(position, new)


def _expression_element(job: _Rewrite, element: etree._Element) -> None:
    language = (element.get("language") or "").strip().lower()
    if language and language not in _PYTHON_FORMATS and language not in ("juel", "feel"):
        raise Unsupported(f"{element.get('language')} expressions are not supported")
    if element.get(_c("resource")):
        raise Unsupported("external expression resources (camunda:resource) are not supported")
    new = template_to_python(element.text or "")
    if new is not None:
        element.text = new
        if element.get("language"):
            del element.attrib["language"]


def _user_task(job: _Rewrite, element: etree._Element) -> None:
    for attr in _EXPRESSION_ATTRIBUTES:
        value = element.get(_c(attr))
        if value is None:
            continue
        python = template_to_python(value)
        if python is not None:
            element.set(_c(attr), "${" + python + "}")


def _owner_id(element: etree._Element | None) -> str | None:
    while element is not None:
        if isinstance(element.tag, str) and element.get("id"):
            return element.get("id")
        element = element.getparent()
    return None
