"""Helpers for the timer and notification tests: policy variants, a real webhook receiver and a real
SMTP server (aiosmtpd), both on 127.0.0.1 with ports chosen by the OS."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from app.channels import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from app.models import OutboxMessage
from app.services.deployments import deploy_files
from app.uow import UnitOfWork

ROOT = Path(__file__).resolve().parents[1]
POLICY = "reminder_policy.dmn"


def repo_bundle() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for d in ("bpmn", "dmn") for p in sorted((ROOT / d).glob("*"))
            if p.suffix in (".bpmn", ".dmn")}


def policy_bundle(**outputs: str | int) -> dict[str, bytes]:
    """The repository's bundle with every rule of the reminder policy giving these outputs
    (strings are written as quoted literals, as an analyst would type them)."""
    files = repo_bundle()
    text = files[POLICY].decode()
    for name, value in outputs.items():
        literal = f'"{value}"' if isinstance(value, str) else str(value)
        text, count = re.subn(rf'(<outputEntry id="rule_[a-z_]+?_{name}"><text>)[^<]*(</text>)',
                              lambda m, v=literal: m.group(1) + v.replace("&", "&amp;") + m.group(2), text)
        assert count == 5, (name, count)
    files[POLICY] = text.encode()
    return files


def deploy(app: Any, files: dict[str, bytes]) -> int:
    state = app.extensions["milestones"]
    with UnitOfWork(state.session_factory) as uow:
        view, _created = deploy_files(uow, state.deployments, None, files)
    return view.version


def outbox(app: Any, event: str | None = None) -> list[OutboxMessage]:
    with app.extensions["milestones"].session_factory() as s:
        stmt = select(OutboxMessage).order_by(OutboxMessage.id)
        if event:
            stmt = stmt.where(OutboxMessage.event == event)
        rows = list(s.scalars(stmt))
        for row in rows:
            s.expunge(row)
        return rows


def count(app: Any, model: Any, *where: Any) -> int:
    with app.extensions["milestones"].session_factory() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- webhook receiver
@dataclass
class Received:
    key: str
    event: str
    body: dict[str, Any]
    headers: dict[str, str]
    signature_ok: bool | None


@dataclass
class WebhookReceiver:
    """A real HTTP server that checks signatures and applies each idempotency key once.

    `fail_first`: answer 500 to the first n requests. `hang_first`: never answer the first n
    requests (until `release()`), as a far side that takes the message and then stalls.
    """

    secret: str | None = "s3cret"
    fail_first: int = 0
    hang_first: int = 0
    requests: list[Received] = field(default_factory=list)
    effects: dict[str, Received] = field(default_factory=dict)  # idempotency key → first delivery
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _release: threading.Event = field(default_factory=threading.Event)

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items()}
                ok = None
                if receiver.secret is not None:
                    expected = sign(receiver.secret, headers.get(TIMESTAMP_HEADER, ""), raw)
                    ok = headers.get(SIGNATURE_HEADER) == expected \
                        and abs(time.time() - int(headers.get(TIMESTAMP_HEADER, "0"))) < 300
                received = Received(headers.get("Idempotency-Key", ""), headers.get("X-Milestones-Event", ""),
                                    json.loads(raw), headers, ok)
                with receiver._lock:
                    receiver.requests.append(received)
                    number = len(receiver.requests)
                if number <= receiver.hang_first:
                    receiver._release.wait(60)
                    return
                if number <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                with receiver._lock:
                    receiver.effects.setdefault(received.key, received)  # the dedupe: effect once
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/hooks/milestones"

    def release(self) -> None:
        self._release.set()

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# --------------------------------------------------------------------------- SMTP server
class SmtpSink:
    """aiosmtpd on a free port; keeps every message it accepts."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        sink = self
        self.messages: list[Message] = []

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                message = message_from_bytes(envelope.content)
                message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
                sink.messages.append(message)
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
