"""Process definitions through the API and the CLI: validate, deploy, versions, diff, incidents, migration.

Every test runs on SQLite and PostgreSQL. Variants of the repository's own bundle stand in for an
analyst's edits: a deployment is always the complete bundle.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from app.cli import main
from app.models import AuditEvent, DeploymentRecord, FundRelease, HumanTaskRow, Incident, WorkflowInstance
from app.services import identity
from app.services.deployments import ANALYSTS
from app.uow import UnitOfWork
from tests.conftest import Api
from workflows.deployment import MAX_FILE_BYTES

ROOT = Path(__file__).resolve().parents[2]
APPROVAL = "milestone_approval.bpmn"
PROBLEM = "application/problem+json"

# A script step after "Mark approved" that needs a variable nobody sets: every approval fails there.
CHECK_LIMIT = (
    (b'<bpmn:sequenceFlow id="flow_mark_approved_to_is_financial" sourceRef="mark_approved" targetRef="is_financial" />',
     (b'<bpmn:sequenceFlow id="flow_mark_approved_to_is_financial" sourceRef="mark_approved" targetRef="check_limit" />'
      b'<bpmn:sequenceFlow id="flow_check_limit" sourceRef="check_limit" targetRef="is_financial" />')),
    (b'<bpmn:exclusiveGateway id="is_financial"',
     (b'<bpmn:scriptTask id="check_limit" name="Check approval limit"><bpmn:script>within_limit = amount &lt;= '
      b'approval_limit</bpmn:script></bpmn:scriptTask>\n<bpmn:exclusiveGateway id="is_financial"')),
)
CHECK_LIMIT_FIXED = (*CHECK_LIMIT, (b"within_limit = amount &lt;= approval_limit", b"within_limit = True"))
# A service step whose operation the application does not have.
UNKNOWN_OPERATION = (
    CHECK_LIMIT[0],
    (b'<bpmn:exclusiveGateway id="is_financial"',
     (b'<bpmn:serviceTask id="check_limit" name="Notify the finance desk"><bpmn:extensionElements>'
      b'<spiffworkflow:serviceTaskOperator id="notify_finance_desk" resultVariable="notified">'
      b'<spiffworkflow:parameters /></spiffworkflow:serviceTaskOperator>'
      b'</bpmn:extensionElements></bpmn:serviceTask>\n<bpmn:exclusiveGateway id="is_financial"')),
)
RENAMED_REVIEW = ((b'name="Review milestone"', b'name="Review the milestone"'),)
# The "every level approved" condition, made an assignment: it no longer compiles.
ALL_APPROVED = b'level_result["outcome"] == "approved" and level_result["next_level"] is None'
ALL_APPROVED_BROKEN = (ALL_APPROVED, ALL_APPROVED.replace(b'"outcome"] ==', b'"outcome"] ='))


def repo_bundle() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for d in ("bpmn", "dmn") for p in sorted((ROOT / d).glob("*"))
            if p.suffix in (".bpmn", ".dmn")}


def bundle(*replacements: tuple[bytes, bytes]) -> dict[str, bytes]:
    files = repo_bundle()
    for old, new in replacements:
        assert old in files[APPROVAL], old
        files[APPROVAL] = files[APPROVAL].replace(old, new)
    return files


def upload(api: Api, path: str, files: dict[str, bytes]) -> Any:
    # Encoded in memory: the test client would spool a large body to a temporary file it never closes.
    fields = MultiDict([("files", FileStorage(io.BytesIO(content), filename=name)) for name, content in files.items()])
    boundary, body = encode_multipart(fields)
    return api.client.post("/api/v1" + path, data=body, headers={"Authorization": f"Bearer {api.token}"},
                           content_type=f"multipart/form-data; boundary={boundary}")


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    assert response.content_type == PROBLEM
    return response.get_json()


def counts(app: Any) -> tuple[int, int, int]:
    with app.extensions["milestones"].session_factory() as s:
        return (s.scalar(select(func.count()).select_from(DeploymentRecord)),
                s.scalar(select(func.count()).select_from(WorkflowInstance)),
                s.scalar(select(func.count()).select_from(Incident)))


def approval_row(app: Any, milestone_id: int) -> WorkflowInstance:
    with app.extensions["milestones"].session_factory() as s:
        row = s.scalar(select(WorkflowInstance).where(WorkflowInstance.milestone_id == milestone_id,
                                                      WorkflowInstance.process_id == "milestone_approval")
                       .order_by(WorkflowInstance.round.desc()))
        assert row is not None
        s.expunge(row)
        return row


def version_hash(app: Any, version: int) -> str:
    with app.extensions["milestones"].session_factory() as s:
        return s.scalar(select(DeploymentRecord.hash).where(DeploymentRecord.version == version))


def actions(app: Any) -> list[str]:
    with app.extensions["milestones"].session_factory() as s:
        return list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


@pytest.fixture
def analyst(make_user: Any) -> Api:
    return make_user("ana", ANALYSTS)


def submit_for_review(people: dict[str, Api], new_milestone: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A financial milestone (below 10 000: one finance approval) holding one 5 000 invoice, submitted by
    alice; returns it and its review seat (bob's inbox)."""
    milestone = new_milestone(amount="5000.00")
    linked = people["alice"].post(f"/contracts/{milestone['contract_id']}/transactions", {
        "kind": "invoice", "amount": "5000.00", "currency": "EUR", "occurred_on": "2026-11-30",
        "milestone_id": milestone["id"]})  # the money its approval releases
    assert linked.status_code == 201, linked.get_json()
    submitted = people["alice"].post(f"/milestones/{milestone['id']}/submission")
    assert submitted.status_code == 201, submitted.get_json()
    [task] = submitted.get_json()["open_tasks"]
    # one seat of the single finance level; its electorate is the group's members (bob), as users
    assert (task["level"], task["seat"], task["group"]) == (1, 1, "finance")
    assert task["candidate_users"] == ["bob"] and task["candidate_groups"] == []
    return milestone, task


