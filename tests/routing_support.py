"""Helpers for the approval-routing tests: a routing table written as rows, deployed through the API."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from tests.conftest import Api

ROOT = Path(__file__).resolve().parents[1]
PROBLEM = "application/problem+json"


def repo_bundle() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for d in ("bpmn", "dmn") for p in sorted((ROOT / d).glob("*"))
            if p.suffix in (".bpmn", ".dmn")}


def routing_table(rules: list[dict[str, Any]], hit_policy: str = "COLLECT") -> bytes:
    """A DMN approval_routing table: each rule {type, amount, level, group, quorum, on_decline}
    (type/amount are input entries, "-" by default; quorum and on_decline are Python literals)."""
    rows = []
    for i, r in enumerate(rules):
        rows.append(f"""
      <rule id="rule_{i}">
        <inputEntry id="rule_{i}_type"><text>{escape(r.get("type", "-"))}</text></inputEntry>
        <inputEntry id="rule_{i}_amount"><text>{escape(r.get("amount", "-"))}</text></inputEntry>
        <outputEntry id="rule_{i}_level"><text>{r["level"]}</text></outputEntry>
        <outputEntry id="rule_{i}_group"><text>"{r["group"]}"</text></outputEntry>
        <outputEntry id="rule_{i}_quorum"><text>{escape(repr(r.get("quorum", "any")).replace("'", '"'))}</text></outputEntry>
        <outputEntry id="rule_{i}_on_decline"><text>"{r.get("on_decline", "first")}"</text></outputEntry>
      </rule>""")
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="https://www.omg.org/spec/DMN/20191111/MODEL/" id="approval_routing_definitions"
             name="Approval routing" namespace="http://example.com/milestones">
  <decision id="approval_routing" name="Approval routing">
    <decisionTable id="approval_routing_table" hitPolicy="{hit_policy}">
      <input id="input_type" label="Milestone type">
        <inputExpression id="input_expression_type" typeRef="string"><text>milestone_type</text></inputExpression>
      </input>
      <input id="input_amount" label="Amount">
        <inputExpression id="input_expression_amount" typeRef="number"><text>amount</text></inputExpression>
      </input>
      <output id="output_level" label="Level" name="level" typeRef="number" />
      <output id="output_group" label="Approval group" name="approval_group" typeRef="string" />
      <output id="output_quorum" label="Quorum" name="quorum" typeRef="string" />
      <output id="output_on_decline" label="On decline" name="on_decline" typeRef="string" />{"".join(rows)}
    </decisionTable>
  </decision>
</definitions>
""".encode()


def upload(api: Api, path: str, files: dict[str, bytes]) -> Any:
    fields = MultiDict([("files", FileStorage(io.BytesIO(content), filename=name)) for name, content in files.items()])
    boundary, body = encode_multipart(fields)
    return api.client.post("/api/v1" + path, data=body, headers={"Authorization": f"Bearer {api.token}"},
                           content_type=f"multipart/form-data; boundary={boundary}")


def deploy_routing(analyst: Api, rules: list[dict[str, Any]]) -> dict[str, Any]:
    """Deploy the repository's bundle with this routing table instead of dmn/approval_routing.dmn."""
    files = repo_bundle()
    files["approval_routing.dmn"] = routing_table(rules)
    response = upload(analyst, "/deployments", files)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_json())
    return response.get_json()


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.get_json())
    assert response.content_type == PROBLEM
    return response.get_json()


def inbox(api: Api, milestone_id: int | None = None) -> list[dict[str, Any]]:
    query = f"?milestone_id={milestone_id}" if milestone_id is not None else ""
    return ok(api.get("/tasks" + query))["items"]


def seat_of(api: Api, milestone_id: int) -> dict[str, Any]:
    """The one seat of the milestone in this approver's inbox."""
    items = [t for t in inbox(api, milestone_id) if t["level"] is not None]
    assert len(items) == 1, (api.username, items)
    return items[0]


def decide(api: Api, task_id: str, decision: str = "approve", comment: str | None = None) -> Any:
    body: dict[str, Any] = {"decision": decision}
    if comment is not None:
        body["comment"] = comment
    return api.post(f"/tasks/{task_id}/completion", body)
