"""Element-level difference between two bundles of `.bpmn`/`.dmn` files, computed from their XML.

What an analyst asks before deploying or migrating: which tasks, events, gateways, sequence
flows, lanes, decisions and decision rules were added, removed or changed, and in which
attributes. Elements are matched by id within their process (BPMN) or decision (DMN); the
diagram interchange (shapes, waypoints) is ignored.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from .deployment import BPMN_NS, CAMUNDA_NS, safe_parse_xml

SPIFF_NS = "http://spiffworkflow.org/bpmn/schema/1.0/core"
PREFIXES = {BPMN_NS: "", CAMUNDA_NS: "camunda:", SPIFF_NS: "spiffworkflow:"}
TASK_TAGS = ("task", "userTask", "manualTask", "serviceTask", "scriptTask", "businessRuleTask", "sendTask",
             "receiveTask", "callActivity", "subProcess", "transaction", "adHocSubProcess")
EVENT_TAGS = ("startEvent", "endEvent", "intermediateCatchEvent", "intermediateThrowEvent", "boundaryEvent")
GATEWAY_TAGS = ("exclusiveGateway", "inclusiveGateway", "parallelGateway", "eventBasedGateway", "complexGateway")
# Plural names, in the order the report lists them.
CATEGORIES = {"file": "files", "process": "processes", "task": "tasks", "event": "events", "gateway": "gateways",
              "flow": "flows", "lane": "lanes", "decision": "decisions", "rule": "rules"}


@dataclass(frozen=True)
class ElementChange:
    """One element added, removed or changed; `fields` maps each changed field to (old, new)."""

    category: str
    change: str
    element_id: str
    container: str | None = None
    type: str | None = None
    file: str | None = None
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.element_id, "type": self.type, "container": self.container,
                               "file": self.file}
        if self.change == "changed":
            out["changes"] = {k: {"old": old, "new": new} for k, (old, new) in self.fields.items()}
        return out


@dataclass(frozen=True)
class BundleDiff:
    changes: tuple[ElementChange, ...]

    @property
    def empty(self) -> bool:
        return not self.changes

    def of(self, category: str, change: str) -> list[str]:
        """Element ids of one category and kind of change, e.g. `of("task", "added")`."""
        return [c.element_id for c in self.changes if c.category == category and c.change == change]

    def as_dict(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        out: dict[str, dict[str, list[dict[str, Any]]]] = {
            plural: {"added": [], "removed": [], "changed": []} for plural in CATEGORIES.values()
        }
        for change in self.changes:
            out[CATEGORIES[change.category]][change.change].append(change.as_dict())
        return out


@dataclass(frozen=True)
class _Element:
    category: str
    container: str | None
    element_id: str
    type: str
    file: str
    fields: dict[str, Any]


def diff_bundles(old: dict[str, bytes], new: dict[str, bytes]) -> BundleDiff:
    """Compare two bundles. Raises DeploymentError when a file is not plain, well-formed XML."""
    changes: list[ElementChange] = []
    for name in sorted(set(old) | set(new)):
        if name not in new:
            changes.append(ElementChange("file", "removed", name, type=_file_type(name), file=name))
        elif name not in old:
            changes.append(ElementChange("file", "added", name, type=_file_type(name), file=name))
        elif old[name] != new[name]:
            digest = {k: hashlib.sha256(v[name]).hexdigest()[:12] for k, v in (("old", old), ("new", new))}
            changes.append(ElementChange("file", "changed", name, type=_file_type(name), file=name,
                                         fields={"sha256": (digest["old"], digest["new"])}))
    before, after = _elements(old), _elements(new)
    for key in sorted(set(before) | set(after), key=lambda k: (list(CATEGORIES).index(k[0]), k[1] or "", k[2])):
        a, b = before.get(key), after.get(key)
        if a is None and b is not None:
            changes.append(ElementChange(b.category, "added", b.element_id, b.container, b.type, b.file))
        elif b is None and a is not None:
            changes.append(ElementChange(a.category, "removed", a.element_id, a.container, a.type, a.file))
        elif a is not None and b is not None:
            fields = {k: (a.fields.get(k), b.fields.get(k)) for k in sorted(set(a.fields) | set(b.fields))
                      if a.fields.get(k) != b.fields.get(k)}
            if a.type != b.type:
                fields = {"type": (a.type, b.type), **fields}
            if fields:
                changes.append(ElementChange(b.category, "changed", b.element_id, b.container, b.type, b.file, fields))
    return BundleDiff(tuple(changes))


def _file_type(name: str) -> str:
    return "dmn" if name.endswith(".dmn") else "bpmn"


def _elements(files: dict[str, bytes]) -> dict[tuple[str, str | None, str], _Element]:
    found: dict[tuple[str, str | None, str], _Element] = {}
    for name, content in sorted(files.items()):
        root = safe_parse_xml(content, name)
        items = _bpmn_elements(name, root) if name.endswith(".bpmn") else _dmn_elements(name, root)
        for element in items:
            found.setdefault((element.category, element.container, element.element_id), element)
    return found


# --------------------------------------------------------------------------- BPMN
def _q(local: str, ns: str = BPMN_NS) -> str:
    return f"{{{ns}}}{local}"


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname


def _attr_name(qualified: str) -> str:
    qname = etree.QName(qualified)
    if qname.namespace is None:
        return qname.localname
    return PREFIXES.get(qname.namespace, f"{{{qname.namespace}}}") + qname.localname


def _attributes(el: etree._Element, skip: tuple[str, ...] = ("id",)) -> dict[str, str]:
    return {_attr_name(k): v for k, v in sorted(el.attrib.items()) if _attr_name(k) not in skip}


def _xml(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    text = etree.tostring(el, method="c14n", exclusive=True, with_comments=False).decode()
    return re.sub(r">\s+<", "><", text).strip()


def _text(el: etree._Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    return el.text.strip() or None


def _bpmn_elements(file: str, root: etree._Element) -> Iterator[_Element]:
    for process in root.iter(_q("process")):
        pid = process.get("id")
        yield _Element("process", None, pid, "process", file, _attributes(process))
        lanes: dict[str, str] = {}
        for lane in process.iter(_q("lane")):
            nodes = sorted(filter(None, (_text(r) for r in lane.findall(_q("flowNodeRef")))))
            for node in nodes:
                lanes[node] = lane.get("name") or lane.get("id")
            yield _Element("lane", pid, lane.get("id"), "lane", file, {"name": lane.get("name"), "nodes": nodes})
        for el in process.iter():
            if not isinstance(el.tag, str) or etree.QName(el).namespace != BPMN_NS or not el.get("id"):
                continue
            tag = _local(el)
            if tag in TASK_TAGS:
                fields: dict[str, Any] = _attributes(el)
                fields["lane"] = lanes.get(el.get("id"))
                fields["documentation"] = _text(el.find(_q("documentation")))
                fields["script"] = _text(el.find(_q("script")))
                fields["extensions"] = _xml(el.find(_q("extensionElements")))
                loop = el.find(_q("multiInstanceLoopCharacteristics"))  # an element with no children is falsy
                fields["loop"] = _xml(loop if loop is not None else el.find(_q("standardLoopCharacteristics")))
                yield _Element("task", pid, el.get("id"), tag, file, fields)
            elif tag in EVENT_TAGS:
                fields = _attributes(el)
                fields["lane"] = lanes.get(el.get("id"))
                definitions = [child for child in el if isinstance(child.tag, str)
                               and _local(child).endswith("EventDefinition")]
                fields["definitions"] = [_xml(d) for d in definitions]
                fields["extensions"] = _xml(el.find(_q("extensionElements")))
                yield _Element("event", pid, el.get("id"), tag, file, fields)
            elif tag in GATEWAY_TAGS:
                fields = _attributes(el)
                fields["lane"] = lanes.get(el.get("id"))
                yield _Element("gateway", pid, el.get("id"), tag, file, fields)
            elif tag == "sequenceFlow":
                fields = _attributes(el)
                fields["condition"] = _text(el.find(_q("conditionExpression")))
                yield _Element("flow", pid, el.get("id"), tag, file, fields)


# --------------------------------------------------------------------------- DMN
def _dmn_elements(file: str, root: etree._Element) -> Iterator[_Element]:
    ns = etree.QName(root).namespace

    def q(local: str) -> str:
        return f"{{{ns}}}{local}"

    for decision in root.iter(q("decision")):
        did = decision.get("id")
        table = decision.find(q("decisionTable"))
        fields: dict[str, Any] = {"name": decision.get("name")}
        if table is not None:
            fields["hitPolicy"] = (table.get("hitPolicy") or "UNIQUE").upper()
            fields["inputs"] = [_text(i.find(f"{q('inputExpression')}/{q('text')}")) for i in table.iterfind(q("input"))]
            fields["outputs"] = [o.get("name") for o in table.iterfind(q("output"))]
        yield _Element("decision", None, did, "decision", file, fields)
        if table is None:
            continue
        for position, rule in enumerate(table.iterfind(q("rule")), start=1):
            yield _Element("rule", did, rule.get("id"), "rule", file, {
                "position": position,
                "description": _text(rule.find(q("description"))),
                "inputs": [_text(e.find(q("text"))) for e in rule.iterfind(q("inputEntry"))],
                "outputs": [_text(e.find(q("text"))) for e in rule.iterfind(q("outputEntry"))],
            })