# --------------------------------------------------------------------------- deploy, validate
def test_only_admins_and_analysts_deploy_and_a_refusal_stores_nothing(app, people, analyst):
    before = counts(app)
    body = problem(upload(people["bob"], "/deployments", bundle(*RENAMED_REVIEW)), 403)
    assert "analysts" in body["detail"]
    problem(upload(people["eve"], "/deployments/validation", bundle(*RENAMED_REVIEW)), 403)
    assert counts(app) == before

    with UnitOfWork(app.extensions["milestones"].session_factory) as uow:
        root = identity.create_user(uow, "root", [], is_admin=True)
        admin = Api(app.test_client(), identity.issue_token(uow, root), "root")
        uow.commit()
    same = upload(admin, "/deployments", repo_bundle())
    assert same.status_code == 200 and same.get_json()["created"] is False and same.get_json()["version"] == 1

    created = upload(analyst, "/deployments", bundle(*RENAMED_REVIEW))
    assert created.status_code == 201, created.get_json()
    v2 = created.get_json()
    assert v2["version"] == 2 and v2["created"] is True and v2["created_by"] == "ana"
    assert created.headers["Location"].endswith("/api/v1/deployments/2")
    assert set(v2["processes"]) >= {"milestone_approval"}
    assert {f["name"] for f in v2["files"]} == set(repo_bundle())

    broken = bundle(ALL_APPROVED_BROKEN,
                    (b'camunda:candidateUsers="${rework_to}"', b'camunda:candidateUsers="${rework_to +}"'))
    body = problem(upload(analyst, "/deployments", broken), 422)
    located = {(p["file"], p["element_id"]) for p in body["problems"]}
    assert {(APPROVAL, "flow_all_levels_approved"), (APPROVAL, "rework_milestone")} <= located
    assert all(p["line"] for p in body["problems"])
    assert APPROVAL in body["errors"]
    partial = {APPROVAL: repo_bundle()[APPROVAL]}  # a bundle must be complete: the routing DMN is missing
    body = problem(upload(analyst, "/deployments", partial), 422)
    assert any("approval_routing" in p["message"] for p in body["problems"])
    assert counts(app)[0] == 2
    assert actions(app).count("deployment.created") == 2


HOSTILE = [
    pytest.param('<!DOCTYPE bpmn:definitions [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>', 422, id="xxe"),
    pytest.param('<!DOCTYPE bpmn:definitions [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
                 '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>', 422,
                 id="billion-laughs"),
    pytest.param('<!DOCTYPE bpmn:definitions SYSTEM "http://127.0.0.1:9/evil.dtd">', 422, id="external-dtd"),
    pytest.param('<!DOCTYPE bpmn:definitions [<!ENTITY % remote SYSTEM "http://127.0.0.1:9/p.dtd"> %remote;]>', 422,
                 id="parameter-entities"),
    pytest.param(None, 413, id="oversize"),
]


