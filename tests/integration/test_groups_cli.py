"""`milestones groups ...`: the operator's way to manage approval groups, against a real database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from app.cli import main
from app.models import AuditEvent, Group


@pytest.fixture
def cli_env(app: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("MILESTONES_INSTANCE_DIR", str(tmp_path / "instance"))


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_groups_are_created_renamed_staffed_and_led_from_the_cli(app, cli_env, make_user):
    for name in ("una", "vic", "wes"):
        make_user(name)
    created = run("groups", "create", "site-managers", "--member", "una", "--member", "vic", "--lead", "una")
    assert created.exit_code == 0, created.output
    assert created.output.strip() == "site-managers  lead=una  members=una,vic"
    added = run("groups", "add-member", "site-managers", "wes")
    assert added.exit_code == 0 and "members=una,vic,wes" in added.output
    renamed = run("groups", "rename", "site-managers", "site-leads")
    assert renamed.exit_code == 0 and "(formerly site-managers)" in renamed.output
    assert "lead=vic" in run("groups", "set-lead", "site-managers", "vic").output  # the former name still works
    removed = run("groups", "remove-member", "site-leads", "vic")
    assert removed.exit_code == 0 and "lead=-  members=una,wes" in removed.output  # the lead left: no lead
    listed = run("groups", "list")
    assert "site-leads  lead=-  members=una,wes  (formerly site-managers)" in listed.output

    refused = run("groups", "set-lead", "site-leads", "nobody")
    assert refused.exit_code == 1 and "there is no user 'nobody'" in refused.output
    assert run("groups", "create", "site-managers").exit_code == 1  # a former name is taken
    assert run("groups", "add-member", "no-such-group", "una").exit_code == 1
    with app.extensions["milestones"].session_factory() as s:
        assert s.scalar(select(Group.name).where(Group.name == "site-leads")) == "site-leads"
        actions = [a for a in s.scalars(select(AuditEvent.action).where(AuditEvent.entity_type == "group"))]
        assert actions.count("group.renamed") == 1 and actions.count("membership.removed") == 1
