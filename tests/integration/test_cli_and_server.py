"""The `milestones` command and a real gunicorn server, as an operator meets them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from click.testing import CliRunner
from sqlalchemy import func, select

from app import create_app
from app.cli import main
from app.config import Settings
from app.models import DeploymentRecord, Milestone
from tests.conftest import REDIS_URL, require_service


@pytest.fixture
def cli_env(app: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"DATABASE_URL": db_url, "MILESTONES_INSTANCE_DIR": str(tmp_path / "instance")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_db_upgrade_users_create_and_the_token_works(app, cli_env):
    runner = CliRunner()
    upgraded = runner.invoke(main, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert "0006" in upgraded.output
    created = runner.invoke(main, ["users", "create", "zed", "--group", "finance", "--group", "auditors"])
    assert created.exit_code == 0, created.output
    token = created.output.strip()
    assert token.startswith("cm_") and len(token) > 40
    client = app.test_client()
    assert client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    again = runner.invoke(main, ["users", "create", "zed"])
    assert again.exit_code == 1 and "already exists" in again.output
    fresh = runner.invoke(main, ["users", "token", "zed"])
    assert fresh.exit_code == 0 and fresh.output.strip() != token


def test_demo_loads_once_and_prints_working_tokens(app, cli_env):
    runner = CliRunner()
    first = runner.invoke(main, ["demo"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(main, ["demo"])
    assert second.exit_code == 0, second.output
    with app.extensions["milestones"].session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Milestone)) == 3
    tokens = dict(line.split("=", 1) for line in
                  (Path(cli_env["MILESTONES_INSTANCE_DIR"]) / "demo-tokens.env").read_text().split())
    assert set(tokens) == {"ALICE_TOKEN", "BOB_TOKEN", "CAROL_TOKEN", "DAVE_TOKEN"}
    client = app.test_client()
    listed = client.get("/api/v1/milestones", headers={"Authorization": f"Bearer {tokens['ALICE_TOKEN']}"})
    assert listed.status_code == 200 and listed.get_json()["total"] == 3


def test_deploy_stores_a_bundle_once_and_rejects_bad_files(app, cli_env, tmp_path):
    runner = CliRunner()
    unchanged = runner.invoke(main, ["deploy"])
    assert unchanged.exit_code == 0 and "unchanged" in unchanged.output
    bad = tmp_path / "broken.bpmn"
    bad.write_bytes(b"<definitions><process id='p'></definitions>")
    refused = runner.invoke(main, ["deploy", str(bad)])
    assert refused.exit_code == 1
    assert "broken.bpmn" in refused.output and "well-formed" in refused.output
    with app.extensions["milestones"].session_factory() as s:
        assert s.scalar(select(func.count()).select_from(DeploymentRecord)) == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_runs_gunicorn_migrates_and_answers(tmp_path):
    port = _free_port()
    env = {**os.environ, "MILESTONES_INSTANCE_DIR": str(tmp_path / "instance")}
    env.pop("DATABASE_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", "1", "--threads", "2", "--demo"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.3)
        assert (tmp_path / "instance" / "milestones.sqlite3").exists()  # the embedded default
        tokens = dict(line.split("=", 1) for line in (tmp_path / "instance" / "demo-tokens.env").read_text().split())
        listed = requests.get(base + "/api/v1/milestones", headers={"Authorization": f"Bearer {tokens['ALICE_TOKEN']}"},
                              timeout=10)
        assert listed.status_code == 200 and listed.json()["total"] == 3
        assert requests.get(base + "/api/v1/milestones", timeout=10).status_code == 401
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert "Booting worker" in output


def test_readyz_checks_the_real_redis_when_configured(db_url, tmp_path):
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        require_service("Redis", exc)
    ready = create_app(Settings.from_env(database_url=db_url, redis_url=REDIS_URL, instance_dir=tmp_path))
    body = ready.test_client().get("/readyz")
    assert body.status_code == 200 and body.get_json()["checks"] == {"database": "ok", "redis": "ok"}
    broken = create_app(Settings.from_env(database_url=db_url, redis_url="redis://127.0.0.1:1/0", instance_dir=tmp_path))
    down = broken.test_client().get("/readyz")
    assert down.status_code == 503 and down.get_json()["checks"]["redis"].startswith("error")
    assert broken.test_client().get("/healthz").status_code == 200
    for flask_app in (ready, broken):
        flask_app.extensions["milestones"].engine.dispose()