def hostile_bundle(prolog: str | None) -> dict[str, bytes]:
    files = repo_bundle()
    content = files[APPROVAL]
    if prolog is None:
        content = content.replace(b"<bpmn:definitions", b"<!--" + b"x" * MAX_FILE_BYTES + b"-->\n<bpmn:definitions", 1)
    else:
        first, rest = content.split(b"\n", 1)
        content = first + b"\n" + prolog.encode() + b"\n" + rest
    files[APPROVAL] = content
    return files


def test_hostile_uploads_are_refused_before_spiffworkflow_and_nothing_is_stored(app, analyst, monkeypatch):
    from workflows import Deployment

    parsed: list[object] = []
    real = Deployment.from_files.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(Deployment, "from_files", classmethod(lambda cls, files: parsed.append(files) or
                                                              real(cls, files)))
    before = counts(app)
    for prolog, status in [p.values for p in HOSTILE]:
        body = problem(upload(analyst, "/deployments", hostile_bundle(prolog)), status)
        named = body.get("file") or next(p["file"] for p in body["problems"])
        assert named == APPROVAL, body

        checked = upload(analyst, "/deployments/validation", hostile_bundle(prolog))
        if status == 413:
            problem(checked, 413)
        else:
            assert checked.status_code == 200 and checked.get_json()["valid"] is False
            assert [p["file"] for p in checked.get_json()["problems"]] == [APPROVAL], prolog
        assert parsed == [], prolog  # SpiffWorkflow's parser never saw the bundle
    assert counts(app) == before


def test_validation_reports_every_problem_and_never_stores(app, analyst):
    before = counts(app)
    good = upload(analyst, "/deployments/validation", bundle(*RENAMED_REVIEW))
    assert good.status_code == 200 and good.get_json() == {"valid": True, "problems": []}
    lane_routed = bundle((b' camunda:candidateGroups="${level_plan[\'group\']}"', b""))
    body = upload(analyst, "/deployments/validation", lane_routed).get_json()
    assert body["valid"] is False
    # without candidates the review goes to its lane, "Approvers", which is no group of this database
    assert [(p["element_id"], p["file"]) for p in body["problems"]] == [("lane_approvers", APPROVAL)]
    assert "not a known group" in body["problems"][0]["message"]
    assert counts(app) == before


# --------------------------------------------------------------------------- versions
def test_versions_are_listed_shown_downloaded_and_diffed(app, people, analyst):
    assert upload(analyst, "/deployments", bundle(*RENAMED_REVIEW)).status_code == 201
    alice = people["alice"]
    listed = alice.get("/deployments").get_json()
    assert [d["version"] for d in listed["items"]] == [2, 1] and listed["total"] == 2
    shown = alice.get("/deployments/2").get_json()
    assert shown["hash"] == version_hash(app, 2) and shown["processes"] == listed["items"][0]["processes"]
    problem(alice.get("/deployments/9"), 404)

    download = alice.get(f"/deployments/1/files/{APPROVAL}")
    assert download.status_code == 200 and download.data == repo_bundle()[APPROVAL]
    assert download.mimetype == "application/xml"
    assert download.headers["Content-Disposition"] == f'attachment; filename="{APPROVAL}"'
    problem(alice.get("/deployments/1/files/nope.bpmn"), 404)

    diff = alice.get("/deployments/1/diff/2").get_json()
    assert diff["identical"] is False
    assert [t["id"] for t in diff["tasks"]["changed"]] == ["review_milestone"]
    assert diff["tasks"]["changed"][0]["changes"]["name"] == {"old": "Review milestone", "new": "Review the milestone"}
    assert diff["tasks"]["added"] == diff["tasks"]["removed"] == diff["rules"]["changed"] == []
    assert alice.get("/deployments/2/diff/2").get_json()["identical"] is True


def test_running_instances_stay_on_their_version_while_new_ones_use_the_latest(app, people, new_milestone,
                                                                               analyst):
    first, first_task = submit_for_review(people, new_milestone)
    assert first_task["name"] == "Review milestone"
    assert upload(analyst, "/deployments", bundle(*RENAMED_REVIEW, *CHECK_LIMIT_FIXED)).status_code == 201

    second, second_task = submit_for_review(people, new_milestone)
    assert second_task["name"] == "Review the milestone"
    assert approval_row(app, first["id"]).deployment_hash == version_hash(app, 1)
    assert approval_row(app, second["id"]).deployment_hash == version_hash(app, 2)

    bob = people["bob"]
    for task in (first_task, second_task):
        done = bob.post(f"/tasks/{task['id']}/completion", {"decision": "approve"})
        assert done.status_code == 200, done.get_json()
    for milestone in (first, second):
        assert people["alice"].get(f"/milestones/{milestone['id']}").get_json()["status"] == "completed"
    rows = [approval_row(app, m["id"]) for m in (first, second)]
    assert [r.status for r in rows] == ["completed", "completed"]
    assert [r.deployment_hash for r in rows] == [version_hash(app, 1), version_hash(app, 2)]


# --------------------------------------------------------------------------- incidents
def test_a_failing_script_opens_an_incident_and_a_retry_with_corrected_data_completes(app, people, new_milestone,
                                                                                       analyst):
    assert upload(analyst, "/deployments", bundle(*CHECK_LIMIT)).status_code == 201
    milestone, task = submit_for_review(people, new_milestone)
    bob = people["bob"]
    before = counts(app)

    body = problem(bob.post(f"/tasks/{task['id']}/completion", {"decision": "approve", "comment": "ok"}), 409)
    assert body["title"] == "Workflow incident"
    assert body["element_id"] == "check_limit" and body["file"] == APPROVAL
    incident_id = body["incident_id"]
    assert "approval_limit" in body["detail"]
    # the completion itself was rolled back: the task is still open, no status changed, no money moved
    assert bob.get(f"/tasks/{task['id']}").get_json()["status"] == "open"
    assert people["alice"].get(f"/milestones/{milestone['id']}").get_json()["status"] == "submitted"
    assert approval_row(app, milestone["id"]).status == "incident"
    assert counts(app) == (before[0], before[1], before[2] + 1)

    again = problem(bob.post(f"/tasks/{task['id']}/completion", {"decision": "approve"}), 409)
    assert again["incident_id"] == incident_id

    problem(bob.get("/incidents"), 403)
    problem(bob.get(f"/incidents/{incident_id}"), 403)
    listed = analyst.get("/incidents").get_json()
    assert [i["id"] for i in listed["items"]] == [incident_id]
    shown = analyst.get(f"/incidents/{incident_id}").get_json()
    assert shown["status"] == "open" and shown["element_id"] == "check_limit" and shown["file"] == APPROVAL
    assert shown["instance_id"] == approval_row(app, milestone["id"]).id and shown["milestone_id"] == milestone["id"]
    assert shown["data"]["amount"] == "5000.00" and shown["data"]["decision"] == "approve"
    assert "NameError" in shown["error"] or "approval_limit" in shown["error"]
    assert shown["command"]["kind"] == "complete_task"

    problem(analyst.post(f"/incidents/{incident_id}/retry", {"data": {"_route": "x"}}), 422)
    failed_again = problem(analyst.post(f"/incidents/{incident_id}/retry", {}), 409)
    assert failed_again["incident_id"] == incident_id
    assert analyst.get(f"/incidents/{incident_id}").get_json()["attempts"] == 2

    retried = analyst.post(f"/incidents/{incident_id}/retry", {"data": {"approval_limit": 1000000}})
    assert retried.status_code == 200, retried.get_json()
    assert retried.get_json()["status"] == "resolved" and retried.get_json()["resolved_at"]
    detail = people["alice"].get(f"/milestones/{milestone['id']}").get_json()
    assert detail["status"] == "completed" and detail["release"]["amount"] == "5000.00"
    assert [d["decision"] for d in detail["decisions"]] == ["approve"]
    with app.extensions["milestones"].session_factory() as s:
        completed = s.get(HumanTaskRow, task["id"])
        assert completed.status == "completed" and completed.completed_by.username == "bob"
    assert approval_row(app, milestone["id"]).status == "completed"
    trail = actions(app)
    assert trail.count("incident.opened") == 1 and trail.count("incident.failed_again") == 1
    assert trail.index("incident.retried") < trail.index("funds.released")
    problem(analyst.post(f"/incidents/{incident_id}/retry", {}), 409)  # resolved: nothing to retry
    assert analyst.get("/incidents").get_json()["items"] == []
    assert [i["id"] for i in analyst.get("/incidents?status=any").get_json()["items"]] == [incident_id]


def test_an_unknown_service_operation_is_fixed_by_a_new_version_and_a_migrating_retry(app, people, new_milestone,
                                                                                      analyst):
    assert upload(analyst, "/deployments", bundle(*UNKNOWN_OPERATION)).status_code == 201
    milestone, task = submit_for_review(people, new_milestone)
    body = problem(people["bob"].post(f"/tasks/{task['id']}/completion", {"decision": "approve"}), 409)
    assert body["element_id"] == "check_limit"
    shown = analyst.get(f"/incidents/{body['incident_id']}").get_json()
    assert "notify_finance_desk" in shown["error"]

    assert upload(analyst, "/deployments", bundle(*CHECK_LIMIT_FIXED)).status_code == 201
    retried = analyst.post(f"/incidents/{body['incident_id']}/retry", {"migrate": True})
    assert retried.status_code == 200, retried.get_json()
    row = approval_row(app, milestone["id"])
    assert row.status == "completed" and row.deployment_hash == version_hash(app, 3)
    assert people["alice"].get(f"/milestones/{milestone['id']}").get_json()["status"] == "completed"
    with app.extensions["milestones"].session_factory() as s:
        assert s.scalar(select(func.count()).select_from(FundRelease)) == 1
        migrated = s.scalar(select(AuditEvent).where(AuditEvent.action == "workflow.migrated"))
        assert migrated.after["version"] == 3 and migrated.before["version"] == 2


def test_a_timer_that_leads_into_a_failing_step_opens_an_incident_for_the_worker(app, people, new_milestone,
                                                                                 analyst):
    from app.services.timers import fire_due_timers

    cool_off = (
        (CHECK_LIMIT[0][0], CHECK_LIMIT[0][1].replace(b'targetRef="check_limit"', b'targetRef="cool_off"')
         + b'<bpmn:sequenceFlow id="flow_cool_off" sourceRef="cool_off" targetRef="check_limit" />'),
        (CHECK_LIMIT[1][0], b'<bpmn:intermediateCatchEvent id="cool_off"><bpmn:timerEventDefinition id="cool_off_timer">'
                            b'<bpmn:timeDuration>"PT1S"</bpmn:timeDuration></bpmn:timerEventDefinition>'
                            b'</bpmn:intermediateCatchEvent>' + CHECK_LIMIT[1][1]),
    )
    assert upload(analyst, "/deployments", bundle(*cool_off)).status_code == 201
    milestone, task = submit_for_review(people, new_milestone)
    done = people["bob"].post(f"/tasks/{task['id']}/completion", {"decision": "approve"})
    assert done.status_code == 200, done.get_json()  # the review is kept: the timer waits in between
    instance_id = approval_row(app, milestone["id"]).id
    time.sleep(1.1)

    state = app.extensions["milestones"]
    run = fire_due_timers(state.session_factory, state.deployments)
    assert run.failed == [instance_id] and run.fired == []
    [incident] = analyst.get("/incidents").get_json()["items"]
    assert incident["command"] == {"kind": "fire_timers"} and incident["element_id"] == "check_limit"
    assert approval_row(app, milestone["id"]).status == "incident"
    assert fire_due_timers(state.session_factory, state.deployments).failed == []  # held, not retried by the beat

    retried = analyst.post(f"/incidents/{incident['id']}/retry", {"data": {"approval_limit": 10000}})
    assert retried.status_code == 200, retried.get_json()
    assert people["alice"].get(f"/milestones/{milestone['id']}").get_json()["status"] == "completed"


# --------------------------------------------------------------------------- migration
def test_migration_dry_run_reports_refuses_impossible_moves_and_then_moves(app, people, new_milestone, analyst):
    milestone, task = submit_for_review(people, new_milestone)
    instance_id = approval_row(app, milestone["id"]).id
    assert upload(analyst, "/deployments", bundle(*RENAMED_REVIEW, *CHECK_LIMIT_FIXED)).status_code == 201
    no_review = bundle(
        (b'sourceRef="open_level" targetRef="review_milestone"', b'sourceRef="open_level" targetRef="close_level"'),
        (b'<bpmn:sequenceFlow id="flow_review_to_close" sourceRef="review_milestone" targetRef="close_level" />',
         b""),
        (b'<bpmn:userTask id="review_milestone"', b'<bpmn:task id="review_gone"'),
        (b"</bpmn:userTask>\n\n    <!-- Non-interrupting", b"</bpmn:task>\n\n    <!-- Non-interrupting"),
        (b'attachedToRef="review_milestone"', b'attachedToRef="review_gone"'),
        (b"<bpmn:flowNodeRef>review_milestone</bpmn:flowNodeRef>", b""),
        (b'bpmnElement="review_milestone"', b'bpmnElement="review_gone"'),
    )
    assert upload(analyst, "/deployments", no_review).status_code == 201
    problem(people["bob"].post("/instances/migration", {"instance_ids": [instance_id], "to_version": 2}), 403)

    dry = analyst.post("/instances/migration", {"instance_ids": [instance_id, 999999], "to_version": 2})
    assert dry.status_code == 200, dry.get_json()
    report = {r["instance_id"]: r for r in dry.get_json()["instances"]}
    assert dry.get_json()["dry_run"] is True
    assert report[instance_id]["possible"] is True and report[instance_id]["from_version"] == 1
    assert report[instance_id]["elements"]["added"] == ["check_limit"]
    assert "review_milestone" in report[instance_id]["elements"]["changed"]
    assert report[999999]["possible"] is False and report[999999]["reasons"] == ["no workflow instance 999999"]
    impossible = analyst.post("/instances/migration", {"instance_ids": [instance_id], "to_version": 3}).get_json()
    [refused] = impossible["instances"]
    assert refused["possible"] is False and any("review_milestone is READY" in r for r in refused["reasons"])
    assert approval_row(app, milestone["id"]).deployment_hash == version_hash(app, 1)  # dry runs change nothing

    body = problem(analyst.post("/instances/migration", {"instance_ids": [instance_id], "to_version": 3,
                                                         "dry_run": False}), 409)
    assert body["instances"][0]["possible"] is False
    assert approval_row(app, milestone["id"]).deployment_hash == version_hash(app, 1)

    moved = analyst.post("/instances/migration", {"instance_ids": [instance_id], "to_version": 2, "dry_run": False})
    assert moved.status_code == 200, moved.get_json()
    row = approval_row(app, milestone["id"])
    assert row.deployment_hash == version_hash(app, 2)
    assert people["bob"].get(f"/tasks/{task['id']}").get_json()["name"] == "Review the milestone"  # re-projected
    assert "workflow.migrated" in actions(app)
    done = people["bob"].post(f"/tasks/{task['id']}/completion", {"decision": "approve"})
    assert done.status_code == 200, done.get_json()
    assert people["alice"].get(f"/milestones/{milestone['id']}").get_json()["status"] == "completed"


# --------------------------------------------------------------------------- the command line
@pytest.fixture
def cli_env(app: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("MILESTONES_INSTANCE_DIR", str(tmp_path / "instance"))
    return tmp_path


def write_bundle(directory: Path, files: dict[str, bytes]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return [str(directory / name) for name in files]


def test_cli_validates_deploys_and_migrates_with_the_same_problem_lines(app, people, new_milestone, cli_env):
    runner = CliRunner()
    broken = write_bundle(cli_env / "broken", bundle(ALL_APPROVED_BROKEN))
    checked = runner.invoke(main, ["validate", *broken])
    assert checked.exit_code == 1
    [line] = [ln for ln in checked.output.splitlines() if ln.strip()]
    assert line.startswith(f"{APPROVAL}:") and "[flow_all_levels_approved] conditionExpression does not compile" in line

    for prolog, _status in [p.values for p in HOSTILE]:
        hostile = write_bundle(cli_env / "hostile", hostile_bundle(prolog))
        for command in ("validate", "deploy"):
            refused = runner.invoke(main, [command, *hostile])
            assert refused.exit_code == 1 and APPROVAL in refused.output, (command, refused.output)
    refused = runner.invoke(main, ["deploy", *broken])
    assert refused.exit_code == 1 and line in refused.output
    assert counts(app)[0] == 1

    milestone, _task = submit_for_review(people, new_milestone)
    instance_id = approval_row(app, milestone["id"]).id
    good = write_bundle(cli_env / "good", bundle(*RENAMED_REVIEW))
    assert runner.invoke(main, ["validate", *good]).exit_code == 0
    deployed = runner.invoke(main, ["deploy", *good])
    assert deployed.exit_code == 0 and "deployment v2" in deployed.output and "(new)" in deployed.output
    dry = runner.invoke(main, ["migrate", "--to", "2", "--dry-run", str(instance_id)])
    assert dry.exit_code == 0, dry.output
    assert f"instance {instance_id}: v1 -> v2 possible" in dry.output and "review_milestone" in dry.output
    assert approval_row(app, milestone["id"]).deployment_hash == version_hash(app, 1)
    moved = runner.invoke(main, ["migrate", "--to", "2", str(instance_id)])
    assert moved.exit_code == 0, moved.output
    assert approval_row(app, milestone["id"]).deployment_hash == version_hash(app, 2)
